"""The documentation site builds with ``mkdocs build --strict`` and reads as a learner needs it.

One build (one test) executes every tutorial in ``docs/tutorials/`` (mkdocs-jupyter, ``allow_errors:
false``: a failing cell fails the build) and renders the API reference from the docstrings; the tests then
read the HTML it wrote.  A second, tiny build proves that a tutorial cell that raises does fail the build.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

for _module in (
    "mkdocs",
    "material",
    "mkdocstrings_handlers.python",
    "mkdocs_jupyter",
    "latex2mathml",
):
    pytest.importorskip(
        _module, reason=f"the docs extra is not installed ({_module}): pip install -e .[docs]"
    )

yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of mkdocs) is not installed")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.py"))
API_PAGES = {
    "normlab": ["normlab.fit", "normlab.fold_batch_norm", "normlab.evaluate"],
    "nn": ["normlab.nn.BatchNorm1d", "normlab.nn.LayerNorm", "normlab.nn.init.kaiming_normal"],
    "functional": [
        "normlab.functional.batch_norm_forward",
        "normlab.functional.batch_norm_backward",
    ],
    "optim": ["normlab.optim.SGD", "normlab.optim.Adam"],
    "data": ["normlab.data.ImageFolder", "normlab.data.DataLoader", "normlab.data.load_mnist"],
    "lab": ["normlab.lab.Experiment", "normlab.lab.run_experiments"],
    "interop": [
        "normlab.interop.to_torch",
        "normlab.interop.from_torch",
        "normlab.interop.to_onnx",
    ],
    "distributed": ["normlab.distributed.get_world", "normlab.distributed.ShardedLoader"],
    "doctor": ["normlab.doctor.doctor", "normlab.doctor.Finding"],
    "kernels": ["normlab.kernels.use", "normlab.kernels.cuda.batch_norm_forward"],
}
GUIDES = ["from-pytorch", "from-keras", "lab", "performance", "distributed", "gpu"]


def _build(config: Path, site_dir: Path) -> subprocess.CompletedProcess:
    """``python -m mkdocs build --strict`` in a child process, with this checkout's ``src`` importable."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in [str(ROOT / "src"), os.environ.get("PYTHONPATH")] if p
        ),
        "NO_MKDOCS_2_WARNING": "1",
        # the tutorials' kernels run beside the other pytest worker on a 2-core machine: numba's OpenMP
        # threads spinning on a busy core slowed a tutorial up to 7x (105.8 s against 15.7 s with one thread)
        "NUMBA_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)]
    command += ["--site-dir", str(site_dir)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _page(site: Path, source: str) -> Path:
    """The HTML file mkdocs writes for ``source`` (a path under docs/, directory URLs)."""
    stem = source.rsplit(".", 1)[0]
    return site / ("index.html" if stem == "index" else f"{stem}/index.html")


class _ResourceCollector(HTMLParser):
    """Every URL a browser would load for the page: scripts, stylesheets, icons, images, frames, media."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in {"script", "img", "iframe", "source", "video", "audio", "embed"} and values.get(
            "src"
        ):
            self.urls.append(values["src"])
        elif (
            tag == "link"
            and values.get("href")
            and values.get("rel") not in {"canonical", "alternate"}
        ):
            self.urls.append(values["href"])
        elif tag == "object" and values.get("data"):
            self.urls.append(values["data"])


def _external(url: str) -> bool:
    return bool(re.match(r"^(https?:)?//", url.strip(), re.IGNORECASE))


def _check_every_api_page_documents_its_public_names(site: Path) -> None:
    for page in API_PAGES:
        module_name = "normlab" if page == "normlab" else f"normlab.{page}"
        module = importlib.import_module(module_name)
        html = _page(site, f"api/{page}.md").read_text(encoding="utf-8")
        for name in module.__all__:
            if name.startswith("__") or inspect.ismodule(getattr(module, name)):
                continue  # modules have pages of their own
            assert f'id="{module_name}.{name}"' in html, f"api/{page}: no entry for {name}"
    for page, names in API_PAGES.items():
        html = _page(site, f"api/{page}.md").read_text(encoding="utf-8")
        for name in names:
            assert f'id="{name}"' in html, f"api/{page}: no entry for {name}"
        # the Sphinx roles of the docstrings became code (and links), not literal ':class:' text
        assert not re.search(r":(class|func|meth|mod|attr|data|exc):<code>", html), (
            f"api/{page}: raw role"
        )


def _check_guides_and_existing_docs_are_pages(site: Path) -> None:
    pages = [
        "index.md",
        "architecture.md",
        "doctor.md",
        "benchmarks.md",
        *(f"guides/{g}.md" for g in GUIDES),
    ]
    for source in pages:
        assert _page(site, source).is_file(), f"{source} was not built"
    # BENCHMARKS.md (repository root) is included into the benchmarks page, tables and all
    benchmarks = _page(site, "benchmarks.md").read_text(encoding="utf-8")
    assert benchmarks.count("<table") >= 3 and "--8&lt;--" not in benchmarks


def _check_every_tutorial_was_executed_with_its_outputs(site: Path) -> None:
    for tutorial in TUTORIALS:  # none before the tutorials land: the other checks still run
        page = _page(site, f"tutorials/{tutorial.name}")
        assert page.is_file(), f"{tutorial.name}: no page"
        html = page.read_text(encoding="utf-8")
        # an output area per printed text, returned value or figure of an executed cell
        outputs = re.findall(r'class="[^"]*\bjp-OutputArea-output\b[^"]*"', html)
        assert len(outputs) >= 3, f"{tutorial.name}: {len(outputs)} rendered outputs"
        assert re.search(r'class="[^"]*\bjp-RenderedText\b', html), f"{tutorial.name}: no text"
        if "plt.show()" in tutorial.read_text(encoding="utf-8"):
            assert 'src="data:image/png;base64,' in html, f"{tutorial.name}: no figure shown"


def _check_math_is_mathml_on_markdown_pages_and_tutorials(site: Path) -> None:
    index = _page(site, "index.md").read_text(encoding="utf-8")
    assert "<math" in index, "the index's formula was not converted to MathML"
    for html_file in site.rglob("*.html"):
        html = html_file.read_text(encoding="utf-8")
        assert 'class="arithmatex"' not in html, f"{html_file}: math left for a script to render"
        assert "MathJax" not in html, f"{html_file}: a MathJax loader is still in the page"
    for tutorial in TUTORIALS:
        markdown = "\n".join(
            line
            for line in tutorial.read_text(encoding="utf-8").splitlines()
            if line.startswith("# ")
        )
        if re.search(r"\$[^$\s][^$]*\$", markdown):
            html = _page(site, f"tutorials/{tutorial.name}").read_text(encoding="utf-8")
            assert "<math" in html, f"{tutorial.name}: has $...$ math but no MathML"


def _check_no_page_loads_anything_from_the_network(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 1 + len(API_PAGES) + len(GUIDES) + len(TUTORIALS)
    for html_file in pages:
        collector = _ResourceCollector()
        html = html_file.read_text(encoding="utf-8")
        collector.feed(html)
        external = [url for url in collector.urls if _external(url)]
        assert not external, f"{html_file.relative_to(site)} loads {external}"
        assert not re.search(r"@import\s+url\(\s*['\"]?(https?:)?//", html), (
            f"{html_file}: CSS @import"
        )
    for css in site.rglob("*.css"):
        text = css.read_text(encoding="utf-8", errors="replace")
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", text), (
            f"{css.relative_to(site)} loads a URL"
        )


def test_the_site_builds_strictly_and_reads_well(tmp_path):
    """One build (one test, so that pytest-xdist never runs it twice), then every check on its HTML."""
    site = tmp_path / "site"
    result = _build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, (
        f"mkdocs build --strict failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    )
    _check_every_api_page_documents_its_public_names(site)
    _check_guides_and_existing_docs_are_pages(site)
    _check_every_tutorial_was_executed_with_its_outputs(site)
    _check_math_is_mathml_on_markdown_pages_and_tutorials(site)
    _check_no_page_loads_anything_from_the_network(site)


def test_a_failing_tutorial_cell_fails_the_build(tmp_path):
    """The guarantee behind 'the tutorials run in CI': mkdocs-jupyter with allow_errors false, strict mode."""
    docs = tmp_path / "docs"
    (docs / "tutorials").mkdir(parents=True)
    (docs / "index.md").write_text("# index\n", encoding="utf-8")
    (docs / "tutorials" / "01_bn_from_scratch.py").write_text(
        '# %% [markdown]\n# # A tutorial that breaks\n\n# %%\nraise ValueError("cell 2 is broken")\n',
        encoding="utf-8",
    )
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(ROOT / hook) for hook in config["hooks"]]
    config["plugins"] = [
        p for p in config["plugins"] if not (isinstance(p, dict) and "mkdocstrings" in p)
    ]
    config["nav"] = ["index.md", {"Tutorials": ["tutorials/01_bn_from_scratch.py"]}]
    config_file = tmp_path / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = _build(config_file, tmp_path / "site")
    assert result.returncode != 0, "a tutorial whose cell raises was built without error"
    assert "cell 2 is broken" in result.stdout + result.stderr
