"""normlab.distributed in one process (no mpiexec): a world of one, SyncBatchNorm is BatchNorm, the pieces."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normlab import distributed, nn
from normlab.distributed import SingleProcess, World
from normlab.nn.sync_batchnorm import combine_moments

SRC = Path(__file__).resolve().parents[2] / "src"


class FakeRank(World):
    """Rank ``rank`` of ``size`` for code that needs no collective (sharding); any collective is a bug."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def _allgather(self, payload: np.ndarray, what: str) -> np.ndarray:
        raise AssertionError(f"unexpected collective {what}")


def test_world_of_one_without_mpiexec() -> None:
    world = distributed.get_world()
    assert isinstance(world, SingleProcess)
    assert (world.rank, world.size, world.is_main) == (0, 1, True)
    v = np.array([1.5, -2.0])
    assert np.array_equal(world.sum(v, "x"), v)
    assert np.array_equal(world.broadcast(v, "x"), v)
    assert world.broadcast_int(12345, "seed") == 12345


def test_normlab_imports_and_trains_without_mpi4py() -> None:
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"  # any import of mpi4py now fails
        "import numpy as np, normlab as nl\n"
        "from normlab import nn, optim, distributed\n"
        "m = nn.convert_sync_batchnorm(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))\n"
        "x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)\n"
        "nl.fit(m, x, np.arange(8) % 2, optimizer=optim.SGD(m.parameters(), lr=0.1), verbose=0)\n"
        "print(distributed.get_world())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env.update(PYTHONPATH=str(SRC), NORMLAB_KERNELS="reference")  # no numba compile in the child
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "SingleProcess(rank=0, size=1)" in done.stdout


def test_launched_without_mpi4py_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "from normlab import distributed\n"
        "distributed.get_world()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC), PMI_SIZE="2", PMI_RANK="0")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode != 0
    assert "mpi4py is not importable" in done.stderr
    assert "pip install 'normlab[distributed]'" in done.stderr


# ------------------------------------------------------------------------------- SyncBatchNorm in one process
@pytest.mark.parametrize(
    ("cls", "shape"),
    [(nn.BatchNorm1d, (6, 3)), (nn.BatchNorm1d, (5, 3, 4)), (nn.BatchNorm2d, (4, 3, 2, 3))],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sync_batch_norm_in_one_process_is_batch_norm(cls, shape, dtype) -> None:
    rng = np.random.default_rng(1)
    bn = cls(3, dtype=dtype, momentum=0.2)
    bn.weight.data = rng.normal(size=3).astype(dtype)
    bn.bias.data = rng.normal(size=3).astype(dtype)
    sync = nn.SyncBatchNorm(3, dtype=dtype, momentum=0.2)
    sync.load_state_dict(bn.state_dict())
    for _ in range(2):
        x = rng.normal(3.0, 2.0, size=shape).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        assert np.array_equal(sync(x), bn(x))
        assert np.array_equal(sync.backward(dy), bn.backward(dy))
    for key, value in bn.state_dict().items():
        assert np.array_equal(sync.state_dict()[key], value), key
    assert np.array_equal(sync.weight.grad, bn.weight.grad)
    assert np.array_equal(sync.bias.grad, bn.bias.grad)
    sync.eval()
    bn.eval()
    assert np.array_equal(sync(x), bn(x))


def test_sync_batch_norm_multi_rank_path_with_one_rank_is_batch_norm() -> None:
    """The collective code path itself (forced with a world that claims two ranks but holds all data on
    'rank 0' and nothing on 'rank 1'): equal to BatchNorm to rounding, gradient included."""

    class TwoRanksOneFull(World):
        rank, size = 0, 2

        def _allgather(self, payload: np.ndarray, what: str) -> np.ndarray:
            # rank 1 holds no sample: its statistics are zeros after the checksum, its sums zeros
            other = np.zeros_like(payload)
            other[0] = payload[0]
            return np.stack([payload, other])

    rng = np.random.default_rng(2)
    x = rng.normal(100.0, 3.0, size=(7, 3, 2))
    dy = rng.normal(size=x.shape)
    bn = nn.BatchNorm1d(3, dtype=np.float64)
    sync = nn.SyncBatchNorm(3, dtype=np.float64, world=TwoRanksOneFull())
    np.testing.assert_allclose(sync(x), bn(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.backward(dy), bn.backward(dy), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.weight.grad, bn.weight.grad, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.bias.grad, bn.bias.grad, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.running_var, bn.running_var, rtol=1e-14)
    np.testing.assert_allclose(sync.running_mean, bn.running_mean, rtol=1e-14)


def test_combine_moments_equals_the_statistics_of_the_concatenation() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(1e6, 1.0, size=(n, 2)) for n in (3, 0, 1, 8)]
    rows = np.array(
        [
            [
                len(p),
                *(p.mean(0) if len(p) else [0, 0]),
                *(((p - p.mean(0)) ** 2).sum(0) if len(p) else [0, 0]),
            ]
            for p in parts
        ]
    )
    n, mean, m2 = combine_moments(rows, 2)
    whole = np.concatenate(parts)
    assert n == 12
    np.testing.assert_allclose(mean, whole.mean(0), rtol=1e-15)
    np.testing.assert_allclose(
        m2 / n, whole.var(0), rtol=1e-9
    )  # 1e6 offset: np.var itself loses ~1e-10


def test_sync_batch_norm_needs_a_batch_axis_and_channels() -> None:
    bn = nn.SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"SyncBatchNorm\(3\): expected input \(N, C, \*\)"):
        bn(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="expected 3 channels at dim 1, got 4"):
        bn(np.ones((2, 4), dtype=np.float32))


def test_convert_sync_batchnorm_keeps_order_parameters_and_statistics() -> None:
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.3), nn.ReLU(), nn.Linear(4, 2)
    )
    model[1].running_mean = np.full(4, 0.5, dtype=np.float32)
    weight = model[1].weight
    before = model.state_dict()
    converted = nn.convert_sync_batchnorm(model)
    assert converted is model
    assert [type(m).__name__ for m in model] == ["Linear", "SyncBatchNorm", "ReLU", "Linear"]
    assert model[1].weight is weight and model[1].momentum == 0.3
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(np.array_equal(after[k], before[k]) for k in before)
    lone = nn.convert_sync_batchnorm(nn.BatchNorm2d(5))
    assert isinstance(lone, nn.SyncBatchNorm) and lone.num_features == 5
    rebuilt = nn.build_module(nn.module_spec(lone))  # saved architectures rebuild it
    assert isinstance(rebuilt, nn.SyncBatchNorm)


# ------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n", [7, 9, 12])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_chunk_bounds_partition_the_batch(n: int, size: int) -> None:
    bounds = [distributed.chunk_bounds(n, size, r) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_sharded_loader_shards_cover_each_epoch_and_change_with_the_epoch() -> None:
    n, size = 22, 3
    x = np.arange(n, dtype=np.float64)[:, None]
    loaders = [
        distributed.ShardedLoader(x, np.arange(n), batch_size=2, seed=9, world=FakeRank(r, size))
        for r in range(size)
    ]
    epochs = []
    for _epoch in range(2):
        per_rank = [np.concatenate([yb for _, yb in loader]) for loader in loaders]
        assert np.array_equal(np.sort(np.concatenate(per_rank)), np.arange(n))
        assert all(len(set(a) & set(b)) == 0 for a in per_rank for b in per_rank if a is not b)
        epochs.append(per_rank[0])
    assert not np.array_equal(epochs[0], epochs[1])
    assert len(loaders[0]) == 4  # ceil(22 / 6) steps per epoch


def test_sharded_loader_resumes_mid_epoch() -> None:
    x = np.arange(20, dtype=np.float64)[:, None]
    world = FakeRank(1, 2)
    a = distributed.ShardedLoader(x, batch_size=2, seed=1, world=world)
    it = iter(a)
    next(it)
    state = a.state_dict()
    rest = [b.copy() for b in it]
    b = distributed.ShardedLoader(x, batch_size=2, seed=1, world=world)
    b.load_state_dict(state)
    resumed = list(b)
    assert len(resumed) == len(rest) == 4
    assert all(np.array_equal(p, q) for p, q in zip(rest, resumed, strict=True))


def test_sharded_loader_world_larger_than_the_batch() -> None:
    with pytest.raises(
        distributed.ConsistentError,
        match=r"world size \(4 ranks\) is larger than the batch \(2 samples\)",
    ):
        distributed.ShardedLoader(np.ones((10, 1)), batch_size=2, world=FakeRank(0, 4))


def test_average_gradients_is_identity_in_one_process() -> None:
    layer = nn.Linear(3, 2)
    layer.weight.grad = np.ones((2, 3), dtype=np.float32)
    assert distributed.average_gradients(layer.parameters()) == 0
    assert np.array_equal(layer.weight.grad, np.ones((2, 3)))
