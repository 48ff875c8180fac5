"""bn-order: the per-track test on synthetic accuracies both ways, the two networks, same seed same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from normlab.lab.experiments.bn_order import FULL, build, decide


def test_a_large_gap_against_a_small_spread_is_a_difference() -> None:
    d = decide([0.90, 0.91, 0.90], [0.95, 0.96, 0.95], z=2.0)
    assert d["different"] and d["winner"] == "ReLU -> BN wins"
    assert d["delta"] == pytest.approx(0.05)
    d = decide([0.95, 0.96, 0.95], [0.90, 0.91, 0.90], z=2.0)
    assert d["different"] and d["winner"] == "BN -> ReLU wins"


def test_a_gap_inside_the_spread_is_no_significant_difference() -> None:
    # Δ = 0.01; s = 0.03 in both groups, SE = sqrt(2 · 0.0009 / 3) ≈ 0.0245, 2·SE ≈ 0.049 > 0.01
    d = decide([0.90, 0.93, 0.96], [0.91, 0.94, 0.97], z=2.0)
    assert not d["different"] and d["winner"] == "no significant difference"
    assert d["se"] == pytest.approx(np.sqrt(2 * 0.03**2 / 3))


def test_identical_accuracies_are_no_difference() -> None:
    assert not decide([0.9, 0.9], [0.9, 0.9], z=2.0)["different"]


@pytest.mark.parametrize("track", ["mlp", "cnn"])
def test_the_two_orders_differ_only_in_where_bn_sits(track: str) -> None:
    before = build(track, "before", FULL, rng=np.random.default_rng(0))
    after = build(track, "after", FULL, rng=np.random.default_rng(0))
    kinds_before = [type(m).__name__ for m in before.children()]
    kinds_after = [type(m).__name__ for m in after.children()]
    i = kinds_before.index("ReLU")
    assert kinds_before[i - 1].startswith("BatchNorm") and kinds_after[i - 1] == "ReLU"
    assert kinds_after[i].startswith("BatchNorm")
    # the same initial weights
    for (_, p), (_, q) in zip(before.named_parameters(), after.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    shape = (3, 784) if track == "mlp" else (3, 1, 28, 28)
    assert before(np.random.default_rng(1).random(shape, dtype=np.float32)).shape == (3, 10)
    with pytest.raises(ValueError, match="order"):
        build(track, "middle", FULL, rng=np.random.default_rng(0))


def test_same_seed_same_numbers(tmp_path) -> None:
    from normlab.lab import run_experiments

    def metrics(seed: int, where: str) -> str:
        summary = run_experiments(["bn-order"], tmp_path / where, mode="tiny", seed=seed)
        return (summary.out_dir / "bn-order" / "test_accuracy.csv").read_text()

    first = metrics(5, "a")
    assert first == metrics(5, "b")
    assert first != metrics(6, "c")
