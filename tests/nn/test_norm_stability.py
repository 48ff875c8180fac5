"""Numerical stability: float32 inputs with a large mean keep their precision."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import nn

LARGE_MEAN = 1e4


def _large_mean_input(shape) -> np.ndarray:
    return np.random.default_rng(5).normal(LARGE_MEAN, 1.0, size=shape).astype(np.float32)


LAYERS = [
    (lambda dt: nn.BatchNorm1d(8, dtype=dt), (4096, 8)),
    (lambda dt: nn.BatchNorm2d(4, dtype=dt), (16, 4, 16, 16)),
    (lambda dt: nn.LayerNorm(1024, dtype=dt), (8, 1024)),
    (lambda dt: nn.GroupNorm(2, 8, dtype=dt), (4, 8, 16, 16)),
    (lambda dt: nn.InstanceNorm2d(4, dtype=dt), (4, 4, 32, 32)),
]


def _relative_max_error(y: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(y.astype(np.float64) - reference)) / np.max(np.abs(reference)))


@pytest.mark.parametrize("make, shape", LAYERS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_float32_with_mean_1e4_matches_float64(make, shape) -> None:
    x32 = _large_mean_input(shape)
    reference_layer, layer = make(np.float64), make(np.float32)
    y64 = reference_layer(x32.astype(np.float64))
    y32 = layer(x32)
    assert y32.dtype == np.float32
    assert _relative_max_error(y32, y64) < 1e-3
    dy = np.random.default_rng(6).standard_normal(shape)
    dx64 = reference_layer.backward(dy)
    dx32 = layer.backward(dy.astype(np.float32))
    assert _relative_max_error(dx32, dx64) < 1e-3


def test_the_naive_formula_fails_where_normlab_does_not() -> None:
    """What the test above guards against: E[x^2] - E[x]^2 in float32 loses the variance entirely."""
    x = _large_mean_input((4096, 8))
    naive_var = np.mean(x * x, axis=0) - np.mean(x, axis=0) ** 2
    true_var = x.astype(np.float64).var(axis=0)
    assert np.max(np.abs(naive_var - true_var) / true_var) > 1e-3


def test_float16_input_is_normalized_in_float32_and_returned_in_float16() -> None:
    x = np.random.default_rng(1).normal(100.0, 1.0, size=(64, 4)).astype(np.float16)
    y = nn.BatchNorm1d(4)(x)
    assert y.dtype == np.float16
    reference = nn.BatchNorm1d(4, dtype=np.float64)(x.astype(np.float64))
    assert np.max(np.abs(y - reference)) < 5e-3  # float16 has ~3 decimal digits
