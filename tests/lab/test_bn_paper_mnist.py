"""The decision of bn-paper-mnist, on synthetic numbers for both outcomes."""

from __future__ import annotations

import numpy as np

from normlab.lab.experiments.bn_paper_mnist import BN, PLAIN, decide, percentile_drift


def test_drift_is_the_range_of_the_median_over_the_mean_band_width() -> None:
    steps = np.arange(5.0)[:, None]
    median = np.hstack([steps, np.zeros_like(steps)])  # unit 0 moves by 4, unit 1 stays put
    low, high = median - 1.0, median + 1.0  # band width 2 throughout
    np.testing.assert_allclose(percentile_drift(low, median, high), [2.0, 0.0])


def test_holds_when_batch_norm_is_steadier_earlier_and_at_least_as_accurate() -> None:
    holds, measured = decide(
        {PLAIN: 0.8, BN: 0.1}, {PLAIN: 4000, BN: 500}, {PLAIN: 0.95, BN: 0.97}, 0.9
    )
    assert holds
    assert "0.100" in measured and "0.800" in measured and "after 500 steps" in measured


def test_plain_never_reaching_the_threshold_counts_as_later() -> None:
    holds, measured = decide(
        {PLAIN: 0.8, BN: 0.1}, {PLAIN: None, BN: 500}, {PLAIN: 0.5, BN: 0.97}, 0.9
    )
    assert holds and "plain never" in measured


def test_does_not_hold_when_any_part_fails() -> None:
    steadier, earlier, accurate = (
        {PLAIN: 0.8, BN: 0.1},
        {PLAIN: 4000, BN: 500},
        {PLAIN: 0.95, BN: 0.97},
    )
    assert not decide({PLAIN: 0.1, BN: 0.8}, earlier, accurate, 0.9)[0]  # drifts more
    assert not decide(steadier, {PLAIN: 500, BN: 4000}, accurate, 0.9)[0]  # slower
    assert not decide(steadier, {PLAIN: 500, BN: None}, accurate, 0.9)[0]  # never reaches it
    assert not decide(steadier, earlier, {PLAIN: 0.97, BN: 0.95}, 0.9)[0]  # ends less accurate


def test_a_diverged_network_with_nan_drift_does_not_hold() -> None:
    assert not decide(
        {PLAIN: 0.8, BN: float("nan")}, {PLAIN: 4000, BN: 500}, {PLAIN: 0.9, BN: 0.97}, 0.9
    )[0]
