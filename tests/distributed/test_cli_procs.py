"""`normlab train CONFIG --procs K`: launches mpiexec, equals one process; clear errors without MPI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from normlab.cli import build_parser, main
from normlab.distributed.launch import find_mpiexec, train_command

IRIS = """
[model]
hidden = [16]
normalizer = "batchnorm"

[optimizer]
name = "SGD"
lr = 0.05
momentum = 0.9

[training]
epochs = 2
batch_size = 32
seed = 3

[data]
dataset = "iris"
"""


def test_procs_without_mpi4py_says_what_to_install(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if it were not installed
    config = tmp_path / "c.toml"
    config.write_text(IRIS)
    assert main(["train", str(config), "--procs", "2"]) == 1
    err = capsys.readouterr().err
    assert "--procs needs mpi4py, which is not importable" in err
    assert "pip install 'normlab[distributed]'" in err
    assert not (tmp_path / "runs").exists()


def test_hostfile_goes_to_mpiexec_and_the_help_explains_it(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("node1:4\nnode2:4\n")
    args = argparse.Namespace(
        procs=8, hostfile=str(hosts), config="c.toml", resume=None, json=False
    )
    cmd = train_command(args, "mpiexec", tmp_path / "out")
    assert cmd[:5] == ["mpiexec", "-n", "8", "-f", str(hosts)]
    assert cmd[5:] == [
        sys.executable,
        "-m",
        "normlab",
        "train",
        "c.toml",
        "--out",
        str(tmp_path / "out"),
    ]
    with pytest.raises(ValueError, match="--procs must be a positive integer, got 0"):
        train_command(argparse.Namespace(**{**vars(args), "procs": 0}), "mpiexec", tmp_path)
    with pytest.raises(ValueError, match="no such file"):
        train_command(argparse.Namespace(**{**vars(args), "hostfile": "nope"}), "mpiexec", tmp_path)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = train.format_help()
    assert "--hostfile FILE" in text and "node1:4" in text and "password-less ssh" in text


def test_procs_2_trains_like_one_process(tmp_path: Path, capsys, monkeypatch) -> None:
    if find_mpiexec() is None:
        pytest.skip("mpiexec not found next to sys.executable nor on PATH")
    monkeypatch.setenv("NORMLAB_KERNELS", "reference")  # no numba compile in each rank
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    config = tmp_path / "c.toml"
    config.write_text(IRIS)
    assert (
        main(["train", str(config), "--procs", "2", "--out", str(tmp_path / "two"), "--json"]) == 0
    )
    assert main(["train", str(config), "--out", str(tmp_path / "one"), "--json"]) == 0
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    assert len(two["iterations"]) == len(one["iterations"]) == 2 * 3  # 2 epochs of 3 batches
    for a, b in zip(two["iterations"], one["iterations"], strict=True):
        assert a["loss"] == pytest.approx(
            b["loss"], rel=1e-5
        )  # float32 training, sums in another order
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_device_goes_to_every_rank_and_cuda_is_one_gpu_per_local_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normlab.cli import _rank_device

    args = argparse.Namespace(
        procs=2, hostfile=None, config="c.toml", resume=None, json=False, device="cuda"
    )
    assert train_command(args, "mpiexec", tmp_path)[-2:] == ["--device", "cuda"]
    cpu = argparse.Namespace(**{**vars(args), "device": "cpu"})
    assert "--device" not in train_command(cpu, "mpiexec", tmp_path)

    class Rank:
        def __init__(self, rank: int, size: int) -> None:
            self.rank, self.size = rank, size

    monkeypatch.delenv("MPI_LOCALRANKID", raising=False)
    assert _rank_device("cuda", Rank(0, 1)) == "cuda"
    assert _rank_device("cuda", Rank(3, 4)) == "cuda:3"
    assert _rank_device("cuda:1", Rank(3, 4)) == "cuda:1"  # an explicit GPU is kept
    assert _rank_device("cpu", Rank(3, 4)) == "cpu"
    monkeypatch.setenv("MPI_LOCALRANKID", "1")  # MPICH: rank 5 is the second process of its node
    assert _rank_device("cuda", Rank(5, 8)) == "cuda:1"
