"""Fused numba normalization kernels with the signatures of :mod:`normlab.functional.norm`.

Same arguments, same results (tested equal to the reference), fewer passes over memory: see
:mod:`normlab.kernels._loops` for the math of each pass.  Each ``<op>_forward`` returns ``(y, cache)`` and each
``<op>_backward(dy, cache)`` returns ``NormGrads(dx, dweight, dbias)``.

How the ops map onto the loops (x of shape (N, C, *spatial), S = the product of the spatial sizes):

==================  =============================  ==========================================================
op                  kernel view of x                statistic over / parallel over
==================  =============================  ==========================================================
batch norm, S = 1   (N, C) rows                     each column / blocks of rows, partial sums merged
batch norm, S > 1   (N, C, S) planes                each channel's N planes / channels
layer, RMS norm     (R, D) rows, D = normalized     each row / rows
group norm          (N*G, C/G*S) rows               each row, affine per channel segment / rows
instance norm       (N*C, S) rows (group norm G=C)  each row / rows; eval mode uses the batch norm planes
==================  =============================  ==========================================================

The cache keeps the input itself (no copy, unless it was not contiguous or read-only) and, per statistic, the
shift, the shifted mean and 1/std: backward recomputes the normalized input from them instead of reading a
stored one.  Do not modify the input in place between forward and backward.

The functions take validated, non-empty float32/float64 arrays: the public op validates before it dispatches,
and :func:`normlab.kernels.resolve` sends float16 and empty input to the reference (one rule, in one place).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from normlab.functional.norm import NormGrads, Shape
from normlab.kernels import _loops as L
from normlab.kernels._compile import kernel_array, threads

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class KernelNormCache:
    """What a kernel forward keeps for its backward.  ``mean``, ``var``, ``count`` and ``input_shape`` mean
    what they mean in :class:`normlab.functional.NormCache` (what layers read to update running statistics)."""

    layout: str  # "bn_rows", "bn_planes", "rows" (layer/RMS norm) or "groups" (group/instance norm)
    x: np.ndarray  # the input in the kernel's view, contiguous: backward recomputes x_c from it
    shift: np.ndarray  # per statistic, compute dtype: the value subtracted before summing
    shifted_mean: np.ndarray  # per statistic, compute dtype: mean - shift
    rstd: np.ndarray  # per statistic, compute dtype: 1 / sqrt(var + eps), 0 where var + eps == 0
    variance: (
        np.ndarray
    )  # per statistic, compute dtype: the biased variance (mean square for RMS norm)
    stats_view: Shape  # the keepdims shape of the statistics, as the reference reports them
    count: int  # how many values each statistic was taken over
    input_shape: Shape
    input_dtype: np.dtype
    weight: np.ndarray | None  # gamma, flat, compute dtype (None: no weight, dweight is None)
    param_shape: Shape | None  # the shape gamma and beta have as parameters
    has_bias: bool
    center: bool  # False for RMS norm
    input_stats: bool  # statistics came from this input (so dx has the mean and variance terms)
    groups: int  # group norm: G; instance norm: C; otherwise 1
    segment: int  # values per channel segment: S for "bn_planes" and "groups"

    @property
    def mean(self) -> np.ndarray:
        """The mean used, keepdims in the statistics view (zeros for RMS norm); made when asked for."""
        mean = self.shift + self.shifted_mean if self.center else np.zeros_like(self.shift)
        return mean.reshape(self.stats_view)

    @property
    def var(self) -> np.ndarray:
        """The biased variance used (mean square for RMS norm), keepdims in the statistics view."""
        return self.variance.reshape(self.stats_view)


def _param(p: np.ndarray | None, size: int, dtype: np.dtype, fill: float) -> np.ndarray:
    """A parameter as a flat contiguous array of the compute dtype; ``fill`` (1 or 0) when absent."""
    if p is None:
        return np.full(size, fill, dtype=dtype)
    return kernel_array(np.asarray(p, dtype=dtype).reshape(size))


def _blocks(rows: int) -> int:
    """Row blocks for the row-parallel loops: one per thread, so each thread streams one contiguous range."""
    return max(1, min(rows, threads()))


def _inverse_std(var64: np.ndarray, eps: float) -> np.ndarray:
    """1 / sqrt(var + eps) in float64: 0 where var + eps == 0, NaN where it is not finite (as the reference and
    the loops)."""
    denom = var64 + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom == 0, 0.0, np.where(np.isfinite(denom), 1.0 / np.sqrt(denom), np.nan))


def _make_cache(
    layout: str, x: np.ndarray, stats: dict[str, np.ndarray], view: Shape, **kw
) -> KernelNormCache:
    return KernelNormCache(
        layout=layout,
        x=x,
        shift=stats["shift"],
        shifted_mean=stats["shifted_mean"],
        rstd=stats["rstd"],
        variance=stats["var"],
        stats_view=view,
        **kw,
    )


def _empty_stats(size: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Per-statistic outputs of a forward kernel, as rows of one (4, size) allocation."""
    block = np.empty((4, size), dtype=dtype)
    return {"shift": block[0], "shifted_mean": block[1], "var": block[2], "rstd": block[3]}


def _param_shape(weight: np.ndarray | None, bias: np.ndarray | None) -> Shape | None:
    param = weight if weight is not None else bias
    return None if param is None else np.shape(param)


# ----------------------------------------------------------------------------------------------- batch norm
def batch_norm_forward(
    x: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    *,
    use_input_stats: bool = True,
    eps: float = 1e-5,
) -> tuple[np.ndarray, KernelNormCache]:
    """Batch norm of channels-first ``x`` (N, C, *spatial); as :func:`normlab.functional.batch_norm_forward`."""
    dt = x.dtype
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    eps = float(eps)  # one compiled signature, whatever scalar type the caller passes
    w, b = _param(weight, c, dt, 1.0), _param(bias, c, dt, 0.0)
    rows = s == 1  # (N, C): statistics per column of rows; else per channel of (N, C, S) planes
    xk = kernel_array(x).reshape((n, c) if rows else (n, c, s))
    y = np.empty_like(xk)
    if use_input_stats:
        stats = _empty_stats(c, dt)
        st = (stats["shift"], stats["shifted_mean"], stats["var"], stats["rstd"])
        if rows:
            L.bn_rows_forward_train(xk, w, b, eps, _blocks(n), y, *st)
        else:
            L.bn_planes_forward_train(xk, w, b, eps, y, *st)
    else:
        stats = _given_stats(running_mean, running_var, c, dt, eps)
        st = (stats["shift"], stats["shifted_mean"], stats["rstd"])
        if rows:
            L.bn_rows_forward_given(xk, w, b, _blocks(n), y, *st)
        else:
            L.bn_planes_forward_given(xk, w, b, *st, y)
    cache = _make_cache(
        "bn_rows" if rows else "bn_planes",
        xk,
        stats,
        (1, c) + (1,) * (x.ndim - 2),
        count=n * s,
        input_shape=x.shape,
        input_dtype=x.dtype,
        weight=None if weight is None else w,
        param_shape=_param_shape(weight, bias),
        has_bias=bias is not None,
        center=True,
        input_stats=use_input_stats,
        groups=1,
        segment=s,
    )
    return y.reshape(x.shape), cache


def _given_stats(
    mean: np.ndarray, var: np.ndarray, c: int, dt: np.dtype, eps: float
) -> dict[str, np.ndarray]:
    """Running statistics as the loops take them: shift = the mean, shifted mean 0."""
    var_t = _param(var, c, dt, 1.0)
    return {
        "shift": _param(mean, c, dt, 0.0),
        "shifted_mean": np.zeros(c, dtype=dt),
        "var": var_t,
        "rstd": _inverse_std(var_t.astype(np.float64), eps).astype(dt),
    }


def batch_norm_backward(dy: np.ndarray, cache: KernelNormCache) -> NormGrads:
    """Gradients of :func:`batch_norm_forward`: ``dx`` like ``x``, ``dweight``/``dbias`` of shape (C,)."""
    return _backward(dy, cache)


# ----------------------------------------------------------------------------------------------- layer norm
def _rows_forward(
    x: np.ndarray,
    normalized_shape: Shape,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    center: bool,
) -> tuple[np.ndarray, KernelNormCache]:
    """Layer norm (center) or RMS norm over the trailing ``normalized_shape`` axes, one row per statistic."""
    dt = x.dtype
    d = math.prod(normalized_shape)
    r = x.size // d
    eps = float(eps)
    w, b = _param(weight, d, dt, 1.0), _param(bias, d, dt, 0.0)
    xk = kernel_array(x).reshape(r, d)
    y = np.empty_like(xk)
    stats = _empty_stats(r, dt)
    L.rows_forward(
        xk, w, b, eps, center, y, stats["shift"], stats["shifted_mean"], stats["var"], stats["rstd"]
    )
    k = len(normalized_shape)
    cache = _make_cache(
        "rows",
        xk,
        stats,
        tuple(x.shape[: x.ndim - k]) + (1,) * k,
        count=d,
        input_shape=x.shape,
        input_dtype=x.dtype,
        weight=None if weight is None else w,
        param_shape=_param_shape(weight, bias),
        has_bias=bias is not None,
        center=center,
        input_stats=True,
        groups=1,
        segment=d,
    )
    return y.reshape(x.shape), cache


def layer_norm_forward(
    x: np.ndarray,
    normalized_shape: Shape,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, KernelNormCache]:
    """Layer norm over the trailing ``normalized_shape`` axes; see ``functional.layer_norm_forward``."""
    return _rows_forward(x, tuple(normalized_shape), weight, bias, eps, center=True)


def layer_norm_backward(dy: np.ndarray, cache: KernelNormCache) -> NormGrads:
    """Gradients of :func:`layer_norm_forward`; parameter gradients have ``normalized_shape``."""
    return _backward(dy, cache)


# ----------------------------------------------------------------------------------------------- RMS norm
def rms_norm_forward(
    x: np.ndarray,
    normalized_shape: Shape,
    weight: np.ndarray | None = None,
    eps: float | None = None,
) -> tuple[np.ndarray, KernelNormCache]:
    """RMS norm over the trailing ``normalized_shape`` axes; see :func:`normlab.functional.rms_norm_forward`."""
    eps = float(np.finfo(x.dtype).eps) if eps is None else eps
    return _rows_forward(x, tuple(normalized_shape), weight, None, eps, center=False)


def rms_norm_backward(dy: np.ndarray, cache: KernelNormCache) -> NormGrads:
    """Gradients of :func:`rms_norm_forward` (``dbias`` is ``None``)."""
    return _backward(dy, cache)


# ----------------------------------------------------------------------------------------------- group norm
def _groups_forward(
    x: np.ndarray,
    groups: int,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    view: Shape,
) -> tuple[np.ndarray, KernelNormCache]:
    """Statistics per (sample, group of C/G channels) over x viewed as (N*G, C/G*S); affine per channel."""
    dt = x.dtype
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    groups, eps = int(groups), float(eps)
    w, b = _param(weight, c, dt, 1.0), _param(bias, c, dt, 0.0)
    xk = kernel_array(x).reshape(n * groups, (c // groups) * s)
    y = np.empty_like(xk)
    stats = _empty_stats(n * groups, dt)
    L.groups_forward(
        xk,
        groups,
        s,
        w,
        b,
        eps,
        y,
        stats["shift"],
        stats["shifted_mean"],
        stats["var"],
        stats["rstd"],
    )
    cache = _make_cache(
        "groups",
        xk,
        stats,
        view,
        count=xk.shape[1],
        input_shape=x.shape,
        input_dtype=x.dtype,
        weight=None if weight is None else w,
        param_shape=_param_shape(weight, bias),
        has_bias=bias is not None,
        center=True,
        input_stats=True,
        groups=groups,
        segment=s,
    )
    return y.reshape(x.shape), cache


def group_norm_forward(
    x: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, KernelNormCache]:
    """Group norm of (N, C, *spatial) ``x``; see :func:`normlab.functional.group_norm_forward`."""
    return _groups_forward(x, num_groups, weight, bias, eps, (x.shape[0], num_groups, 1))


def group_norm_backward(dy: np.ndarray, cache: KernelNormCache) -> NormGrads:
    """Gradients of :func:`group_norm_forward`."""
    return _backward(dy, cache)


# ----------------------------------------------------------------------------------------------- instance norm
def instance_norm_forward(
    x: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    *,
    use_input_stats: bool = True,
    eps: float = 1e-5,
) -> tuple[np.ndarray, KernelNormCache]:
    """Instance norm of (N, C, *spatial) ``x``; see :func:`normlab.functional.instance_norm_forward`.

    With the input's statistics it is group norm with one channel per group; with given running statistics it
    is batch norm in eval mode.
    """
    if (
        not use_input_stats
    ):  # each statistic is a running one over the spatial axes, as batch norm's in eval
        y, cache = batch_norm_forward(
            x, weight, bias, running_mean, running_var, use_input_stats=False, eps=eps
        )
        return y, dataclasses.replace(cache, count=math.prod(x.shape[2:]))
    n, c = x.shape[:2]
    return _groups_forward(x, c, weight, bias, eps, (n, c) + (1,) * (x.ndim - 2))


def instance_norm_backward(dy: np.ndarray, cache: KernelNormCache) -> NormGrads:
    """Gradients of :func:`instance_norm_forward`."""
    return _backward(dy, cache)


# ----------------------------------------------------------------------------------------------- backward
def _backward(dy: np.ndarray, cache: KernelNormCache) -> NormGrads:
    """Closed-form gradients for every layout: one pass reducing Σdy and Σdy·x_c, one pass writing dx."""
    xk = cache.x
    dt = xk.dtype
    g = kernel_array(dy.astype(dt, copy=False)).reshape(xk.shape)
    dx = np.empty_like(xk)
    w = cache.weight if cache.weight is not None else np.ones(_param_size(cache), dtype=dt)
    dweight = np.empty(w.shape[0])
    dbias = np.empty(w.shape[0])
    st = (cache.shift, cache.shifted_mean, cache.rstd)
    if cache.layout == "bn_rows":
        L.bn_rows_backward(
            g, xk, *st, w, cache.input_stats, _blocks(xk.shape[0]), dx, dweight, dbias
        )
    elif cache.layout == "bn_planes":
        L.bn_planes_backward(g, xk, *st, w, cache.input_stats, dx, dweight, dbias)
    elif cache.layout == "rows":
        L.rows_backward(g, xk, *st, w, cache.center, _blocks(xk.shape[0]), dx, dweight, dbias)
    else:
        L.groups_backward(g, xk, cache.groups, cache.segment, *st, w, dx, dweight, dbias)
    return NormGrads(
        dx.reshape(cache.input_shape),
        None if cache.weight is None else dweight.astype(dt).reshape(cache.param_shape),
        dbias.astype(dt).reshape(cache.param_shape) if cache.has_bias else None,
    )


def _param_size(cache: KernelNormCache) -> int:
    """How many weights the op has: D for rows, C otherwise (a group row holds C/G channel segments)."""
    if cache.layout == "groups":
        return cache.x.shape[1] // cache.segment * cache.groups
    return cache.x.shape[1]
