"""freeze_batch_norm, recalibrate_batch_norm, and running-statistics conventions."""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from normlab import nn


class TwoLayer(nn.Module):
    """A minimal container for these tests: BN -> LayerNorm -> BN, backward in reverse."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm1d(4)
        self.ln = nn.LayerNorm(4)
        self.bn2 = nn.BatchNorm1d(4, momentum=0.5)

    def forward(self, x):
        return self.bn2(self.ln(self.bn1(x)))

    def backward(self, dy):
        return self.bn1.backward(self.ln.backward(self.bn2.backward(dy)))


def _batches(n_batches: int, seed: int = 0, size: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal([1.0, -2.0, 5.0, 0.0], [1.0, 3.0, 0.5, 2.0], size=(size, 4))
        for _ in range(n_batches)
    ]


def test_frozen_batch_norm_uses_running_stats_and_learns_nothing_in_train_mode() -> None:
    model = TwoLayer()
    for b in _batches(5):
        model(b.astype(np.float32))
    nl.freeze_batch_norm(model)
    model.train()
    assert model.training and model.ln.training
    assert not model.bn1.training and not model.bn2.training
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x = _batches(1, seed=9)[0].astype(np.float32)
    y_frozen = model(x)
    model.backward(np.ones_like(y_frozen))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert model.bn1.weight.grad is None and model.bn2.bias.grad is None
    assert model.ln.weight.grad is not None  # the rest of the model still learns
    model.eval()
    np.testing.assert_array_equal(model(x), y_frozen)


def test_unfreeze_restores_training_behaviour() -> None:
    model = nl.freeze_batch_norm(TwoLayer())
    nl.unfreeze_batch_norm(model)
    model.train()
    assert model.bn1.training
    model(_batches(1)[0].astype(np.float32))
    assert int(model.bn1.num_batches_tracked) == 1
    assert model.bn1.weight.requires_grad


def test_freeze_refuses_layers_without_running_statistics() -> None:
    with pytest.raises(ValueError, match="track_running_stats=False"):
        nl.freeze_batch_norm(nn.BatchNorm1d(3, track_running_stats=False))


def test_recalibrate_computes_population_statistics_and_restores_settings() -> None:
    bn = nn.BatchNorm1d(4, momentum=0.3, dtype=np.float64)
    bn.running_mean = np.full(4, 100.0)  # stale statistics, e.g. from before fine-tuning
    bn.running_var = np.full(4, 1e-3)
    bn.eval()
    batches = _batches(6)
    nl.recalibrate_batch_norm(bn, batches)
    stacked = np.stack(batches)  # (batches, N, C)
    expected_mean = stacked.mean(axis=1).mean(axis=0)
    expected_var = stacked.var(axis=1, ddof=1).mean(axis=0)
    np.testing.assert_allclose(bn.running_mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, expected_var, rtol=1e-12)
    assert int(bn.num_batches_tracked) == 6
    assert bn.momentum == 0.3 and not bn.training


def test_recalibrate_accepts_labelled_batches_and_nested_models() -> None:
    model = TwoLayer().double()
    model.train()
    data = [(b, np.zeros(len(b))) for b in _batches(3)]
    nl.recalibrate_batch_norm(model, data)
    assert model.training and model.bn1.training
    assert int(model.bn1.num_batches_tracked) == 3 and int(model.bn2.num_batches_tracked) == 3
    assert model.bn2.momentum == 0.5


def test_failed_recalibration_leaves_the_model_unchanged() -> None:
    model = TwoLayer()
    for b in _batches(3):
        model(b.astype(np.float32))
    model.eval()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    bad = [_batches(1)[0], np.ones((5, 7))]  # second batch has the wrong width
    with pytest.raises(ValueError, match="expected 4 channels"):
        nl.recalibrate_batch_norm(model, bad)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert not model.training and model.bn1.momentum == 0.1
    with pytest.raises(ValueError, match="no batches"):
        nl.recalibrate_batch_norm(model, [])


def test_cumulative_average_with_momentum_none() -> None:
    bn = nn.BatchNorm1d(4, momentum=None, dtype=np.float64)
    batches = _batches(4)
    for b in batches:
        bn(b)
    np.testing.assert_allclose(
        bn.running_mean, np.mean([b.mean(0) for b in batches], axis=0), rtol=1e-12
    )


def test_biased_running_variance_option_matches_keras_convention() -> None:
    bn = nn.BatchNorm1d(
        4, momentum=nn.momentum_from_keras(0.99), running_var="biased", dtype=np.float64
    )
    batch = _batches(1)[0]
    bn(batch)
    np.testing.assert_allclose(bn.running_var, 0.99 * 1.0 + 0.01 * batch.var(axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_mean, 0.01 * batch.mean(axis=0), rtol=1e-12)


def test_keras_momentum_conversion() -> None:
    assert nn.momentum_from_keras(0.99) == pytest.approx(0.01)
    assert nn.momentum_to_keras(0.1) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        nn.momentum_from_keras(1.5)


def test_instance_norm_running_statistics_average_over_instances_and_count_batches() -> None:
    rng = np.random.default_rng(3)
    inorm = nn.InstanceNorm1d(2, track_running_stats=True, momentum=None, dtype=np.float64)
    xs = [rng.normal(2.0, 3.0, size=(3, 2, 6)) for _ in range(3)]
    for x in xs:
        inorm(x)
    assert int(inorm.num_batches_tracked) == 3
    expected_mean = np.mean([x.mean(axis=2).mean(axis=0) for x in xs], axis=0)
    expected_var = np.mean([x.var(axis=2, ddof=1).mean(axis=0) for x in xs], axis=0)
    np.testing.assert_allclose(inorm.running_mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(inorm.running_var, expected_var, rtol=1e-12)


def test_reset_running_stats_and_parameters() -> None:
    bn = nn.BatchNorm1d(4)
    for b in _batches(2):
        bn(b.astype(np.float32))
    bn.weight.data[:] = 3.0
    bn.reset_running_stats()
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert int(bn.num_batches_tracked) == 0
    assert np.all(bn.weight.data == 3.0)
    bn.reset_parameters()
    np.testing.assert_array_equal(bn.weight.data, 1)
