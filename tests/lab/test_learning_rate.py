"""The decision of learning-rate, on synthetic numbers for both outcomes."""

from __future__ import annotations

from normlab.lab.experiments.learning_rate import BN, PLAIN, decide, largest_trained_lr

LRS = [0.01, 0.1, 1.0, 10.0]


def test_largest_trained_lr_skips_diverged_and_inaccurate_runs() -> None:
    assert largest_trained_lr(LRS, [0.9, 0.9, 0.95, 0.9], [False, False, False, True], 0.8) == 1.0
    assert largest_trained_lr(LRS, [0.9, 0.5, 0.1, 0.1], [False, False, False, False], 0.8) == 0.01
    assert largest_trained_lr(LRS, [0.5, 0.5, 0.1, 0.1], [False, False, True, True], 0.8) is None


def test_holds_when_batch_norm_trains_at_five_times_the_plain_networks_largest_lr() -> None:
    holds, measured = decide(
        LRS,
        {PLAIN: [0.9, 0.9, 0.1, 0.1], BN: [0.9, 0.95, 0.95, 0.9]},
        {PLAIN: [False, False, True, True], BN: [False, False, False, False]},
        0.8,
        5.0,
    )
    assert holds
    assert "batch norm 10, plain 0.1 (ratio 100)" in measured
    assert "plain from lr 1" in measured and "batch norm never" in measured


def test_does_not_hold_when_the_margin_is_below_the_ratio() -> None:
    holds, _ = decide(
        LRS,
        {PLAIN: [0.9, 0.9, 0.1, 0.1], BN: [0.9, 0.95, 0.95, 0.1]},
        {PLAIN: [False, False, True, True], BN: [False, False, False, True]},
        0.8,
        20.0,  # 1.0 / 0.1 = 10 < 20
    )
    assert not holds


def test_plain_training_nowhere_holds_only_if_batch_norm_trains_somewhere() -> None:
    never = {PLAIN: [True] * 4, BN: [True] * 4}
    low = {PLAIN: [0.1] * 4, BN: [0.1] * 4}
    assert not decide(LRS, low, never, 0.8, 5.0)[0]
    assert decide(
        LRS,
        {PLAIN: [0.1] * 4, BN: [0.9, 0.1, 0.1, 0.1]},
        {PLAIN: [False] * 4, BN: [False] * 4},
        0.8,
        5.0,
    )[0]


def test_does_not_hold_when_batch_norm_diverges_earlier() -> None:
    holds, _ = decide(
        LRS,
        {PLAIN: [0.9, 0.9, 0.9, 0.1], BN: [0.9, 0.9, 0.1, 0.1]},
        {PLAIN: [False, False, False, True], BN: [False, False, True, True]},
        0.8,
        5.0,
    )
    assert not holds
