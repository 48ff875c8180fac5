"""Ghost Batch Norm and Weight Standardization: identities, PyTorch written out as the anchor, finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.gradcheck import numerical_gradient, relative_error
from normlab.functional import norm as N
from normlab.functional import variants as V

torch = pytest.importorskip("torch")


def _batch(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=shape)
    channels = shape[1]
    return x, rng.uniform(0.5, 1.5, channels), rng.uniform(-0.5, 0.5, channels), rng


# --------------------------------------------------------------------------------------- ghost batch norm
@pytest.mark.parametrize("shape, v", [((12, 3), 4), ((8, 2, 3, 3), 2), ((6, 4, 5), 3)])
def test_ghost_equals_torch_batch_norm_on_each_chunk(shape, v) -> None:
    """GBN(v) on a batch of k·v is BN applied to each chunk of v samples: outputs and gradients (torch)."""
    x, gamma, beta, rng = _batch(shape)
    upstream = rng.standard_normal(shape)
    y, cache = V.ghost_batch_norm_forward(x, gamma, beta, virtual_batch_size=v, eps=1e-5)
    grads = V.ghost_batch_norm_backward(upstream, cache)

    xt = torch.tensor(x, requires_grad=True)
    wt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    chunks = [
        torch.nn.functional.batch_norm(c, None, None, wt, bt, training=True, eps=1e-5)
        for c in torch.split(xt, v)
    ]
    yt = torch.cat(chunks)
    (yt * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads.dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(grads.dweight, wt.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(grads.dbias, bt.grad.numpy(), rtol=1e-10)


def test_ghost_with_the_whole_batch_is_batch_norm() -> None:
    x, gamma, beta, rng = _batch((10, 3, 4))
    upstream = rng.standard_normal(x.shape)
    y, cache = V.ghost_batch_norm_forward(x, gamma, beta, virtual_batch_size=10)
    y_bn, cache_bn = N.batch_norm_forward(x, gamma, beta)
    np.testing.assert_array_equal(y, y_bn)
    for a, b in zip(
        V.ghost_batch_norm_backward(upstream, cache),
        N.batch_norm_backward(upstream, cache_bn),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_ghost_merged_statistics_are_the_whole_batchs() -> None:
    """What the running averages are updated with: the statistics of all N samples, merged from the chunks."""
    x, gamma, beta, _ = _batch((12, 3, 2, 2))
    x[:, 1] += 1e4  # a channel with a large mean: the merge must stay stable
    _, cache = V.ghost_batch_norm_forward(x, gamma, beta, virtual_batch_size=4)
    mean, var = N.moments(x, (0, 2, 3), keepdims=True)
    assert cache.count == 12 * 4
    np.testing.assert_allclose(cache.mean, mean, rtol=1e-14)
    np.testing.assert_allclose(cache.var, var, rtol=1e-9)


def test_ghost_backward_against_finite_differences() -> None:
    x, gamma, beta, rng = _batch((6, 2, 3))
    upstream = rng.standard_normal(x.shape)
    _, cache = V.ghost_batch_norm_forward(x, gamma, beta, virtual_batch_size=3)
    grads = V.ghost_batch_norm_backward(upstream, cache)

    def loss() -> float:
        y, _ = V.ghost_batch_norm_forward(x, gamma, beta, virtual_batch_size=3)
        return float(np.sum(upstream * y))

    assert relative_error(grads.dx, numerical_gradient(loss, x)) < 1e-7
    assert relative_error(grads.dweight, numerical_gradient(loss, gamma)) < 1e-7
    assert relative_error(grads.dbias, numerical_gradient(loss, beta)) < 1e-7


@pytest.mark.parametrize(
    "n, v, message",
    [
        (10, 4, "multiple of virtual_batch_size=4"),
        (8, 0, "virtual_batch_size must be an int >= 1"),
        (8, -2, "virtual_batch_size must be an int >= 1"),
        (8, 2.0, "virtual_batch_size must be an int >= 1"),
        (8, True, "virtual_batch_size must be an int >= 1"),
    ],
)
def test_ghost_bad_virtual_batch_size(n, v, message) -> None:
    x = np.ones((n, 3))
    with pytest.raises(ValueError, match=message):
        V.ghost_batch_norm_forward(x, None, None, virtual_batch_size=v)


# --------------------------------------------------------------------------------------- weight standardization
def _torch_ws(w, eps):
    """The two lines of weight standardization, as timm's StdConv2d computes it (biased variance, eps inside)."""
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    return (w - mean) / torch.sqrt(w.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + eps)


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (2, 5, 1, 2), (3, 1, 2, 2)])
def test_weight_standardization_matches_torch(shape) -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(0.2, 0.7, size=shape)
    upstream = rng.standard_normal(shape)
    w_hat, cache = V.weight_standardization_forward(w, eps=1e-5)
    dw = V.weight_standardization_backward(upstream, cache)

    wt = torch.tensor(w, requires_grad=True)
    w_hat_t = _torch_ws(wt, 1e-5)
    (w_hat_t * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(w_hat, w_hat_t.detach().numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-9, atol=1e-11)
    # per output channel: mean 0, (biased) variance 1 up to eps
    np.testing.assert_allclose(w_hat.mean(axis=(1, 2, 3)), 0, atol=1e-12)


def test_weight_standardization_backward_against_finite_differences() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 2, 2, 2))
    upstream = rng.standard_normal(w.shape)
    _, cache = V.weight_standardization_forward(w)
    dw = V.weight_standardization_backward(upstream, cache)

    def loss() -> float:
        return float(np.sum(upstream * V.weight_standardization_forward(w)[0]))

    assert relative_error(dw, numerical_gradient(loss, w)) < 1e-7


def test_weight_standardization_refuses_one_element_kernels() -> None:
    with pytest.raises(ValueError, match="more than one element per output channel"):
        V.weight_standardization_forward(np.ones((4, 1, 1, 1)))
