r"""2-D max and average pooling over the same window view as convolution (see :mod:`.conv`).

**Max pooling** takes the largest value of each window.  Its gradient flows only to that value:

.. math::

    y = \max_{k \in \text{window}} x_k, \qquad
    \frac{\partial L}{\partial x_k} = \sum_{\text{windows with } k = \arg\max} g

A tie goes to the first maximum in row-major window order (as PyTorch).  Padding is ``-inf``, so it never wins.

**Average pooling** divides each window's sum by the window size (``count_include_pad=True``, the default, as
PyTorch: zero padding counts) or by the number of real input values in the window
(``count_include_pad=False``).  Every value of a window receives ``g / divisor``.

Both backwards scatter per-window gradients onto the input with :func:`.conv.col2im`.  ``stride`` defaults to
the kernel size; ``padding`` may be at most half the kernel size (as PyTorch).  ``ceil_mode`` is not
supported: the output size rounds down.  The code uses the Array API namespace ``xp`` of the input (see
:func:`normlab.backend.namespace`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from normlab.backend import check_float_array, compute_dtype, device_of, namespace
from normlab.functional.conv import (
    Geometry,
    Pair,
    col2im,
    pad_spatial,
    pair,
    window_geometry,
    windows,
)


class MaxPool2dCache(NamedTuple):
    argmax: np.ndarray  # (N, C, OH, OW) flat index of the maximum within each window: dx needs it
    geometry: Geometry
    input_shape: tuple[int, ...]
    input_dtype: np.dtype


class AvgPool2dCache(NamedTuple):
    divisor: np.ndarray  # (OH, OW) what each window's sum was divided by: dx needs it
    geometry: Geometry
    input_shape: tuple[int, ...]
    input_dtype: np.dtype


def pool_geometry(
    input_shape: tuple[int, ...],
    kernel_size: int | Pair,
    stride: int | Pair | None,
    padding: int | Pair,
    where: str,
) -> Geometry:
    """Validate pooling arguments against (N, C, H, W) ``input_shape``; ``stride=None`` means the kernel."""
    kernel = pair(kernel_size, "kernel_size", where)
    strides = kernel if stride is None else pair(stride, "stride", where)
    pads = pair(padding, "padding", where, minimum=0)
    if any(2 * p > k for p, k in zip(pads, kernel, strict=True)):
        raise ValueError(f"{where}: padding {pads} must be at most half the kernel size {kernel}")
    return window_geometry(input_shape, kernel, strides, pads, (1, 1), where)


def max_pool2d_forward(
    x: np.ndarray,
    kernel_size: int | Pair,
    stride: int | Pair | None = None,
    padding: int | Pair = 0,
) -> tuple[np.ndarray, MaxPool2dCache]:
    """Max over each window of (N, C, H, W) ``x``; returns (N, C, OH, OW) in ``x``'s dtype and the cache."""
    x = check_float_array(x, "max_pool2d")
    geo = pool_geometry(x.shape, kernel_size, stride, padding, "max_pool2d")
    xp = namespace(x)
    n, c = x.shape[:2]
    oh, ow = geo.output_hw
    flat = xp.reshape(windows(pad_spatial(x, geo.padding, -math.inf), geo), (n, c, oh, ow, -1))
    argmax = xp.argmax(flat, axis=-1)
    y = xp.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
    return y, MaxPool2dCache(argmax, geo, tuple(x.shape), x.dtype)


def max_pool2d_backward(dy: np.ndarray, cache: MaxPool2dCache) -> np.ndarray:
    """``dx`` (N, C, H, W) of :func:`max_pool2d_forward`: each window's gradient goes to its maximum."""
    expected = (*cache.input_shape[:2], *cache.geometry.output_hw)
    if tuple(dy.shape) != expected:
        raise ValueError(
            f"max_pool2d backward: expected a gradient of shape {expected}, got {dy.shape}"
        )
    kh, kw = cache.geometry.kernel
    xp = namespace(dy, cache.argmax)
    g = xp.asarray(dy, dtype=compute_dtype(cache.input_dtype, xp))
    # each window's gradient at the offset of its maximum, zero at the others
    at_max = cache.argmax[..., None] == xp.arange(kh * kw, device=device_of(g))
    dflat = xp.where(at_max, g[..., None], 0.0)
    dx = col2im(xp.reshape(dflat, (*expected, kh, kw)), cache.geometry)
    return xp.astype(dx, cache.input_dtype, copy=False)


def avg_pool2d_forward(
    x: np.ndarray,
    kernel_size: int | Pair,
    stride: int | Pair | None = None,
    padding: int | Pair = 0,
    count_include_pad: bool = True,
) -> tuple[np.ndarray, AvgPool2dCache]:
    """Mean over each window of (N, C, H, W) ``x``; returns (N, C, OH, OW) in ``x``'s dtype and the cache."""
    x = check_float_array(x, "avg_pool2d")
    geo = pool_geometry(x.shape, kernel_size, stride, padding, "avg_pool2d")
    xp = namespace(x)
    ct = compute_dtype(x.dtype, xp)
    kh, kw = geo.kernel
    win = windows(pad_spatial(xp.astype(x, ct, copy=False), geo.padding), geo)
    # each window row summed, then the row sums: the order the numba kernel adds in (equal bit for bit)
    sums = xp.sum(xp.sum(win, axis=-1), axis=-1)
    if count_include_pad:
        divisor = xp.full(geo.output_hw, kh * kw, dtype=ct, device=device_of(x))
    else:  # count the real (unpadded) input values in each window
        ones = xp.ones((1, 1, *geo.input_hw), dtype=ct, device=device_of(x))
        divisor = xp.sum(windows(pad_spatial(ones, geo.padding), geo), axis=(-2, -1))[0, 0, ...]
    y = xp.astype(sums / divisor, x.dtype, copy=False)
    return y, AvgPool2dCache(divisor, geo, tuple(x.shape), x.dtype)


def avg_pool2d_backward(dy: np.ndarray, cache: AvgPool2dCache) -> np.ndarray:
    """``dx`` (N, C, H, W) of :func:`avg_pool2d_forward`: each window value gets ``g / divisor``."""
    expected = (*cache.input_shape[:2], *cache.geometry.output_hw)
    if tuple(dy.shape) != expected:
        raise ValueError(
            f"avg_pool2d backward: expected a gradient of shape {expected}, got {dy.shape}"
        )
    xp = namespace(dy, cache.divisor)
    share = xp.asarray(dy, dtype=cache.divisor.dtype) / cache.divisor
    dwindows = xp.broadcast_to(share[..., None, None], (*expected, *cache.geometry.kernel))
    return xp.astype(col2im(dwindows, cache.geometry), cache.input_dtype, copy=False)
