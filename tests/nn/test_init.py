"""Initializers: bounds and standard deviations from the formulas (computed here by hand), reproducibility
from a seed, and the default init of Linear and Conv2d."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.legacy_rng import global_state, seed_global
from normlab import nn
from normlab.nn import init

SHAPE = (200, 300)  # fan_in 300, fan_out 200: 60 000 draws, so sample statistics are within ~1%


def _std_close(values: np.ndarray, expected: float) -> None:
    assert values.std() == pytest.approx(expected, rel=0.02)
    assert abs(values.mean()) < 0.02 * expected


@pytest.mark.parametrize(
    ("draw", "bound"),
    [
        (lambda r: init.xavier_uniform(SHAPE, r), math.sqrt(6 / 500)),
        (lambda r: init.glorot_uniform(SHAPE, r, gain=2.0), 2 * math.sqrt(6 / 500)),
        (
            lambda r: init.kaiming_uniform(SHAPE, r, nonlinearity="relu"),
            math.sqrt(2) * math.sqrt(3 / 300),
        ),
        (
            lambda r: init.he_uniform(SHAPE, r, mode="fan_out", nonlinearity="relu"),
            math.sqrt(6 / 200),
        ),
        (lambda r: init.kaiming_uniform(SHAPE, r, a=math.sqrt(5)), 1 / math.sqrt(300)),
        (lambda r: init.uniform(SHAPE, r, -0.3, 0.3), 0.3),
    ],
)
def test_uniform_initializers_fill_their_interval(draw, bound: float) -> None:
    values = draw(np.random.default_rng(0))
    assert values.shape == SHAPE and values.dtype == np.float32
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert np.abs(values).max() > 0.99 * bound
    _std_close(values, bound / math.sqrt(3))


@pytest.mark.parametrize(
    ("draw", "std"),
    [
        (lambda r: init.normal(SHAPE, r, std=0.01), 0.01),
        (lambda r: init.xavier_normal(SHAPE, r), math.sqrt(2 / 500)),
        (lambda r: init.kaiming_normal(SHAPE, r, nonlinearity="relu"), math.sqrt(2 / 300)),
        (lambda r: init.he_normal(SHAPE, r, nonlinearity="tanh"), 5 / 3 / math.sqrt(300)),
    ],
)
def test_normal_initializers_have_their_std(draw, std: float) -> None:
    _std_close(draw(np.random.default_rng(1)), std)


def test_fans_of_a_conv_weight_and_constants() -> None:
    assert init.calculate_fan_in_and_fan_out((16, 3, 5, 5)) == (75, 400)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    np.testing.assert_array_equal(init.zeros((2, 3)), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(init.ones((4,), dtype=np.float64), np.ones(4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.xavier_uniform((5,), np.random.default_rng(0))


def test_default_linear_and_conv_init_bounds() -> None:
    layer = nn.Linear(400, 300, rng=0)
    bound = 1 / math.sqrt(400)
    assert (
        np.abs(layer.weight.data).max() <= bound and np.abs(layer.weight.data).max() > 0.99 * bound
    )
    assert np.abs(layer.bias.data).max() <= bound
    conv = nn.Conv2d(8, 64, 3, rng=0)
    bound = 1 / math.sqrt(8 * 9)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.weight.data).max() > 0.99 * bound
    _std_close(conv.weight.data, bound / math.sqrt(3))


def test_same_seed_same_model_and_no_global_state() -> None:
    seed_global(0)
    state = global_state()
    a, b, c = nn.Linear(5, 4, rng=7), nn.Linear(5, 4, rng=7), nn.Linear(5, 4, rng=8)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    np.testing.assert_array_equal(a.bias.data, b.bias.data)
    assert not np.array_equal(a.weight.data, c.weight.data)
    np.testing.assert_array_equal(global_state(), state)  # NumPy's global RNG untouched
    gen = np.random.default_rng(3)
    d, e = (
        nn.Linear(5, 4, rng=gen),
        nn.Linear(5, 4, rng=gen),
    )  # one generator for a model: layers differ
    assert not np.array_equal(d.weight.data, e.weight.data)
    f = nn.Linear(5, 4, rng=0, dtype=np.float64)
    np.testing.assert_array_equal(
        f.weight.data.astype(np.float32), nn.Linear(5, 4, rng=0).weight.data
    )
    with pytest.raises(TypeError, match="rng must be"):
        nn.Linear(5, 4, rng="seed")
