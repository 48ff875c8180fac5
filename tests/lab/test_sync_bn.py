"""The sync-bn verdict both ways, its one-process equivalents, and same seed -> same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import nn
from normlab.lab.experiments.sync_bn import decide, mlp

MARGIN = 0.01


def errs(values, batches=(2, 4, 8)):
    return dict(zip(batches, values, strict=True))


def test_holds_when_sync_recovers_at_the_smallest_per_worker_batch() -> None:
    holds, measured = decide(
        errs([0.20, 0.10, 0.06]), errs([0.07, 0.06, 0.05]), errs([0.08, 0.07, 0.07]), MARGIN
    )
    assert holds
    assert "+13.00 pp" in measured


@pytest.mark.parametrize(
    "local, sync",
    [
        ([0.07, 0.06, 0.05], [0.07, 0.06, 0.05]),  # no difference
        ([0.075, 0.06, 0.05], [0.07, 0.06, 0.05]),  # within the margin
        ([0.05, 0.06, 0.05], [0.09, 0.06, 0.05]),  # sync worse
    ],
)
def test_does_not_hold(local, sync) -> None:
    holds, _ = decide(errs(local), errs(sync), errs([0.08, 0.07, 0.07]), MARGIN)
    assert not holds


def test_local_bn_is_ghost_bn_per_worker_and_sync_bn_is_plain_bn() -> None:
    rng = np.random.default_rng(0)
    local = mlp("local", 4, 16, 4, rng=rng)
    assert [m.virtual_batch_size for m in local if isinstance(m, nn.BatchNorm1d)] == [4, 4]
    sync = mlp("sync", 4, 16, 4, rng=np.random.default_rng(0))
    assert [m.virtual_batch_size for m in sync if isinstance(m, nn.BatchNorm1d)] == [None, None]
    assert sync(rng.random((8, 784), dtype=np.float32)).shape == (8, 10)


def test_same_seed_same_numbers(tmp_path) -> None:
    from normlab.lab import run_experiments

    def metrics(seed: int, where: str) -> str:
        summary = run_experiments(["sync-bn"], tmp_path / where, mode="tiny", seed=seed)
        return (summary.out_dir / "sync-bn" / "test_error.csv").read_text()

    first = metrics(3, "a")
    assert first == metrics(3, "b")
    assert first != metrics(4, "c")
