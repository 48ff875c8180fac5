"""The lab's ``--data cifar10 | fashion-mnist`` for the experiments that train on images (cnn-trio, batch-size,
lenet-bn): their networks take the data's image shape, the real loaders feed them, the report shows a grid of
the training images, and every other experiment refuses the data before anything runs."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normlab.data import Labeled, color_datasets, write_idx
from normlab.data.mnist import Splits
from normlab.lab import REGISTRY, RunContext, run_experiments
from normlab.lab.common import images
from normlab.lab.experiments.batch_size import TINY as BATCH_TINY
from normlab.lab.experiments.batch_size import small_cnn, small_mlp
from normlab.lab.experiments.cnn_trio import TINY as TRIO_TINY
from normlab.lab.experiments.cnn_trio import build_model
from normlab.lab.experiments.lenet_bn import lenet

IMAGE_EXPERIMENTS = {"cnn-trio", "batch-size", "lenet-bn"}


def test_exactly_the_image_experiments_take_the_color_sets() -> None:
    takes = {name for name, e in REGISTRY.items() if "cifar10" in e.data}
    assert takes == IMAGE_EXPERIMENTS
    for name in IMAGE_EXPERIMENTS:
        assert set(REGISTRY[name].data) == {"sample", "full", "cifar10", "fashion-mnist"}


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_image_network_takes_the_image_shape(shape: tuple[int, int, int]) -> None:
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    nets = [
        lenet(batch_norm=True, rng=np.random.default_rng(0), image_shape=shape),
        small_cnn("bn", BATCH_TINY["channels"], 4, rng=np.random.default_rng(0), image_shape=shape),
        small_mlp("bn", BATCH_TINY, rng=np.random.default_rng(0), n_inputs=int(np.prod(shape))),
        *(
            build_model(kind, True, TRIO_TINY, rng=np.random.default_rng(0), image_shape=shape)
            for kind in ("logistic", "wide", "deep")
        ),
    ]
    for net in nets:
        inputs = x.reshape(2, -1) if net is nets[2] else x
        assert net(inputs).shape == (2, 10)
    # the input batch norm (cnn-trio) and LeNet's first convolution read every channel
    assert nets[3][0].num_features == shape[0]
    assert nets[0][0].weight.shape[1] == shape[0]
    # LeNet's first Linear: 16 x 4 x 4 for 28 x 28 (d2l), 16 x 5 x 5 for 32 x 32 (LeCun)
    first_linear = next(layer for layer in nets[0] if type(layer).__name__ == "Linear")
    assert first_linear.weight.shape[1] == {28: 256, 32: 400}[shape[1]]


def _fake_cifar(monkeypatch: pytest.MonkeyPatch) -> None:
    """CIFAR-10 as the loader returns it (uint8 NCHW, int64 labels), made here: the files and their checksums
    are tested in tests/data; this checks what the lab does with the arrays."""
    rng = np.random.default_rng(7)

    def part(n: int) -> Labeled:
        return Labeled(
            rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10
        )

    def load_named(name: str, split: str = "full", root=None) -> Splits:
        assert (name, split) == ("cifar10", "full")
        return Splits(part(600), part(200), part(200))

    monkeypatch.setattr(color_datasets, "load_named", load_named)


def test_lenet_bn_runs_on_cifar10_and_the_report_shows_the_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_cifar(monkeypatch)
    summary = run_experiments(["lenet-bn"], tmp_path, mode="tiny", data="cifar10")
    result = summary.runs[0].result
    grid = tmp_path / "lenet-bn" / "samples.png"
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and grid in result.figures
    assert any("CIFAR-10 instead of d2l's Fashion-MNIST" in note for note in result.notes)
    assert np.isfinite(result.summary["test_accuracy_bn"])
    assert json.loads((tmp_path / "lenet-bn" / "config.json").read_text())["data"] == "cifar10"
    assert "samples.png" in (tmp_path / "lenet-bn" / "section.html").read_text() or (
        (tmp_path / "report.html").read_text().count("data:image/png;base64,") >= 2
    )


def _fake_fashion_files(home: Path, n_train: int = 10_040, n_test: int = 64) -> dict[str, str]:
    """Fashion-MNIST's four IDX files (MNIST's format and names) in ``home/fashion-mnist``; their sha256."""
    rng = np.random.default_rng(3)
    (home / "fashion-mnist").mkdir(parents=True)
    sums = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 4:24, 4:24] = (labels[:, None, None] * 25).astype(
            np.uint8
        )  # one gray level per class
        images[:, 0, :8] = rng.integers(0, 256, (n, 8), dtype=np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = write_idx(home / "fashion-mnist" / f"{prefix}-{kind}-ubyte.gz", array)
            sums[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
            assert gzip.decompress(path.read_bytes())  # a real gzip file
    return sums


def test_lenet_bn_runs_on_fashion_mnist_through_the_real_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "data"
    sums = _fake_fashion_files(home)
    remote = color_datasets.REMOTES["fashion-mnist"]
    assert set(sums) == set(remote.files)  # the loader's own file names
    monkeypatch.setitem(
        color_datasets.REMOTES, "fashion-mnist", dataclasses.replace(remote, files=sums)
    )
    monkeypatch.setenv("NORMLAB_DATA", str(home))
    summary = run_experiments(["lenet-bn"], tmp_path / "run", mode="tiny", data="fashion-mnist")
    result = summary.runs[0].result
    assert any(note.startswith("d2l's data set, Fashion-MNIST") for note in result.notes)
    assert np.isfinite(result.summary["test_accuracy_bn"])
    assert (tmp_path / "run" / "lenet-bn" / "samples.png").exists()
    # what the experiment trained on: the files' training images after the 10,000 kept for validation's
    # split, as float32 NCHW in [0, 1]
    ctx = RunContext(REGISTRY["lenet-bn"], tmp_path / "ctx", mode="tiny", data="fashion-mnist")
    data = images(ctx)
    assert data.train.x.shape == (40, 1, 28, 28) and data.train.x.dtype == np.float32
    assert data.val.x.shape == (10_000, 1, 28, 28) and data.test.x.shape == (64, 1, 28, 28)
    labels = np.arange(40) % 10
    np.testing.assert_array_equal(data.train.y, labels)
    np.testing.assert_allclose(data.train.x[:, 0, 10, 10], labels * 25 / 255, rtol=1e-6)
    assert data.class_names[0] == "T-shirt/top"


def test_other_experiments_refuse_a_color_set_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(
        ValueError, match=r"lab bn-vs-plain: data must be one of 'sample', 'full', got 'cifar10'"
    ):
        run_experiments(["lenet-bn", "bn-vs-plain"], out, mode="tiny", data="cifar10")
    assert not out.exists()  # validated before the run directory was made
    with pytest.raises(ValueError, match="known data sources"):
        run_experiments(["lenet-bn"], out, mode="tiny", data="imagenet")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "normlab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_cli_names_what_is_missing(tmp_path: Path) -> None:
    import os

    env = dict(os.environ, NORMLAB_DATA=str(tmp_path / "empty"))
    refused = _cli(
        "lab",
        "run",
        "adaline",
        "--tiny",
        "--data",
        "cifar10",
        "--out",
        str(tmp_path / "a"),
        env=env,
    )
    assert refused.returncode == 2 and "lab adaline: data must be one of" in refused.stderr
    missing = _cli(
        "lab",
        "run",
        "lenet-bn",
        "--tiny",
        "--data",
        "cifar10",
        "--out",
        str(tmp_path / "b"),
        env=env,
    )
    assert missing.returncode == 1, missing.stderr
    assert "normlab data download cifar10" in missing.stderr
    assert "Traceback" not in missing.stderr
