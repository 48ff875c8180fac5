"""`normlab doctor`: a table or JSON, exit 0 below --fail-on and 1 at or above it, 2 on usage errors, and one
clear line for files that are not normlab's, data that does not fit, and models without normalization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import normlab as nl
from doctor.models import Trained
from normlab import nn
from normlab.cli import main


@pytest.fixture(scope="module")
def files(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("doctor-cli")
    faulty = trained.fresh()
    faulty[1].momentum = 0.99
    plain = nn.Sequential(nn.Linear(784, 10, rng=0))
    (root / "notes.safetensors").write_text("not a checkpoint")
    np.savez(root / "data.npz", x=trained.x_test[:300], y=trained.y_test[:300])
    np.savez(root / "wrong.npz", x=np.ones((20, 30), np.float32))
    return {
        "healthy": nl.save(trained.fresh(), root / "healthy.safetensors"),
        "faulty": nl.save(faulty, root / "faulty.safetensors"),
        "plain": nl.save(plain, root / "plain.safetensors"),
        "junk": root / "notes.safetensors",
        "data": root / "data.npz",
        "wrong": root / "wrong.npz",
    }


def test_healthy_model_with_data_exits_0(files, capsys) -> None:
    code = main(["doctor", str(files["healthy"]), "--data", "sample", "--limit", "500", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["exit_code"] == 0
    assert payload["data_checked"] and payload["labels_checked"]
    assert {f["severity"] for f in payload["findings"]} == {"info"}
    assert main(["doctor", str(files["healthy"]), "--fail-on", "info"]) == 1


def test_faulty_model_exits_1_and_names_the_layer(files, capsys) -> None:
    assert main(["doctor", str(files["faulty"]), "--data", str(files["data"])]) == 1
    out = capsys.readouterr().out
    assert "BN008" in out and "momentum" in out and "1 at or above warning" in out
    assert main(["doctor", str(files["faulty"]), "--fail-on", "error", "--json"]) == 0
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert [
        (f["code"], f["layer"], f["evidence"]["converted"])
        for f in findings
        if f["code"] == "BN008"
    ] == [("BN008", "1", 0.01)]


def test_model_without_normalization_exits_0(files, capsys) -> None:
    assert main(["doctor", str(files["plain"])]) == 0
    assert "no normalization layers" in capsys.readouterr().out


def test_bad_input(files, capsys) -> None:
    assert main(["doctor", str(files["junk"])]) == 1
    assert "normlab: error:" in capsys.readouterr().err
    assert main(["doctor", str(files["healthy"]), "--data", str(files["wrong"])]) == 1
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "(20, 30)" in err
    assert main(["doctor", str(files["healthy"]), "--data", "nowhere.npz"]) == 2
    assert main(["doctor", "missing.safetensors"]) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", str(files["healthy"]), "--fail-on", "fatal"])
    assert exit_info.value.code == 2
