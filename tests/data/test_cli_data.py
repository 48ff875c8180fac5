"""`normlab data download mnist` and the data line of `normlab info`."""

from __future__ import annotations

from pathlib import Path

import pytest

from normlab.cli import main
from normlab.data import download


def test_download_succeeds_into_root(
    tmp_path: Path, server, fake_mnist, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(download, "MNIST_MIRRORS", (server.serve("good", fake_mnist.gz),))
    monkeypatch.setattr(download, "MNIST_SHA256", fake_mnist.checksums)
    assert main(["data", "download", "mnist", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "mnist") in out
    assert len(list((tmp_path / "mnist").glob("*.gz"))) == 4


def test_download_failure_is_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    # the default mirrors point at a closed local port here (see conftest.py)
    assert main(["data", "download", "mnist", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("normlab: error: could not download MNIST")
    assert str(tmp_path / "mnist") in last
    assert "Traceback" not in err


def test_unwritable_root_is_exit_1(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["data", "download", "mnist", "--root", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the MNIST cache directory" in err


def test_unknown_dataset_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["data", "download", "cifar"])
    assert info.value.code == 2


def test_info_prints_the_data_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path / "cache"))
    assert main(["info"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["data", "cache", str(tmp_path / "cache")] in lines


def test_download_cifar10_by_name(tmp_path: Path, server, monkeypatch, capsys) -> None:
    import dataclasses
    import hashlib

    from normlab.data import color_datasets

    tarball = b"not really a tarball, but the checksum is what the download checks"
    server.files["/c/cifar-10-python.tar.gz"] = tarball
    remote = dataclasses.replace(
        color_datasets.CIFAR10,
        mirrors=(server.url("c"),),
        files={"cifar-10-python.tar.gz": hashlib.sha256(tarball).hexdigest()},
    )
    monkeypatch.setitem(color_datasets.REMOTES, "cifar10", remote)
    assert main(["data", "download", "cifar10", "--root", str(tmp_path)]) == 0
    assert f"CIFAR-10 is in {tmp_path / 'cifar10'}" in capsys.readouterr().out
    assert (tmp_path / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == tarball
    # offline (the conftest points the default mirrors at a closed port): one line, exit 1
    assert main(["data", "download", "fashion-mnist", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("normlab: error: could not download Fashion-MNIST")


def test_show_writes_a_png_grid_for_a_folder_and_for_mnist(tmp_path: Path, capsys) -> None:
    from PIL import Image

    from normlab.data.shapes import make_shapes

    root = make_shapes(tmp_path / "shapes", per_class=3, size=16)
    out = tmp_path / "grid.png"
    assert main(["data", "show", str(root), "--out", str(out), "--count", "8"]) == 0
    assert "8 images" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert main(["data", "show", "mnist", "--out", str(tmp_path / "m.png"), "--count", "10"]) == 0
    assert (tmp_path / "m.png").stat().st_size > 1000
    # CIFAR-10 not downloaded: a one-line error that says how to get it
    assert main(["data", "show", "cifar10", "--out", str(tmp_path / "c.png")]) == 1
    assert "normlab data download cifar10" in capsys.readouterr().err
    assert main(["data", "show", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_show_draws_every_class_round_robin() -> None:
    import numpy as np

    from normlab.data.show import _per_class

    labels = np.array([0] * 10 + [1] * 2 + [2] * 5)
    chosen = _per_class(labels, 7, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [3, 2, 2]
    assert len(set(chosen.tolist())) == 7
