"""Dropout: inverted scaling, masks only in training, its own seeded generator, never the global one."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.legacy_rng import global_state, seed_global
from normlab import nn, no_grad


def test_training_mask_statistics_and_scaling() -> None:
    layer = nn.Dropout(0.3, seed=0)
    x = np.ones((200, 500), np.float32)
    y = layer(x)
    kept = y != 0
    # 100 000 Bernoulli(0.7) draws: the kept fraction is within 5 standard deviations of 0.7
    assert abs(kept.mean() - 0.7) < 5 * np.sqrt(0.7 * 0.3 / x.size)
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    dx = layer.backward(np.full_like(x, 2.0))
    np.testing.assert_array_equal(dx != 0, kept)  # the gradient flows through the same mask
    np.testing.assert_allclose(dx[kept], 2 / 0.7, rtol=1e-6)


def test_eval_is_identity_and_leaves_no_stale_mask() -> None:
    layer = nn.Dropout(0.5, seed=0)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    layer(x)
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), np.ones_like(x))


def test_edge_probabilities() -> None:
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(nn.Dropout(0.0, seed=0)(x), x)
    np.testing.assert_array_equal(nn.Dropout(1.0, seed=0)(x), np.zeros_like(x))
    with pytest.raises(ValueError, match=r"Dropout: dropout probability p must be in \[0, 1\]"):
        nn.Dropout(1.5)


def test_seeded_generator_reproducible_and_independent_of_global_state() -> None:
    x = np.ones((10, 10), np.float32)
    seed_global(123)
    before = global_state()
    first = nn.Dropout(0.5, seed=42)(x)
    seed_global(999)  # the global state must not matter
    second = nn.Dropout(0.5, seed=42)(x)
    np.testing.assert_array_equal(first, second)
    seed_global(123)
    nn.Dropout(0.5, seed=42)(x)
    np.testing.assert_array_equal(global_state(), before)
    layer = nn.Dropout(0.5, seed=42)
    assert not np.array_equal(layer(x), layer(x))  # a fresh mask each forward


def test_no_grad_keeps_no_cache() -> None:
    layer = nn.Dropout(0.5, seed=0)
    with no_grad():
        layer(np.ones((2, 2), np.float32))
    with pytest.raises(RuntimeError, match="forward pass first"):
        layer.backward(np.ones((2, 2), np.float32))
