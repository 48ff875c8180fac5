"""Unknown keys in a config (issue 10, item 9): refused in every table with the closest valid name, as one
line from ``normlab train`` with exit status 1; the optimizer spellings the README uses are accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab import optim
from normlab.cli import main
from normlab.config import ConfigError, build_optimizer, parse_config
from normlab.nn import Linear

TYPOS = {
    "training-epoch": (
        {"model": {"hidden": [8]}, "training": {"epoch": 3}},
        "training.epoch (did you mean `epochs`?)",
    ),
    "training-batchsize": (
        {"model": {"hidden": [8]}, "training": {"batchsize": 4}},
        "training.batchsize (did you mean `batch_size`?)",
    ),
    "model-hiden": ({"model": {"hiden": [8]}}, "model.hiden (did you mean `hidden`?)"),
    "optimizer-lr": (
        {"model": {"hidden": [8]}, "optimizer": {"name": "Adam", "lrate": 0.1}},
        "optimizer.lrate (did you mean `lr`?)",
    ),
    "optimizer-foreign-argument": (
        {"model": {"hidden": [8]}, "optimizer": {"name": "Adam", "momentum": 0.9}},
        "optimizer.momentum; optimizer accepts amsgrad, betas, eps, lr, name, weight_decay",
    ),
    "data-datset": (
        {"model": {"hidden": [8]}, "data": {"datset": "iris"}},
        "data.datset (did you mean `dataset`?)",
    ),
    "layer-argument": (
        {"model": {"layers": [{"class": "Linear", "in_feature": 3, "out_features": 2}]}},
        "model.layers[0].in_feature (did you mean `in_features`?)",
    ),
    "layer-class": (
        {"model": {"layers": [{"class": "BatchNorm"}]}},
        "model.layers[0]: unknown layer class 'BatchNorm' (did you mean `BatchNorm1d`?)",
    ),
    "mlp-key-beside-layers": (
        {"model": {"layers": [{"class": "Flatten"}], "hidden": [3]}},
        "unknown key(s) model.hidden; model accepts layers",
    ),
    "optimizer-name-case": (
        {"model": {"hidden": [8]}, "optimizer": {"name": "adamw"}},
        "unknown optimizer 'adamw' (did you mean `AdamW`?)",
    ),
    "optimizer-name-not-a-string": (
        {"model": {"hidden": [8]}, "optimizer": {"name": ["Adam"]}},
        r"optimizer.name: unknown optimizer ['Adam']",
    ),
    "activation-not-a-string": (
        {"model": {"hidden": [8], "activation": ["relu"]}},
        "model.activation: expected one of",
    ),
}


@pytest.mark.parametrize("name", list(TYPOS))
def test_unknown_keys_are_refused_with_the_closest_name(name: str) -> None:
    raw, message = TYPOS[name]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "run.toml")
    assert str(info.value).startswith("run.toml: ") and message in str(info.value)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("RMSProp", optim.RMSProp),
        ("RMSprop", optim.RMSProp),
        ("AdaGrad", optim.AdaGrad),
        ("Adagrad", optim.AdaGrad),
    ],
)
def test_both_optimizer_spellings_are_accepted(name: str, cls: type) -> None:
    cfg = parse_config({"model": {"hidden": [8]}, "optimizer": {"name": name, "lr": 0.01}})
    assert isinstance(build_optimizer(cfg, Linear(2, 2)), cls)


def test_readme_optimizer_names_are_accepted() -> None:
    """Every optimizer name the docs' tour lists for normlab.optim is a valid config name."""
    readme = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "tour.md").read_text()
    for name in ("SGD", "AdaGrad", "RMSProp", "Adam", "AdamW"):
        assert name in readme
        parse_config({"model": {"hidden": [8]}, "optimizer": {"name": name}})


def test_a_wrong_optimizer_value_names_the_key_at_parse_time() -> None:
    with pytest.raises(ConfigError, match=r"\[optimizer\] SGD: optimizer.lr: invalid lr: 'fast'"):
        parse_config({"model": {"hidden": [8]}, "optimizer": {"name": "SGD", "lr": "fast"}})


CLI_CASES = [
    ("[model]\nhidden = [3]\n[training]\nepoch = 3", "training.epoch (did you mean `epochs`?)"),
    ("[model]\nhiden = [3]", "model.hiden (did you mean `hidden`?)"),
    (
        "[model]\nhidden = [3]\n[optimizer]\nname = 'Adam'\nmomentum = 0.9",
        "unknown key(s) optimizer.momentum",
    ),
]


@pytest.mark.parametrize("text, message", CLI_CASES)
def test_cli_train_reports_unknown_keys_in_one_line(
    tmp_path: Path, capsys, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.mark.parametrize("name", ["mlp_batchnorm.toml", "cnn_groupnorm.toml"])
def test_the_example_configs_use_only_known_keys(name: str) -> None:
    from normlab.config import load_config

    load_config(Path(__file__).resolve().parents[2] / "examples" / name)
