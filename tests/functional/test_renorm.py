"""Batch Renormalization: the paper's algorithm written out here, finite differences, and Keras 3 as anchor."""

from __future__ import annotations

import os

import numpy as np
import pytest

from helpers.gradcheck import numerical_gradient, relative_error
from normlab.functional import norm as N
from normlab.functional import variants as V

EPS = 1e-3


def paper_forward(x, gamma, beta, mu, sigma, r_max, d_max, eps):
    """Ioffe (2017), Algorithm 1, line by line, for channels-first x (N, C, *)."""
    axes = (0, *range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mu_b = x.mean(axis=axes)
    sigma_b = np.sqrt(((x - mu_b.reshape(shape)) ** 2).mean(axis=axes) + eps)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mu_b - mu) / sigma, -d_max, d_max)
    xhat = (x - mu_b.reshape(shape)) / sigma_b.reshape(shape) * r.reshape(shape) + d.reshape(shape)
    return gamma.reshape(shape) * xhat + beta.reshape(shape), mu_b, sigma_b, r, d


def _inputs(seed=0, shape=(6, 4, 3, 2)):
    rng = np.random.default_rng(seed)
    channels = shape[1]
    # channel 0 stays inside the default test clipping (r_max 1.5, d_max 0.5); the others leave it
    loc = np.resize([0.1, -2.0, 3.0, 0.2], channels).reshape(1, channels, 1, 1)
    scale = np.resize([1.1, 0.3, 4.0, 0.9], channels).reshape(1, channels, 1, 1)
    x = rng.standard_normal(shape) * scale + loc
    gamma = rng.uniform(0.5, 1.5, channels)
    beta = rng.uniform(-0.5, 0.5, channels)
    return x, gamma, beta


def test_forward_equals_the_papers_algorithm_with_clipping_active_in_some_channels() -> None:
    x, gamma, beta = _inputs()
    mu, sigma = np.zeros(4), np.ones(4)
    clip = V.RenormClipping(r_max=1.5, d_max=0.5)
    y, cache = V.batch_renorm_forward(x, gamma, beta, mu, sigma, clipping=clip, eps=EPS)
    expected, _, _, r, d = paper_forward(x, gamma, beta, mu, sigma, 1.5, 0.5, EPS)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache.r, r, rtol=1e-13)
    np.testing.assert_allclose(cache.d, d, rtol=1e-13)
    clipped = (np.abs(cache.d) == 0.5) | np.isclose(cache.r, 1.5) | np.isclose(cache.r, 1 / 1.5)
    assert clipped.any() and not clipped.all()


def test_no_clipping_room_is_batch_norm() -> None:
    x, gamma, beta = _inputs(1)
    clip = V.RenormClipping(r_max=1.0, d_max=0.0)
    y, cache = V.batch_renorm_forward(
        x, gamma, beta, np.full(4, 0.3), np.full(4, 2.0), clipping=clip, eps=EPS
    )
    y_bn, _ = N.batch_norm_forward(x, gamma, beta, training=True, eps=EPS)
    np.testing.assert_allclose(y, y_bn, rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(2).standard_normal(x.shape)
    g = V.batch_renorm_backward(dy, cache)
    g_bn = N.batch_norm_backward(dy, N.batch_norm_forward(x, gamma, beta, eps=EPS)[1])
    for a, b in zip(g, g_bn, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("affine", [True, False])
def test_backward_against_finite_differences_where_r_and_d_are_saturated(affine: bool) -> None:
    """With every channel's r and d clipped, they are locally constant, so the stop-gradient backward
    is the true gradient of the forward and central differences of the real op must match it."""
    x, gamma, beta = _inputs(3)
    gamma, beta = (gamma, beta) if affine else (None, None)
    mu, sigma = np.full(4, 10.0), np.full(4, 0.05)  # sigma_B / sigma >> r_max and |d| >> d_max
    clip = V.RenormClipping(r_max=2.0, d_max=1.0)
    upstream = np.random.default_rng(4).standard_normal(x.shape)
    _, cache = V.batch_renorm_forward(x, gamma, beta, mu, sigma, clipping=clip, eps=EPS)
    assert np.allclose(cache.r, 2.0) and np.allclose(np.abs(cache.d), 1.0)
    grads = V.batch_renorm_backward(upstream, cache)

    def loss() -> float:
        return float(
            np.sum(
                upstream
                * V.batch_renorm_forward(x, gamma, beta, mu, sigma, clipping=clip, eps=EPS)[0]
            )
        )

    assert relative_error(grads.dx, numerical_gradient(loss, x)) < 1e-7
    if affine:
        assert relative_error(grads.dweight, numerical_gradient(loss, gamma)) < 1e-7
        assert relative_error(grads.dbias, numerical_gradient(loss, beta)) < 1e-7
    else:
        assert grads.dweight is None and grads.dbias is None


def test_backward_holds_r_and_d_constant() -> None:
    """Where the corrections are not clipped, dx is the gradient of γ(x̂ r0 + d) + β with r0, d0 frozen."""
    x, gamma, beta = _inputs(5)
    mu, sigma = np.full(4, 0.5), np.full(4, 1.8)
    clip = V.RenormClipping(r_max=1e6, d_max=1e6)
    _, cache = V.batch_renorm_forward(x, gamma, beta, mu, sigma, clipping=clip, eps=EPS)
    r0, d0 = cache.r.copy(), cache.d.copy()
    shape = (1, 4, 1, 1)
    upstream = np.random.default_rng(6).standard_normal(x.shape)

    def frozen() -> float:
        xhat, _ = N.batch_norm_forward(x, None, None, eps=EPS)
        y = gamma.reshape(shape) * (xhat * r0.reshape(shape) + d0.reshape(shape)) + beta.reshape(
            shape
        )
        return float(np.sum(upstream * y))

    grads = V.batch_renorm_backward(upstream, cache)
    assert relative_error(grads.dx, numerical_gradient(frozen, x)) < 1e-7
    assert relative_error(grads.dweight, numerical_gradient(frozen, gamma)) < 1e-7


def test_schedule_ramps_from_batch_norm_to_the_final_limits() -> None:
    s = V.RenormSchedule(warmup=10, r_max_steps=50, d_max_steps=30)
    assert s.at(0) == V.RenormClipping(1.0, 0.0)
    assert s.at(10) == V.RenormClipping(1.0, 0.0)
    assert s.at(30).r_max == pytest.approx(1.0 + 2.0 * 20 / 40)
    assert s.at(30).d_max == pytest.approx(5.0)
    assert s.at(20).d_max == pytest.approx(2.5)
    assert s.at(10**6) == V.RenormClipping(3.0, 5.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r_max": 0.5}, "r_max must be >= 1"),
        ({"d_max": -1.0}, "d_max must be >= 0"),
        ({"r_max": float("nan")}, "r_max must be a number"),
        ({"r_max": 2.0, "r_min": 3.0}, "r_min must be in"),
    ],
)
def test_bad_clipping_is_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        V.RenormClipping(**kwargs)


def test_merge_moments_equals_the_whole() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(1e4, 2.0, size=(12, 3, 5))
    parts = [(*N.moments(x[i : i + 4], (0, 2), keepdims=True), 20) for i in range(0, 12, 4)]
    mean, var, count = V.merge_moments(parts)
    whole_mean, whole_var = N.moments(x, (0, 2), keepdims=True)
    assert count == 60
    np.testing.assert_allclose(mean, whole_mean, rtol=1e-14)
    np.testing.assert_allclose(var, whole_var, rtol=1e-10)


# --------------------------------------------------------------------------------------- Keras 3 anchor
def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    if os.environ["KERAS_BACKEND"] != "torch":
        pytest.skip("KERAS_BACKEND is set to another backend than torch")
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    return torch, keras


# Keras 3.15's torch backend rounds renorm's moving σ to float32 even in a float64 layer (its ops.maximum of a
# float64 tensor and a 0-d float64 tensor returns float32), so the anchor is compared in float32, with the
# project's float32 parity tolerances; the paper's algorithm written out above (float64) is the tight check.
F32 = {"rtol": 1e-4, "atol": 2e-5}


def test_keras_renorm_parity_over_several_steps() -> None:
    """Keras 3 BatchNormalization(renorm=True) on torch: outputs, input/γ/β gradients and moving statistics
    after 4 training steps, with clipping active in some channels.  Keras's ``momentum=k`` is normlab's
    ``1 - k``; with ``renorm_momentum == momentum`` Keras's two sets of averages coincide with the paper's one."""
    torch, keras = _keras()
    keras_clipping = {"rmax": 1.5, "rmin": 1 / 1.5, "dmax": 0.5}
    clip = V.RenormClipping(r_max=1.5, d_max=0.5)
    channels, keras_momentum = 4, 0.8
    layer = keras.layers.BatchNormalization(
        axis=1,
        momentum=keras_momentum,
        epsilon=EPS,
        renorm=True,
        renorm_clipping=keras_clipping,
        renorm_momentum=keras_momentum,
        dtype="float32",
    )
    layer.build((None, channels, 3, 2))
    rng = np.random.default_rng(8)
    gamma = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, channels).astype(np.float32)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    mu, sigma = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    clipped, unclipped = set(), set()
    for step in range(4):
        x = _inputs(10 + step)[0].astype(np.float32)
        upstream = rng.standard_normal(x.shape).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        for w in (layer.gamma, layer.beta):
            w.value.grad = None
        y_keras = layer(xt, training=True)
        (y_keras * torch.tensor(upstream)).sum().backward()

        y, cache = V.batch_renorm_forward(x, gamma, beta, mu, sigma, clipping=clip, eps=EPS)
        grads = V.batch_renorm_backward(upstream, cache)
        close = F32
        np.testing.assert_allclose(y, y_keras.detach().numpy(), **close)
        np.testing.assert_allclose(grads.dx, xt.grad.numpy(), **close)
        np.testing.assert_allclose(grads.dweight, layer.gamma.value.grad.numpy(), **close)
        np.testing.assert_allclose(grads.dbias, layer.beta.value.grad.numpy(), **close)
        at_bound = np.isclose(np.abs(cache.d), clip.d_max) | np.isclose(cache.r, clip.r_max)
        clipped.update(np.flatnonzero(at_bound))
        unclipped.update(np.flatnonzero(~at_bound))

        batch_std = np.sqrt(cache.var.reshape(-1) + EPS)
        mu, sigma = V.update_moving_moments(
            mu, sigma, cache.mean.reshape(-1), batch_std, 1 - keras_momentum
        )
        np.testing.assert_allclose(mu, layer.moving_mean.value.detach().numpy(), **close)
        np.testing.assert_allclose(sigma, layer.moving_stddev.value.detach().numpy(), **close)
        # Keras derives the inference variance from the averaged stddev: eval normalizes by sigma
        np.testing.assert_allclose(
            sigma**2 - EPS, layer.moving_variance.value.detach().numpy(), **close
        )
    assert clipped and unclipped, (clipped, unclipped)

    x = _inputs(99)[0].astype(np.float32)
    y_eval, _ = N.batch_norm_forward(x, gamma, beta, mu, sigma**2 - EPS, training=False, eps=EPS)
    y_keras_eval = layer(torch.tensor(x), training=False).detach().numpy()
    np.testing.assert_allclose(y_eval, y_keras_eval, **F32)
