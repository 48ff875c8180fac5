"""`normlab train` and `normlab eval`: configs, checkpoints, exact resume, and their error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from normlab.cli import main
from normlab.config import ConfigError, parse_config

SMALL_MLP = """
[model]
hidden = [16]
normalizer = "{norm}"

[optimizer]
name = "SGD"
lr = 0.05
momentum = 0.9

[training]
epochs = {epochs}
batch_size = 128
seed = 3

[data]
dataset = "{dataset}"
"""


def _config(tmp_path: Path, *, epochs=2, norm="batchnorm", dataset="mnist", name="c.toml") -> Path:
    path = tmp_path / name
    path.write_text(SMALL_MLP.format(epochs=epochs, norm=norm, dataset=dataset))
    return path


def _train(config: Path, out: Path, *extra: str, capsys) -> dict:
    assert main(["train", str(config), "--out", str(out), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_writes_checkpoints_and_resume_is_exact(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path)
    full = _train(config, tmp_path / "full", capsys=capsys)
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == [
        "checkpoint-epoch1.safetensors",
        "checkpoint-epoch2.safetensors",
    ]
    assert full["test"]["accuracy"] > 0.8  # 2 epochs of a 784-16-10 MLP on 6,000 images
    resumed = _train(
        config,
        tmp_path / "resumed",
        "--resume",
        str(tmp_path / "full" / "checkpoint-epoch1.safetensors"),
        capsys=capsys,
    )
    assert resumed["resumed_at_epoch"] == 1
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_eval_reports_the_same_accuracy_as_training(tmp_path: Path, capsys) -> None:
    trained = _train(_config(tmp_path, norm="layernorm"), tmp_path / "run", capsys=capsys)
    assert main(["eval", trained["model"], "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["split"] == "test" and metrics["samples"] == 2000
    assert metrics["accuracy"] == pytest.approx(trained["test"]["accuracy"])


def test_iris_config_trains(tmp_path: Path, capsys) -> None:
    trained = _train(_config(tmp_path, epochs=30, dataset="iris"), tmp_path / "iris", capsys=capsys)
    assert trained["test"]["accuracy"] >= 0.8


def test_resume_past_the_last_epoch_is_refused(tmp_path: Path, capsys) -> None:
    _train(_config(tmp_path, epochs=1), tmp_path / "run", capsys=capsys)
    code = main(
        ["train", str(_config(tmp_path, epochs=1)), "--out", str(tmp_path / "again"),
         "--resume", str(tmp_path / "run" / "checkpoint-epoch1.safetensors")]
    )  # fmt: skip
    assert code == 1
    assert "already trained for 1 epochs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model\nhidden = [3]", "not valid TOML"),
        ('[model]\nhidden = [3]\nnormalizer = "magic"', "model.normalizer: expected one of"),
        ("[modle]\nhidden = [3]", "unknown table(s) ['modle']"),
        ("[optimizer]\nname = 'SGD'", "missing the [model] table"),
        (
            "[model]\nhidden = [3]\n[optimizer]\nname = 'Lion'",
            "optimizer.name: unknown optimizer 'Lion'",
        ),
        (
            "[model]\nhidden = [3]\n[training]\nepochs = 0",
            "training.epochs: expected a positive integer",
        ),
        ("[model]\nhidden = [3]\n[optimizer]\nname = 'SGD'\nlr = -1", "[optimizer]"),
        ("[[model.layers]]\nclass = 'Dense'", "model.layers[0]: unknown layer class 'Dense'"),
    ],
)
def test_bad_config_exits_1_with_one_line(tmp_path: Path, capsys, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_checkpoint_exits_1(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(tmp_path / "nope.safetensors")]) == 1
    assert "nope.safetensors: no such checkpoint file" in capsys.readouterr().err
    assert (
        main(["train", str(_config(tmp_path)), "--resume", str(tmp_path / "gone.safetensors")]) == 1
    )
    assert "gone.safetensors: no such checkpoint file" in capsys.readouterr().err


def test_a_file_that_is_not_a_checkpoint_exits_1(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"not a checkpoint at all")
    assert main(["eval", str(bogus)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"normlab: error: {bogus}") and err.count("\n") == 1


def test_parse_config_defaults() -> None:
    cfg = parse_config({"model": {"hidden": [8]}})
    assert (cfg.epochs, cfg.batch_size, cfg.seed) == (5, 32, 0)
    assert cfg.flat_input and cfg.optimizer["name"] == "Adam"
    with pytest.raises(ConfigError, match=r"data\.dataset: iris has 4 features"):
        parse_config({"model": {"layers": [{"class": "Flatten"}]}, "data": {"dataset": "iris"}})


def _cupy_here() -> bool:
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


@pytest.mark.skipif(_cupy_here(), reason="CuPy is installed here: --device cuda may work")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_device_cuda_without_cupy_exits_1_before_writing(tmp_path: Path, capsys, device) -> None:
    out = tmp_path / "run"
    assert main(["train", str(_config(tmp_path)), "--out", str(out), "--device", device]) == 1
    err = capsys.readouterr().err
    assert f"--device {device}: Module.to('{device}')" in err and "normlab[gpu]" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # refused before the run directory was made
    _train(_config(tmp_path, epochs=1), tmp_path / "cpu-run", capsys=capsys)
    model = tmp_path / "cpu-run" / "model.safetensors"
    assert main(["eval", str(model), "--device", device]) == 1
    assert "normlab[gpu]" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:0:1", "CPU"])
def test_a_malformed_device_is_a_usage_error(tmp_path: Path, capsys, device) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", str(_config(tmp_path)), "--device", device])
    assert info.value.code == 2
    assert f"expected cpu, cuda or cuda:N, got {device!r}" in capsys.readouterr().err


def test_device_cpu_is_the_default_and_trains_as_without_it(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, epochs=1)
    plain = _train(config, tmp_path / "a", capsys=capsys)
    explicit = _train(config, tmp_path / "b", "--device", "cpu", capsys=capsys)
    assert plain["test"] == explicit["test"]
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
