r"""2-D convolution (cross-correlation, as in every deep learning framework) by im2col.

**im2col.**  Zero-pad the input (N, C, H, W) by ``padding``, then gather every receptive field as a window,
shape (N, C, OH, OW, KH, KW): the entries of all windows at kernel offset (i, j) are one slice of the padded
input, strided by the stride and starting at the offset times the dilation, so the KH·KW slices stacked are
the windows.  Laid out as rows of a matrix ``cols`` of shape (N·OH·OW, C·KH·KW), the convolution is one matrix
product with the filters flattened to ``W`` of shape (OC, C·KH·KW):

.. math::

    y = \mathrm{cols}\, W^\top + b, \qquad
    \frac{\partial L}{\partial W} = g^\top \mathrm{cols}, \qquad
    \frac{\partial L}{\partial b} = \textstyle\sum_{\text{rows}} g, \qquad
    \frac{\partial L}{\partial \mathrm{cols}} = g\, W

with :math:`g` the output gradient laid out as rows (N·OH·OW, OC).

**col2im.**  Every input pixel appears in several windows, so its gradient is the *sum* over the windows that
contain it.  For each kernel offset (i, j) the windows' entries at that offset form a strided slice of the
padded input; adding the window gradients slice by slice (KH·KW vectorized additions, no loop over pixels)
accumulates exactly that sum.  Cropping the padding gives ``dx``.

Output size per spatial axis: ``(size + 2·padding - dilation·(kernel - 1) - 1) // stride + 1``.  The pooling
ops in :mod:`normlab.functional.pool` reuse the same windows and col2im.

Everything here uses the Array API namespace ``xp`` of the input (NumPy, CuPy, ...; see
:func:`normlab.backend.namespace`): slicing, stacking and matrix products are all in the standard.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normlab.backend import check_float_array, compute_dtype, device_of, namespace

Pair = tuple[int, int]


def pair(value: int | tuple[int, int], name: str, where: str, minimum: int = 1) -> Pair:
    """``value`` as an (h, w) pair of ints, each >= ``minimum``; ``ValueError`` naming ``where`` otherwise."""
    items = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(items) != 2 or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum for v in items
    ):
        raise ValueError(
            f"{where}: {name} must be an int or a pair of ints >= {minimum}, got {value!r}"
        )
    return int(items[0]), int(items[1])


class Geometry(NamedTuple):
    """Where the windows of a convolution or pooling lie on its input."""

    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    input_hw: Pair
    output_hw: Pair

    @property
    def padded_hw(self) -> Pair:
        (h, w), (ph, pw) = self.input_hw, self.padding
        return h + 2 * ph, w + 2 * pw


def window_geometry(
    input_shape: tuple[int, ...],
    kernel: Pair,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    where: str,
) -> Geometry:
    """Check that the (dilated) kernel fits in the padded (N, C, H, W) input and compute the output size."""
    if len(input_shape) != 4:
        raise ValueError(
            f"{where}: expected 4-D input (N, C, H, W), got shape {tuple(input_shape)}"
        )
    hw = (int(input_shape[2]), int(input_shape[3]))
    out = []
    for axis, n, k, s, p, d in zip("HW", hw, kernel, stride, padding, dilation, strict=True):
        span = d * (k - 1) + 1  # extent of the dilated kernel
        if n + 2 * p < span:
            raise ValueError(
                f"{where}: kernel extent {span} along {axis} (kernel {k}, dilation {d}) is larger than "
                f"the padded input ({n} + 2·{p} = {n + 2 * p}); input shape {tuple(input_shape)}"
            )
        out.append((n + 2 * p - span) // s + 1)
    return Geometry(kernel, stride, padding, dilation, hw, (out[0], out[1]))


def pad_spatial(x: np.ndarray, padding: Pair, value: float = 0.0) -> np.ndarray:
    """Pad the last two axes of (N, C, H, W) ``x`` by ``padding`` on each side with ``value``."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = namespace(x)
    n, c, h, w = x.shape
    padded = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype, device=device_of(x))
    padded[:, :, ph : ph + h, pw : pw + w] = x
    return padded


def windows(padded: np.ndarray, geo: Geometry) -> np.ndarray:
    """Every receptive field of ``padded`` (N, C, Hp, Wp), as an array (N, C, OH, OW, KH, KW)."""
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    oh, ow = geo.output_hw
    xp = namespace(padded)
    # kernel offset (i, j) of every window: one slice of the input, strided by the stride
    at_offset = [
        padded[
            :, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw
        ]
        for i in range(kh)
        for j in range(kw)
    ]
    return xp.reshape(xp.stack(at_offset, axis=-1), (*padded.shape[:2], oh, ow, kh, kw))


def col2im(dwindows: np.ndarray, geo: Geometry) -> np.ndarray:
    """Sum window gradients (N, C, OH, OW, KH, KW) back onto the input positions they came from.

    Returns the gradient with respect to the *unpadded* input, shape (N, C, H, W).
    """
    n, c = dwindows.shape[:2]
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    oh, ow = geo.output_hw
    hp, wp = geo.padded_hw
    xp = namespace(dwindows)
    dpadded = xp.zeros((n, c, hp, wp), dtype=dwindows.dtype, device=device_of(dwindows))
    for i in range(kh):
        for j in range(kw):
            # the input rows/columns that kernel offset (i, j) touches, one per output position
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            dpadded[:, :, rows, cols] += dwindows[:, :, :, :, i, j]
    (ph, pw), (h, w) = geo.padding, geo.input_hw
    return xp.reshape(dpadded[:, :, ph : ph + h, pw : pw + w], (n, c, h, w), copy=True)


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs."""

    cols: np.ndarray  # (N·OH·OW, C·KH·KW) receptive fields, compute dtype: dW needs them
    weight_matrix: np.ndarray  # (OC, C·KH·KW), compute dtype: dx needs it
    weight_shape: tuple[int, int, int, int]
    geometry: Geometry
    input_shape: tuple[int, int, int, int]
    input_dtype: np.dtype
    has_bias: bool


class Conv2dGrads(NamedTuple):
    dx: np.ndarray | None  # (N, C, H, W); None when not asked for (input_grad=False)
    dweight: np.ndarray  # (OC, C, KH, KW)
    dbias: np.ndarray | None  # (OC,)


def conv2d_geometry(
    x: np.ndarray,
    weight_shape: tuple[int, ...],
    stride: int | Pair,
    padding: int | Pair,
    dilation: int | Pair,
) -> Geometry:
    """Check that (N, C, H, W) ``x`` fits filters of ``weight_shape`` (OC, C, KH, KW) and return the window
    geometry (what both the reference and the fast conv index by)."""
    _, in_channels, kh, kw = weight_shape
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"conv2d: expected input of shape (N, {in_channels}, H, W), got shape {tuple(x.shape)}"
        )
    return window_geometry(
        x.shape,
        (kh, kw),
        pair(stride, "stride", "conv2d"),
        pair(padding, "padding", "conv2d", minimum=0),
        pair(dilation, "dilation", "conv2d"),
        "conv2d",
    )


def conv2d_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
) -> tuple[np.ndarray, Conv2dCache]:
    """Convolve (N, C, H, W) ``x`` with filters ``weight`` (OC, C, KH, KW) plus ``bias`` (OC,).

    Returns ``y`` of shape (N, OC, OH, OW) in ``x``'s dtype, and the cache for :func:`conv2d_backward`.
    Zero padding; no groups.
    """
    x = check_float_array(x, "conv2d")
    out_channels, in_channels, kh, kw = weight.shape
    geo = conv2d_geometry(x, weight.shape, stride, padding, dilation)
    xp = namespace(x, weight, bias)
    ct = compute_dtype(x.dtype, xp)
    n = x.shape[0]
    oh, ow = geo.output_hw
    win = windows(pad_spatial(xp.astype(x, ct, copy=False), geo.padding), geo)
    cols = xp.permute_dims(win, (0, 2, 3, 1, 4, 5))
    cols = xp.reshape(cols, (n * oh * ow, in_channels * kh * kw))
    w = xp.reshape(xp.astype(weight, ct, copy=False), (out_channels, -1))
    rows = cols @ w.T  # (N·OH·OW, OC)
    if bias is not None:
        rows += xp.astype(bias, ct, copy=False)
    y = xp.permute_dims(xp.reshape(rows, (n, oh, ow, out_channels)), (0, 3, 1, 2))
    y = xp.reshape(xp.astype(y, x.dtype, copy=False), y.shape, copy=True)  # a row-major copy
    cache = Conv2dCache(
        cols, w, tuple(weight.shape), geo, tuple(x.shape), x.dtype, bias is not None
    )
    return y, cache


def conv2d_backward(dy: np.ndarray, cache: Conv2dCache, input_grad: bool = True) -> Conv2dGrads:
    """Gradients of :func:`conv2d_forward` for ``dy`` of shape (N, OC, OH, OW).

    ``input_grad=False`` skips ``dx`` (returned as ``None``) and with it col2im, the costly part.
    """
    out_channels, in_channels, kh, kw = cache.weight_shape
    n = cache.input_shape[0]
    oh, ow = cache.geometry.output_hw
    if tuple(dy.shape) != (n, out_channels, oh, ow):
        raise ValueError(
            f"conv2d backward: expected a gradient of shape {(n, out_channels, oh, ow)}, got {dy.shape}"
        )
    xp = namespace(dy, cache.weight_matrix)
    ct = cache.weight_matrix.dtype
    g = xp.permute_dims(xp.asarray(dy, dtype=ct), (0, 2, 3, 1))
    g = xp.reshape(g, (-1, out_channels))  # (N·OH·OW, OC)
    dweight = xp.reshape(g.T @ cache.cols, cache.weight_shape)
    dbias = xp.sum(g, axis=0) if cache.has_bias else None
    if not input_grad:
        return Conv2dGrads(None, dweight, dbias)
    dcols = xp.reshape(g @ cache.weight_matrix, (n, oh, ow, in_channels, kh, kw))
    dx = col2im(xp.permute_dims(dcols, (0, 3, 1, 2, 4, 5)), cache.geometry)
    return Conv2dGrads(xp.astype(dx, cache.input_dtype, copy=False), dweight, dbias)
