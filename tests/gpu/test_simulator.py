"""Runs sim_kernels.py (every CUDA kernel under numba-cuda's simulator) in a fresh process.

numba-cuda reads ``NUMBA_ENABLE_CUDASIM`` once, at the first ``import numba.cuda`` of a process; a pytest-xdist
worker is shared by many test files, so the simulator runs in its own process and never leaks into theirs.
Its own pytest report is printed when it fails (which case, which array, by how much).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _sim_env() -> dict[str, str]:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "OPENBLAS_NUM_THREADS": "1"}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def test_kernels_under_the_cuda_simulator():
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip(
            "numba-cuda is not installed (it is in the test extra: pip install -e '.[test]')"
        )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "tests" / "gpu" / "sim_kernels.py"),
            "-q",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
        ],
        cwd=ROOT,
        env=_sim_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert " passed" in report, report  # not skipped as a whole (the simulator did not come on)


def test_import_needs_no_cuda_and_info_says_why():
    """``import normlab`` and ``import normlab.kernels.cuda`` load no numba.cuda; describe() then names the
    GPU or says why there is none."""
    code = (
        "import sys, normlab, normlab.kernels.cuda as k\n"
        "assert 'numba.cuda' not in sys.modules, 'numba.cuda imported at import'\n"
        "print(k.describe())\n"
    )
    env = {k: v for k, v in _sim_env().items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("no CUDA device: ") or "compute capability" in line, line
