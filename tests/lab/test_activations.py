"""activations: the statistics, the probe that leaves the model as it was, and the decision."""

from __future__ import annotations

import numpy as np
import pytest

from normlab.config import mlp
from normlab.lab.experiments.activations import (
    FULL,
    MOMENTS,
    decide,
    health,
    hidden_activations,
    layer_statistics,
)

INIT, TRAINED = MOMENTS


def test_hidden_activations_returns_each_hidden_layer_and_leaves_the_model_unchanged() -> None:
    model = mlp([20, 7, 7, 7, 3], norm="bn", activation="sigmoid", rng=np.random.default_rng(0))
    model.eval()
    before = model.state_dict()
    x = np.random.default_rng(1).normal(size=(50, 20)).astype(np.float32)
    layers = hidden_activations(model, x)
    assert [a.shape for a in layers] == [(50, 7)] * 3
    assert np.all((layers[-1] > 0) & (layers[-1] < 1))
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not model.training


def test_layer_statistics_count_saturated_sigmoids_and_dead_relus() -> None:
    sig = np.array([[0.005, 0.5], [0.995, 0.6]])
    assert layer_statistics(sig, "sigmoid", [0.01, 0.99])["saturated_fraction"] == 0.5
    relu = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]])
    stats = layer_statistics(relu, "relu", [0.01, 0.99])
    assert stats["zero_fraction"] == pytest.approx(0.5)
    assert stats["dead_unit_fraction"] == pytest.approx(1 / 3)


def test_health_thresholds() -> None:
    assert health(np.full((4, 4), 0.5), "sigmoid", FULL) == (0.0, True)
    assert health(np.full((4, 4), 0.999), "sigmoid", FULL) == (1.0, False)
    relu = np.abs(np.random.default_rng(0).normal(size=(100, 10)))
    assert health(relu, "relu", FULL)[1]
    assert not health(relu * 1e-4, "relu", FULL)[1]


def _last(**changes: tuple[float, bool]) -> dict:
    last = {
        ("sigmoid", None, INIT): (0.5, False),
        ("sigmoid", None, TRAINED): (0.5, False),
        ("sigmoid", "bn", INIT): (0.0, True),
        ("sigmoid", "bn", TRAINED): (0.01, True),
        ("relu", None, INIT): (1e-6, False),
        ("relu", None, TRAINED): (2.0, True),
        ("relu", "bn", INIT): (0.58, True),
        ("relu", "bn", TRAINED): (0.9, True),
    }
    for key, value in changes.items():
        act, norm, moment = key.split("__")
        last[(act, None if norm == "plain" else norm, INIT if moment == "init" else TRAINED)] = (
            value
        )
    return last


def test_decide_holds_when_bn_is_well_scaled_and_the_plain_init_is_not() -> None:
    holds, measured = decide(_last(), ["sigmoid", "relu"])
    assert holds
    assert "sigmoid, saturated fraction" in measured and "relu, std" in measured


@pytest.mark.parametrize(
    "change",
    [
        {"sigmoid__bn__trained": (0.3, False)},  # batch norm saturates after training
        {"relu__bn__init": (1e-3, False)},  # batch norm collapses at init
        {"relu__plain__init": (0.6, True)},  # the plain init was not badly scaled: nothing shown
    ],
)
def test_decide_does_not_hold_when_one_condition_fails(change: dict) -> None:
    holds, _ = decide(_last(**change), ["sigmoid", "relu"])
    assert not holds
