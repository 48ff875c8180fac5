"""The decision of weight-scale, on synthetic numbers for both outcomes."""

from __future__ import annotations

import numpy as np

from normlab.lab.experiments.weight_scale import BN, PLAIN, decide


def test_holds_when_batch_norm_varies_less_and_learns_at_no_fewer_scales() -> None:
    holds, measured = decide(
        {PLAIN: np.array([0.11, 0.4, 0.85, 0.1]), BN: np.array([0.8, 0.85, 0.86, 0.7])}, 0.5
    )
    assert holds
    assert "spread 0.160" in measured and "spread 0.750" in measured
    assert "at 4 scales with batch norm vs 1 without" in measured


def test_does_not_hold_when_batch_norm_varies_more() -> None:
    holds, _ = decide({PLAIN: np.array([0.8, 0.82, 0.84]), BN: np.array([0.6, 0.85, 0.86])}, 0.5)
    assert not holds


def test_does_not_hold_when_batch_norm_learns_at_fewer_scales() -> None:
    # a smaller spread, but batch norm stays below the threshold where the baseline learns
    holds, _ = decide({PLAIN: np.array([0.1, 0.9, 0.9]), BN: np.array([0.4, 0.45, 0.6])}, 0.5)
    assert not holds
