"""``normlab lab run --device``: the experiments that train on a device give there what they give on NumPy.

array-api-strict's ``device1`` stands in for the GPU (it refuses NumPy conversions, so any measurement that
reads the model's outputs without going through the host fails).  Both runs use the reference kernels (on a
device there is no numba CPU kernel), tiny mode, seed 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.devices import DEVICE1
from normlab import kernels, nn
from normlab.cli import main
from normlab.lab import REGISTRY, run_experiments
from normlab.lab.base import Experiment, RunContext

ON_DEVICE = sorted(name for name, e in REGISTRY.items() if e.on_device)


@pytest.fixture(autouse=True)
def reference_kernels():
    kernels.use("reference")
    yield
    kernels.use()


def _numbers(value: object) -> object:
    """``value`` with every float as a float (for comparing JSON records with a tolerance)."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items() if k != "wall_time_s"}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _close(a: object, b: object, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=where)
    else:
        assert a == b, where


def test_every_experiment_of_the_lab_runs_on_a_device() -> None:
    assert sorted(REGISTRY) == ON_DEVICE and len(ON_DEVICE) == 19


@pytest.mark.parametrize("name", ON_DEVICE)
def test_an_experiment_on_device1_measures_what_it_measures_on_numpy(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_numpy = run_experiments([name], tmp_path / "cpu", mode="tiny")
    placed = []
    place = RunContext.place

    def recording_place(ctx: RunContext, model: nn.Module) -> nn.Module:
        placed.append(place(ctx, model))
        return placed[-1]

    monkeypatch.setattr(RunContext, "place", recording_place)
    on_device = run_experiments([name], tmp_path / "device1", mode="tiny", device=DEVICE1)
    assert placed, "the experiment trained no model where the run asked"
    for model in placed:  # trained there, and still there
        assert all(p.data.device == DEVICE1 for p in model.parameters())
    assert on_device.runs[0].result.verdict == on_numpy.runs[0].result.verdict
    for path in sorted((tmp_path / "cpu" / name).glob("*.json")):
        if path.name == "config.json":
            continue
        want = _numbers(json.loads(path.read_text()))
        got = _numbers(json.loads((tmp_path / "device1" / name / path.name).read_text()))
        _close(got, want, f"{name}/{path.name}")
    config = json.loads((tmp_path / "device1" / name / "config.json").read_text())
    assert config["device"] == str(DEVICE1)
    assert "device" not in json.loads((tmp_path / "cpu" / name / "config.json").read_text())


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> str:
    """An experiment registered without ``on_device`` (as a user's own may be): it reads NumPy arrays."""
    name = "numpy-reader"
    monkeypatch.setitem(
        REGISTRY,
        name,
        Experiment(name, "a claim", "a test", REGISTRY["init-scale"].configs, lambda ctx: None),
    )
    return name


def test_an_experiment_that_reads_numpy_refuses_a_device_before_writing(
    tmp_path: Path, cpu_only: str
) -> None:
    with pytest.raises(ValueError, match=rf"lab {cpu_only}: runs on the CPU only.*adaline"):
        run_experiments(["lenet-bn", cpu_only], tmp_path / "out", mode="tiny", device=DEVICE1)
    assert not (tmp_path / "out").exists()


def test_cli_device_errors(tmp_path: Path, capsys, cpu_only: str) -> None:
    out = tmp_path / "run"
    assert main(["lab", "run", cpu_only, "--tiny", "--device", "cuda", "--out", str(out)]) == 2
    assert "runs on the CPU only" in capsys.readouterr().err
    try:
        import cupy  # noqa: F401
    except ImportError:  # the usual case: no GPU extra here
        assert (
            main(["lab", "run", "lenet-bn", "--tiny", "--device", "cuda", "--out", str(out)]) == 1
        )
        assert "normlab[gpu]" in capsys.readouterr().err
        assert main(["demo", "--device", "cuda", "--out", str(out)]) == 1
        assert "normlab[gpu]" in capsys.readouterr().err
    assert not out.exists()
    assert main(["lab", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed if not e["on_device"]] == [cpu_only]
