"""Which ops the layers use: the numba kernels by default, the reference on request, and ``normlab info`` says
which."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from normlab import cli, kernels
from normlab import functional as F


@pytest.fixture(autouse=True)
def restore_selection():
    yield
    kernels.use()


def test_default_is_numba(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    record = kernels.use()
    assert record.name == "numba" and kernels.backend() is record
    assert kernels.backend_name() == "numba"


def test_env_reference_selects_the_reference(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "reference")
    record = kernels.use()
    assert kernels.backend_name() == "reference"
    x = np.ones((4, 3), np.float32)
    assert record.resolve("batch_norm", x) == (F.batch_norm_forward, F.batch_norm_backward)
    assert kernels.backend() is record and not record.fast


def test_env_numba_and_auto(monkeypatch):
    for value in ("numba", "auto", "NUMBA", ""):
        monkeypatch.setenv(kernels.ENV_VAR, value)
        kernels.use()
        assert kernels.backend_name() == "numba"


def test_bad_env_value_is_an_error(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "fast")
    with pytest.raises(
        ValueError, match="NORMLAB_KERNELS='fast' is not one of auto, numba, reference"
    ):
        kernels.use()
    with pytest.raises(ValueError, match="expected one of"):
        kernels.use("cuda")


def test_info_says_which_kernels(monkeypatch, capsys):
    monkeypatch.setenv(kernels.ENV_VAR, "reference")
    kernels.use()
    assert cli.main(["info"]) == 0
    assert _info_line(capsys.readouterr().out, "kernels").startswith("reference")
    monkeypatch.setenv(kernels.ENV_VAR, "numba")
    kernels.use()
    assert cli.main(["info"]) == 0
    assert _info_line(capsys.readouterr().out, "kernels").startswith("numba")


def _info_line(output: str, key: str) -> str:
    """The value of ``key`` in ``normlab info``'s aligned ``key  value`` lines."""
    values = [line[len(key) :].strip() for line in output.splitlines() if line.split()[:1] == [key]]
    assert len(values) == 1, output
    return values[0]


def _python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip()


def test_env_reference_in_a_fresh_process():
    code = (
        "import numpy as np, normlab as nl\n"
        "bn = nl.nn.BatchNorm1d(3); bn(np.ones((4, 3), np.float32))\n"
        "print(nl.kernels.backend_name(), type(bn._cache).__name__)"
    )
    assert _python(code, NORMLAB_KERNELS="reference") == "reference NormCache"


def test_import_normlab_does_not_import_numba():
    code = (
        "import sys, normlab; print('numba' in sys.modules, 'normlab.kernels.norm' in sys.modules)"
    )
    assert _python(code) == "False False"
