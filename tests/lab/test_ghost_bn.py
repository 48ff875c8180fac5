"""ghost-bn: the square-root learning rate, the two large-batch networks, the verdict both ways, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from normlab import nn
from normlab.lab.experiments.ghost_bn import FULL, build, decide, large_lr


def test_the_learning_rate_scales_with_the_square_root_of_the_batch() -> None:
    assert large_lr(FULL) == pytest.approx(FULL["base_lr"] * math.sqrt(1024 / 32))
    assert large_lr(FULL | {"large_batch": 128}) == pytest.approx(2 * FULL["base_lr"])


def test_ghost_and_plain_networks_share_weights_and_differ_in_the_virtual_batch() -> None:
    plain = build([8], None, rng=np.random.default_rng(0))
    ghost = build([8], 4, rng=np.random.default_rng(0))
    for p, q in zip(plain.parameters(), ghost.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    bns = [m for m in ghost.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [m.virtual_batch_size for m in bns] == [4]
    x = np.random.default_rng(1).random((8, 784), dtype=np.float32)
    # in training the ghost network normalizes each chunk of 4 on its own: different outputs
    assert not np.allclose(plain(x), ghost(x))


def result(gap: float, test: float) -> dict:
    return {"gap": gap, "test_accuracy": test, "train_accuracy": gap + test}


def test_holds_when_ghost_bn_narrows_the_gap_without_losing_accuracy() -> None:
    results = {
        "small": result(0.01, 0.95),
        "large-bn": result(0.05, 0.90),
        "large-ghost": result(0.02, 0.93),
    }
    holds, measured = decide(results, 0.002)
    assert holds and "Ghost BN 2.00 pp vs BN 5.00 pp" in measured


@pytest.mark.parametrize(
    ("ghost", "why"),
    [
        (result(0.049, 0.91), "the gap narrows by less than the margin"),
        (result(0.02, 0.89), "narrower gap but lower test accuracy"),
        (result(0.06, 0.93), "wider gap"),
    ],
)
def test_does_not_hold(ghost, why) -> None:
    results = {"small": result(0.01, 0.95), "large-bn": result(0.05, 0.90), "large-ghost": ghost}
    holds, _ = decide(results, 0.002)
    assert not holds, why


def test_same_seed_same_numbers(tmp_path) -> None:
    from normlab.lab import run_experiments

    def metrics(seed: int, where: str) -> str:
        summary = run_experiments(["ghost-bn"], tmp_path / where, mode="tiny", seed=seed)
        return (summary.out_dir / "ghost-bn" / "accuracy.csv").read_text()

    first = metrics(5, "a")
    assert first == metrics(5, "b")
    assert first != metrics(6, "c")
