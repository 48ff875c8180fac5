"""The decision of regularization, on synthetic numbers for both outcomes."""

from __future__ import annotations

from normlab.lab.experiments.regularization import BN, BN_DECAY, DECAY, DROPOUT, NONE, decide


def gaps(none: float, bn: float) -> dict[str, float]:
    return {NONE: none, BN: bn, DROPOUT: 0.05, DECAY: 0.04, BN_DECAY: 0.03}


def test_holds_when_batch_norm_narrows_the_gap_by_the_margin() -> None:
    holds, measured = decide(gaps(0.12, 0.08), 0.01)
    assert holds
    assert "batch norm 0.080, none 0.120" in measured and "changes it by -0.040" in measured
    assert "dropout 0.050" in measured and "batch norm + weight decay 0.030" in measured


def test_does_not_hold_when_the_reduction_is_below_the_margin_or_the_gap_grows() -> None:
    assert not decide(gaps(0.12, 0.115), 0.01)[0]
    assert not decide(gaps(0.08, 0.12), 0.01)[0]
