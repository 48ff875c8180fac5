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
