"""Identities between normalizations, and properties any correct batch norm has."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab import functional as F
from normlab import nn


def _rng() -> np.random.Generator:
    return np.random.default_rng(2024)


def test_group_norm_with_one_group_is_layer_norm_over_channels_and_space() -> None:
    rng = _rng()
    x = rng.normal(2.0, 3.0, size=(3, 6, 4, 5))
    dy = rng.standard_normal(x.shape)
    gn = nn.GroupNorm(1, 6, affine=False, dtype=np.float64)
    ln = nn.LayerNorm((6, 4, 5), elementwise_affine=False, dtype=np.float64)
    np.testing.assert_allclose(gn(x), ln(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gn.backward(dy), ln.backward(dy), rtol=1e-12, atol=1e-12)


def test_group_norm_with_one_channel_per_group_is_instance_norm() -> None:
    rng = _rng()
    x = rng.normal(-1.0, 2.0, size=(2, 5, 6, 3))
    dy = rng.standard_normal(x.shape)
    gn = nn.GroupNorm(5, 5, dtype=np.float64)
    inorm = nn.InstanceNorm2d(5, affine=True, dtype=np.float64)
    w, b = rng.standard_normal(5), rng.standard_normal(5)
    for m in (gn, inorm):
        m.weight.data, m.bias.data = w.copy(), b.copy()
    np.testing.assert_allclose(gn(x), inorm(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gn.backward(dy), inorm.backward(dy), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gn.weight.grad, inorm.weight.grad, rtol=1e-12)
    np.testing.assert_allclose(gn.bias.grad, inorm.bias.grad, rtol=1e-12)


def test_batch_norm_eval_with_unit_running_stats_and_zero_eps_is_the_affine_map() -> None:
    rng = _rng()
    bn = nn.BatchNorm2d(4, eps=0.0, dtype=np.float64)
    bn.weight.data = rng.standard_normal(4)
    bn.bias.data = rng.standard_normal(4)
    bn.eval()
    x = rng.normal(5.0, 3.0, size=(2, 4, 3, 3))
    expected = x * bn.weight.data[None, :, None, None] + bn.bias.data[None, :, None, None]
    np.testing.assert_allclose(bn(x), expected, rtol=1e-14, atol=1e-14)
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(
        bn.backward(dy), dy * bn.weight.data[None, :, None, None], rtol=1e-14
    )


def _batch_norm_backward_step_by_step(x, gamma, eps, dy):
    """BN backward derived node by node on the computational graph of the forward pass
    (mu -> xc -> var -> std -> xn -> y), the way the seed tutorials derive it.  x: (N, D)."""
    n = x.shape[0]
    mu = x.mean(axis=0)
    xc = x - mu
    var = np.mean(xc**2, axis=0)
    std = np.sqrt(var + eps)
    xn = xc / std
    dbeta = dy.sum(axis=0)
    dgamma = np.sum(xn * dy, axis=0)
    dxn = gamma * dy
    dxc = dxn / std
    dstd = -np.sum((dxn * xc) / (std * std), axis=0)
    dvar = 0.5 * dstd / std
    dxc += (2.0 / n) * xc * dvar
    dmu = np.sum(dxc, axis=0)
    dx = dxc - dmu / n
    return dx, dgamma, dbeta


def test_closed_form_batch_norm_backward_equals_the_step_by_step_derivation() -> None:
    rng = _rng()
    x = rng.normal(4.0, 2.0, size=(16, 5))
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
    dy = rng.standard_normal(x.shape)
    _, cache = F.batch_norm_forward(x, gamma, beta, training=True, eps=1e-5)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
    ref_dx, ref_dgamma, ref_dbeta = _batch_norm_backward_step_by_step(x, gamma, 1e-5, dy)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, ref_dgamma, rtol=1e-12)
    np.testing.assert_allclose(dbeta, ref_dbeta, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 9),
    c=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 4), max_size=2),
    mean=st.floats(-100, 100),
    seed=st.integers(0, 2**16),
)
def test_batch_norm_training_properties(n, c, spatial, mean, seed) -> None:
    """In training: per-channel output mean beta and variance ~gamma^2; dx sums to 0 over each channel and
    is orthogonal to xhat (the gradient cannot move the statistics the layer removes)."""
    rng = np.random.default_rng(seed)
    shape = (n, c, *spatial)
    x = rng.normal(mean, 2.0, size=shape)
    gamma, beta = rng.uniform(0.5, 2.0, c), rng.standard_normal(c)
    y, cache = F.batch_norm_forward(x, gamma, beta, training=True, eps=0.0)
    axes = (0, *range(2, x.ndim))
    np.testing.assert_allclose(y.mean(axis=axes), beta, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=axes), gamma**2, rtol=1e-9)
    dy = rng.standard_normal(shape)
    dx, _, _ = F.batch_norm_backward(dy, cache)
    # the size dx would have without cancellation: |dy| * gamma / std, summed
    scale = np.abs(dy).sum(axis=axes) * gamma * cache.rstd.reshape(-1)
    assert np.all(np.abs(dx.sum(axis=axes)) <= 1e-10 * scale)
    xhat = cache.xhat
    assert np.all(np.abs((dx * xhat).sum(axis=axes)) <= 1e-9 * scale * np.abs(xhat).max())


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 2), (1, 2, 3), (0, 1, 2, 3)])
def test_moments_equal_numpy_in_float64(axes) -> None:
    x = _rng().normal(7.0, 3.0, size=(3, 4, 5, 6))
    mean, var = F.moments(x, axes)
    np.testing.assert_allclose(mean, x.mean(axis=axes), rtol=1e-13)
    np.testing.assert_allclose(var, x.var(axis=axes), rtol=1e-12)


def test_rms_norm_of_a_centered_input_is_layer_norm() -> None:
    """Without a mean to remove, the RMS is the standard deviation: RMSNorm == LayerNorm."""
    x = _rng().standard_normal((4, 8))
    x -= x.mean(axis=-1, keepdims=True)
    y_rms, _ = F.rms_norm_forward(x, (8,), eps=1e-6)
    y_ln, _ = F.layer_norm_forward(x, (8,), eps=1e-6)
    np.testing.assert_allclose(y_rms, y_ln, rtol=1e-12, atol=1e-14)
