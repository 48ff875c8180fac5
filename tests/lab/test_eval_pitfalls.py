"""eval-pitfalls: the building blocks (batches, partial reload, mistaken passes) and the decision."""

from __future__ import annotations

import numpy as np

from normlab.lab.common import model_accuracy
from normlab.lab.experiments.eval_pitfalls import (
    CORRECT,
    LOST,
    RECALIBRATED,
    SORTED,
    batch_norm_1d_batch_of_one_error,
    class_sorted_batches,
    decide,
    load_parameters_only,
    small_cnn,
    train_mode_accuracy,
)


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def test_class_sorted_batches_hold_one_digit_each_and_cover_every_image() -> None:
    x, y = _images(57)
    batches = class_sorted_batches(x, y, batch_size=4)
    assert all(len(np.unique(yb)) == 1 and len(yb) <= 4 for _, yb in batches)
    assert sum(len(yb) for _, yb in batches) == 57
    digits = [int(yb[0]) for _, yb in batches]
    assert digits == sorted(digits)


def test_loading_parameters_only_keeps_the_initial_running_statistics() -> None:
    trained = small_cnn([4, 8], np.random.default_rng(0))
    x, _ = _images(16)
    trained.train()
    trained(x)  # moves the running statistics away from 0 / 1
    state = trained.state_dict()
    assert not np.allclose(state["1.running_mean"], 0)

    reloaded = small_cnn([4, 8], np.random.default_rng(1))
    load_parameters_only(reloaded, state)
    new = reloaded.state_dict()
    for name, _ in trained.named_parameters():
        assert np.array_equal(new[name], state[name])
    assert np.all(new["1.running_mean"] == 0) and np.all(new["1.running_var"] == 1)
    assert int(new["1.num_batches_tracked"]) == 0


def test_a_mistaken_training_mode_pass_moves_running_stats_and_a_copy_restores_them() -> None:
    model = small_cnn([4, 8], np.random.default_rng(0))
    x, y = _images(40)
    saved = model.state_dict()
    eval_before = model_accuracy(model, x, y)
    train_mode_accuracy(model, class_sorted_batches(x, y, 8))
    assert not np.array_equal(model.state_dict()["4.running_var"], saved["4.running_var"])
    model.load_state_dict(saved)
    assert model_accuracy(model, x, y) == eval_before


def test_training_mode_with_one_image_runs_for_batchnorm2d_and_raises_for_batchnorm1d() -> None:
    model = small_cnn([4, 8], np.random.default_rng(0))
    x, y = _images(3)
    assert 0.0 <= train_mode_accuracy(model, [(x[i : i + 1], y[i : i + 1]) for i in range(3)]) <= 1
    message = batch_norm_1d_batch_of_one_error(x.reshape(3, -1), np.random.default_rng(0))
    assert message.startswith("ValueError") and "more than 1 value per channel" in message


def _accuracies(**rows: float) -> dict[str, float]:
    return {CORRECT: 0.95, RECALIBRATED: 0.945, SORTED: 0.80, LOST: 0.30} | rows


def test_decide_holds_when_every_pitfall_costs_the_margin_and_recalibration_recovers() -> None:
    holds, measured = decide(_accuracies(), [SORTED, LOST], margin=0.02, tolerance=0.01)
    assert holds
    assert "2 of 2 pitfalls" in measured and "0.9450" in measured


def test_decide_does_not_hold_when_a_pitfall_is_harmless() -> None:
    holds, measured = decide(_accuracies(**{SORTED: 0.94}), [SORTED, LOST], 0.02, 0.01)
    assert not holds
    assert "1 of 2 pitfalls" in measured


def test_decide_does_not_hold_when_recalibration_misses_the_eval_accuracy() -> None:
    holds, measured = decide(_accuracies(**{RECALIBRATED: 0.90}), [SORTED, LOST], 0.02, 0.01)
    assert not holds
    assert "not within" in measured
