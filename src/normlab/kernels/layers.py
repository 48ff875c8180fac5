"""Fast paths for convolution, pooling and the elementwise activations, with the signatures of
:mod:`normlab.functional` (``conv2d_*``, ``max_pool2d_*``, ``avg_pool2d_*``, ``relu_*``, ``sigmoid_*``).

Tested equal to the reference (``tests/kernels/test_conv_pool_activation_adam_kernels.py``).  What differs is how the work is laid
out, not the math:

* **Conv2d**: im2col writes the *transposed* column matrix ``colsT`` (C·KH·KW, N·OH·OW) with a numba loop
  (padding never materialized, a thread per block of rows), and the three products are single BLAS calls on
  it:

  - forward ``rows = W · colsT`` (OC, N·OH·OW), laid out as (N, OC, OH, OW) with the bias added in one pass;
  - weight gradient ``dW = G · colsᵀ`` with ``G`` the output gradient as an (OC, N·OH·OW) matrix (one pass
    over dy, which also sums dbias);
  - input gradient ``dcolsT = Wᵀ · G``, then col2im (a numba loop reading each row of ``dcolsT`` as one
    stream) — skipped entirely with ``input_grad=False`` (the first layer of a network).

  The results equal the reference's up to the rounding of the matrix products (another summation order).
* **Pooling**: numba loops over (sample, channel) planes, no window copies, argmax/scatter in the same pass.
  Same numbers as the reference: the window sums and the scatter-adds run in the reference's order.
* **ReLU / sigmoid**: one parallel pass each way.  ReLU is exact; sigmoid uses the reference's formula, with
  the ``exp`` of LLVM instead of NumPy's (they differ by at most a few ulps).

The functions take validated, non-empty float32/float64 arrays (see :func:`normlab.kernels.resolve`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normlab.backend import compute_dtype
from normlab.functional.activation import ActivationCache
from normlab.functional.conv import Conv2dGrads, Geometry, Pair, conv2d_geometry
from normlab.functional.pool import AvgPool2dCache, MaxPool2dCache, pool_geometry
from normlab.kernels import _layer_loops as L
from normlab.kernels._compile import kernel_array as _kernel_array
from normlab.kernels._compile import threads as _threads


class FastConv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs from :func:`conv2d_forward`."""

    cols_t: np.ndarray  # (C·KH·KW, N, OH·OW) receptive fields, compute dtype: dW needs them
    weight_matrix: np.ndarray  # (OC, C·KH·KW), compute dtype: dx needs it
    weight_shape: tuple[int, int, int, int]
    geometry: Geometry
    input_shape: tuple[int, int, int, int]
    input_dtype: np.dtype
    has_bias: bool


# ----------------------------------------------------------------------------------------------- conv2d
def conv2d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
) -> tuple[np.ndarray, FastConv2dCache]:
    """As :func:`normlab.functional.conv2d_forward`; see the module docstring for the layout."""
    out_channels, in_channels, kh, kw = weight.shape
    geo = conv2d_geometry(x, weight.shape, stride, padding, dilation)
    dt = compute_dtype(x.dtype)
    n = x.shape[0]
    oh, ow = geo.output_hw
    ckk, length = in_channels * kh * kw, oh * ow
    blocks = _threads()
    cols_t = np.empty((ckk, n, length), dtype=dt)
    L.im2col(_kernel_array(x), kh, kw, *_window_args(geo), oh, ow, blocks, cols_t)
    w = _kernel_array(np.asarray(weight, dtype=dt).reshape(out_channels, ckk))
    rows = w @ cols_t.reshape(ckk, n * length)  # (OC, N·OH·OW): one BLAS call
    b = np.zeros(out_channels, dt) if bias is None else _kernel_array(np.asarray(bias, dtype=dt))
    y = np.empty((n, out_channels, oh, ow), dtype=dt)
    L.channels_first(
        rows.reshape(out_channels, n, length), b, blocks, y.reshape(n, out_channels, length)
    )
    cache = FastConv2dCache(
        cols_t, w, tuple(weight.shape), geo, tuple(x.shape), x.dtype, bias is not None
    )
    return y, cache


def _window_args(geo: Geometry) -> tuple[int, ...]:
    """(sh, sw, ph, pw, dh, dw) as the loops take them."""
    return (*geo.stride, *geo.padding, *geo.dilation)


def conv2d_backward(dy: np.ndarray, cache: FastConv2dCache, input_grad: bool = True) -> Conv2dGrads:
    """Gradients of :func:`conv2d_forward`; ``input_grad=False`` skips ``dx`` (returned as ``None``)."""
    out_channels = cache.weight_shape[0]
    n = cache.input_shape[0]
    oh, ow = cache.geometry.output_hw
    dt = cache.weight_matrix.dtype
    ckk, length = cache.cols_t.shape[0], oh * ow
    g = np.empty((out_channels, n, length), dtype=dt)
    dbias = np.empty(out_channels)
    dyk = _kernel_array(dy.astype(dt, copy=False))
    L.channels_outer(dyk.reshape(n, out_channels, length), g, dbias)
    g2 = g.reshape(out_channels, n * length)
    cols2 = cache.cols_t.reshape(ckk, n * length)
    dweight = (g2 @ cols2.T).reshape(cache.weight_shape)  # one BLAS call
    dx = None
    if input_grad:
        dcols_t = cache.weight_matrix.T @ g2  # (C·KH·KW, N·OH·OW): one BLAS call
        dx = np.zeros(cache.input_shape, dtype=dt)
        kh, kw = cache.geometry.kernel
        L.col2im(
            dcols_t.reshape(ckk, n, length),
            kh,
            kw,
            *_window_args(cache.geometry),
            oh,
            ow,
            _threads(),
            dx,
        )
        dx = dx.astype(cache.input_dtype, copy=False)
    return Conv2dGrads(dx, dweight, dbias.astype(dt) if cache.has_bias else None)


# ----------------------------------------------------------------------------------------------- pooling
def _planes(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) as contiguous (N·C, H, W) planes."""
    n, c, h, w = x.shape
    return _kernel_array(x).reshape(n * c, h, w)


def max_pool2d_forward(
    x: np.ndarray,
    kernel_size: int | Pair,
    stride: int | Pair | None = None,
    padding: int | Pair = 0,
) -> tuple[np.ndarray, MaxPool2dCache]:
    """As :func:`normlab.functional.max_pool2d_forward` (same cache: the argmax offset in each window)."""
    geo = pool_geometry(x.shape, kernel_size, stride, padding, "max_pool2d")
    n, c = x.shape[:2]
    oh, ow = geo.output_hw
    y = np.empty((n * c, oh, ow), dtype=x.dtype)
    argmax = np.empty((n * c, oh, ow), dtype=np.int32)
    (kh, kw), (sh, sw), (ph, pw) = geo.kernel, geo.stride, geo.padding
    L.max_pool_forward(_planes(x), kh, kw, sh, sw, ph, pw, y, argmax)
    shape = (n, c, oh, ow)
    return y.reshape(shape), MaxPool2dCache(argmax.reshape(shape), geo, tuple(x.shape), x.dtype)


def max_pool2d_backward(dy: np.ndarray, cache: MaxPool2dCache) -> np.ndarray:
    """``dx`` of :func:`max_pool2d_forward`: each window's gradient goes to its maximum."""
    expected = (*cache.input_shape[:2], *cache.geometry.output_hw)
    dt = compute_dtype(cache.input_dtype)
    n, c, h, w = cache.input_shape
    geo = cache.geometry
    dx = np.zeros((n * c, h, w), dtype=dt)
    (kh, kw), (sh, sw), (ph, pw) = geo.kernel, geo.stride, geo.padding
    argmax = _kernel_array(np.asarray(cache.argmax, dtype=np.int32)).reshape(n * c, *expected[2:])
    L.max_pool_backward(_planes(dy.astype(dt, copy=False)), argmax, kh, kw, sh, sw, ph, pw, dx)
    return dx.reshape(cache.input_shape)


def avg_pool2d_forward(
    x: np.ndarray,
    kernel_size: int | Pair,
    stride: int | Pair | None = None,
    padding: int | Pair = 0,
    count_include_pad: bool = True,
) -> tuple[np.ndarray, AvgPool2dCache]:
    """As :func:`normlab.functional.avg_pool2d_forward` (same cache: the divisor of each window)."""
    geo = pool_geometry(x.shape, kernel_size, stride, padding, "avg_pool2d")
    n, c = x.shape[:2]
    oh, ow = geo.output_hw
    divisor = _divisor(geo, x.dtype, count_include_pad)
    y = np.empty((n * c, oh, ow), dtype=x.dtype)
    (kh, kw), (sh, sw), (ph, pw) = geo.kernel, geo.stride, geo.padding
    L.avg_pool_forward(_planes(x), kh, kw, sh, sw, ph, pw, divisor, y)
    return y.reshape(n, c, oh, ow), AvgPool2dCache(divisor, geo, tuple(x.shape), x.dtype)


def _divisor(geo: Geometry, dt: np.dtype, count_include_pad: bool) -> np.ndarray:
    """What each window's sum is divided by: the window size, or the real input values it covers."""
    (kh, kw), (sh, sw), (ph, pw), (h, w) = geo.kernel, geo.stride, geo.padding, geo.input_hw
    oh, ow = geo.output_hw
    if count_include_pad:
        return np.full((oh, ow), kh * kw, dtype=dt)
    rows = np.minimum(np.arange(oh) * sh - ph + kh, h) - np.maximum(np.arange(oh) * sh - ph, 0)
    cols = np.minimum(np.arange(ow) * sw - pw + kw, w) - np.maximum(np.arange(ow) * sw - pw, 0)
    return np.outer(rows, cols).astype(dt)


def avg_pool2d_backward(dy: np.ndarray, cache: AvgPool2dCache) -> np.ndarray:
    """``dx`` of :func:`avg_pool2d_forward`: every value of a window receives ``g / divisor``."""
    dt = cache.divisor.dtype
    n, c, h, w = cache.input_shape
    geo = cache.geometry
    dx = np.zeros((n * c, h, w), dtype=dt)
    (kh, kw), (sh, sw), (ph, pw) = geo.kernel, geo.stride, geo.padding
    divisor = _kernel_array(cache.divisor)
    L.avg_pool_backward(_planes(dy.astype(dt, copy=False)), divisor, kh, kw, sh, sw, ph, pw, dx)
    return dx.reshape(cache.input_shape)


# ----------------------------------------------------------------------------------------------- activations
def _flat(a: np.ndarray) -> np.ndarray:
    return _kernel_array(a).reshape(-1)


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """``max(x, 0)``; as :func:`normlab.functional.relu_forward` (keeps the input), bit for bit."""
    y = np.empty(x.shape, dtype=x.dtype)
    L.relu_forward(_flat(x), _threads(), y.reshape(-1))
    return y, ActivationCache(x, x.dtype)


def relu_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """``dy`` where the input was > 0, else 0."""
    saved = cache.saved
    dx = np.empty(saved.shape, dtype=saved.dtype)
    L.relu_backward(
        _flat(dy.astype(saved.dtype, copy=False)), _flat(saved), _threads(), dx.reshape(-1)
    )
    return dx.astype(cache.input_dtype, copy=False)


def sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """``1 / (1 + exp(-x))`` without overflow; as :func:`normlab.functional.sigmoid_forward` (keeps the
    output), to a few ulps (LLVM's ``exp``)."""
    s = np.empty(x.shape, dtype=x.dtype)
    L.sigmoid_forward(_flat(x), _threads(), s.reshape(-1))
    return s, ActivationCache(s, x.dtype)


def sigmoid_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """``dy · s · (1 - s)`` from the output ``s``."""
    s = cache.saved
    dx = np.empty(s.shape, dtype=s.dtype)
    L.sigmoid_backward(_flat(dy.astype(s.dtype, copy=False)), _flat(s), _threads(), dx.reshape(-1))
    return dx.astype(cache.input_dtype, copy=False)


def activation_inplace(y: np.ndarray, activation: str) -> None:
    """Apply ``"relu"`` or ``"sigmoid"`` to the contiguous float32/float64 array ``y`` in place (the fused
    batch norm + activation of :mod:`normlab.kernels.norm`): the same values as the ops above."""
    flat = y.reshape(-1)
    if activation == "relu":
        L.relu_inplace(flat, _threads())
    else:
        L.sigmoid_inplace(flat, _threads())


__all__ = [
    "FastConv2dCache",
    "activation_inplace",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "conv2d_backward",
    "conv2d_forward",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "relu_backward",
    "relu_forward",
    "sigmoid_backward",
    "sigmoid_forward",
]
