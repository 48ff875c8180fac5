"""`normlab train` on an image folder: the [data] folder table, and the worked example
examples/shapes_batchnorm.toml built from scratch (generated JPEGs, a BN CNN) to its stated accuracy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from normlab.cli import main
from normlab.config import ConfigError, load_data, parse_config
from normlab.data import DataLoader
from normlab.data.shapes import make_shapes

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shapes_batchnorm.toml"
MAKE = "python -m normlab.data.shapes examples/shapes --per-class 60 --size 20 --seed 0"
LAYERS = [{"class": "Flatten"}, {"class": "Linear", "in_features": 192, "out_features": 4}]


def test_the_example_trains_to_its_stated_accuracy(tmp_path: Path, capsys) -> None:
    assert (
        MAKE in EXAMPLE.read_text()
    )  # the test builds the folder the example's comment says to build
    make_shapes(tmp_path / "shapes", per_class=60, size=20, seed=0)
    config = shutil.copy(EXAMPLE, tmp_path / "shapes_batchnorm.toml")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # stated in the example: 0.979 (47 of 48 test images) when measured; a margin for other BLAS/threads
    assert result["test"]["accuracy"] >= 0.9
    assert result["last_epoch"]["val_accuracy"] >= 0.85
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    # absolute, so `normlab eval` finds the folder again from the run directory
    assert saved["data"]["folder"] == str(tmp_path / "shapes")
    assert main(["eval", str(tmp_path / "run" / "model.safetensors"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["samples"] == 48
    assert evaluated["accuracy"] == pytest.approx(result["test"]["accuracy"])


def _cfg(tmp_path: Path, **data) -> dict:
    return {"model": {"layers": LAYERS}, "data": {"folder": str(tmp_path / "shapes"), **data}}


def test_the_folder_table_builds_a_streaming_loader_and_decoded_parts(tmp_path: Path) -> None:
    make_shapes(tmp_path / "shapes", per_class=10, size=8)
    cfg = parse_config(
        _cfg(
            tmp_path,
            size=8,
            val_split=0.2,
            augment=["flip", {"name": "crop", "padding": 1}, "normalize"],
        )
    )
    data = load_data(cfg)
    assert isinstance(data.train.x, DataLoader) and data.train.y is None
    assert (
        data.val.x.shape == (8, 3, 8, 8) and data.test.x is data.val.x
    )  # no test_split: test = val
    assert (data.n_inputs, data.n_classes) == (192, 4)
    xb, yb = next(iter(data.train.x))
    assert xb.shape[1:] == (3, 8, 8) and yb.dtype == np.int64
    # normalized with the training part's statistics: roughly zero mean per channel
    assert np.all(np.abs(data.val.x.mean(axis=(0, 2, 3))) < 0.5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"colour": "rgb"}, r"unknown key\(s\) \['colour'\]"),
        ({"size": [0, 4]}, "data.size"),
        ({"color": "cmyk"}, "data.color"),
        ({"val_split": 1.5}, "data.val_split"),
        ({"augment": ["rotate"]}, r"data.augment\[0\]: unknown augmentation 'rotate'"),
        ({"augment": "flip"}, "data.augment: expected a list"),
    ],
)
def test_bad_folder_keys_are_named(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_cfg(tmp_path, **data))


def test_a_folder_needs_an_image_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[\[model.layers\]\]"):
        parse_config({"model": {"hidden": [8]}, "data": {"folder": str(tmp_path)}})
    make_shapes(tmp_path / "shapes", per_class=5, size=8)
    with pytest.raises(ValueError, match=r"data.augment\[0\] \(crop\)"):
        load_data(parse_config(_cfg(tmp_path, augment=[{"name": "crop", "padding": -1}])))
