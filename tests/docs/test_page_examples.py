"""The Python examples of the site's own pages (the index and the guides) run as written.

Each ```` ```python ```` block of a page runs in order in one namespace per page, so a later block may use
what an earlier one defined, as a reader would.  A block whose first line is ``# not run: <reason>`` is
skipped (it needs MPI ranks, a GPU or a file the reader has); the reason is in the page.  A block whose first
line is ``# run with: NAME=VALUE ...`` runs alone in a child Python with those environment variables (the GPU
guide's simulator example: numba-cuda reads its switch once per process).  A block that raises fails.  Where a page states what a line prints (``print(x)  # prints: 3``), the block's output must
be exactly those lines, in order.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "guides").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
PRINTS = re.compile(r"#\s*prints:\s*(.*?)\s*$", re.MULTILINE)
RUN_WITH = re.compile(r"# run with: (.*)\n")


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def test_the_pages_have_examples():
    assert sum(len(_blocks(page)) for page in PAGES) >= 10


def _in_process(page: Path) -> list[str]:
    return [b for b in _blocks(page) if not b.startswith(("# not run:", "# run with:"))]


IN_PROCESS_PAGES = [page for page in PAGES if _in_process(page)]


@pytest.mark.parametrize("page", IN_PROCESS_PAGES, ids=[p.name for p in IN_PROCESS_PAGES])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = _in_process(page)
    if any("import torch" in b for b in blocks):
        pytest.importorskip("torch", reason="the PyTorch examples need torch (the test extra)")
    monkeypatch.chdir(tmp_path)  # files an example writes land in a temporary directory
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    # an example may register a lab experiment: the registry (shared by reference) is put back afterwards
    from normlab.lab.base import REGISTRY

    registered = dict(REGISTRY)
    namespace: dict = {"__name__": f"docs_example_{page.stem}"}
    try:
        for i, block in enumerate(blocks, start=1):
            code = compile(block, f"{page.relative_to(ROOT)} (python block {i})", "exec")
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                exec(code, namespace)
            expected = PRINTS.findall(block)
            if expected:
                printed = [line.strip() for line in output.getvalue().splitlines()]
                assert printed == expected, f"{page.name}, python block {i}: printed {printed}"
    finally:
        REGISTRY.clear()
        REGISTRY.update(registered)


def _blocks_run_with() -> list[tuple[Path, int, str]]:
    return [
        (page, i, block)
        for page in PAGES
        for i, block in enumerate(_blocks(page), start=1)
        if block.startswith("# run with:")
    ]


@pytest.mark.parametrize(
    ("page", "index", "block"),
    _blocks_run_with(),
    ids=lambda v: v.name if isinstance(v, Path) else None,
)
def test_python_blocks_run_with_their_environment(page, index, block, tmp_path):
    if "normlab.kernels import cuda" in block:
        pytest.importorskip(
            "numba_cuda", reason="the GPU example needs numba-cuda (the test extra)"
        )
    settings = dict(item.split("=", 1) for item in RUN_WITH.match(block).group(1).split())
    env = {
        **os.environ,
        **settings,
        "PYTHONPATH": os.pathsep.join(
            p for p in [str(ROOT / "src"), os.environ.get("PYTHONPATH")] if p
        ),
    }
    result = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{page.name}, python block {index}:\n{result.stderr[-3000:]}"
    printed = [line.strip() for line in result.stdout.splitlines()]
    assert printed == PRINTS.findall(block), f"{page.name}, python block {index}: printed {printed}"
