"""Fused CUDA normalization ops with the signatures and results of :mod:`normlab.functional.norm`.

Each ``<op>_forward`` returns ``(y, cache)`` and each ``<op>_backward(dy, cache)`` returns
``NormGrads(dx, dweight, dbias)``, on CuPy arrays (NumPy arrays under numba-cuda's simulator).  Parameters
and running statistics may be given as NumPy arrays too: they are copied to the device (they are small).

Batch norm, training (three launches forward, three backward; x read twice forward, twice backward):

1. partial sums, grid (C, P): block (c, p) accumulates Σd and Σd² (d = x - shift_c, shift_c one sample of
   channel c) over the p-th of P slices of the channel, in float64;
2. finalize, one thread per channel: mean, variance, 1/std, and γ, β folded into one scale and offset;
3. apply, elementwise: ``y = (x - shift_c) * scale_c + offset_c``.

Subtracting the shift before scaling (instead of ``y = x * scale + offset``) costs one subtraction per
element and keeps large-mean channels exact: with mean 1e4 and std 1 in float32, ``x * scale`` and
``offset`` would both be about 1e4 and their sum would lose three decimal digits of y.

Backward mirrors it: partial sums Σdy and Σdy·d, a finalize giving dβ = Σdy, dγ = Σdy·x̂ and three
coefficients per channel, and one elementwise pass ``dx = k_dy dy + k_d (x - shift) + k_0``.  Eval mode
(running statistics) is the same apply pass with the running mean as shift.

Layouts: a C-contiguous (N, C, *spatial) input uses the (N, C, S) plane kernels; a channels-last input (an
(N, C, H, W) array whose memory is N, H, W, C, e.g. ``x_nhwc.transpose(0, 3, 1, 2)``) and (N, C) input use
the (M, C) row kernels, with coalesced loads along the channels; the output has the input's layout.

Layer, RMS, group and instance norm: one block per row of the statistics view ((R, D) for layer/RMS norm,
(N*G, C/G*S) for group norm, (N*C, S) for instance norm); forward computes the row's shifted sums and then
writes the row; backward reduces Σγdy and Σγdy·d per row and writes dx.  Parameter gradients: a two-stage
column reduction for layer/RMS norm, per-(sample, channel) segment sums from the row kernel for group and
instance norm.

Dtypes: float16, float32, float64 and bfloat16 input; statistics and arithmetic in float32 (float64 for
float64 input), sums in float64; y and dx have the input's dtype, statistics and parameter gradients the
compute dtype, as in the reference.  Empty input is rejected.  bfloat16 arrays are ml_dtypes.bfloat16 (what
CuPy >= 14 uses); numba-cuda (0.30) maps them to its own bfloat16 type on devices of compute capability >= 8.0;
the simulator reports no bfloat16 support but runs the kernels on such arrays (tests/gpu does).  Every kernel compiles to
PTX for sm_90 in all four dtypes (tests/gpu/ptx_check.py); none has yet run on a real GPU.

Status: correct against the reference under numba-cuda's simulator; not yet timed on a GPU.  Each forward and
each backward is three numba launches plus a few CuPy allocations; on small tensors the host-side launch cost
(tens of microseconds) may dominate, which benchmarks/gpu.py will show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

from normlab.functional.checks import input_stats_flag
from normlab.functional.norm import NormGrads, Shape
from normlab.kernels.cuda import _device
from normlab.kernels.cuda._build import kernels as _build_kernels


@dataclass(frozen=True)
class CudaNormCache:
    """What a CUDA forward keeps for its backward; ``mean``, ``var``, ``count`` and ``input_shape`` mean what
    they mean in :class:`normlab.functional.NormCache`.  Holds the input itself (no copy): do not modify it
    in place between forward and backward."""

    layout: str  # "bn_planes" (N, C, S), "bn_rows" (M, C), "rows" (layer/RMS norm), "groups" (group/instance)
    x: Any  # the input in the kernel's view
    shift: Any  # per statistic, compute dtype
    dmean: Any  # per statistic: mean - shift
    variance: Any  # per statistic: biased variance (mean square for RMS norm)
    rstd: Any  # per statistic: 1 / sqrt(var + eps), 0 where var + eps <= 0
    stats_view: Shape
    count: int
    input_shape: Shape
    input_dtype: np.dtype
    channels_last: bool  # the input (and y, dx) are (N, C, *spatial) with channels-last memory
    weight: Any  # gamma, flat, compute dtype, or None
    param_shape: Shape | None
    has_bias: bool
    center: bool
    input_stats: bool
    groups: int
    segment: int

    @property
    def mean(self) -> Any:
        """The mean used, keepdims in the statistics view (zeros for RMS norm)."""
        mean = self.shift + self.dmean if self.center else self.shift * 0
        return mean.reshape(self.stats_view)

    @property
    def var(self) -> Any:
        return self.variance.reshape(self.stats_view)


# ---------------------------------------------------------------------------------------------- helpers
def _check_input(x: Any, where: str) -> ModuleType:
    xp = _device.namespace(x, where)
    if x.dtype not in _device.float_dtypes():
        names = ", ".join(str(d) for d in _device.float_dtypes())
        raise TypeError(
            f"{where}: expected a floating-point input ({names}), got dtype {x.dtype} with shape "
            f"{tuple(x.shape)}"
        )
    if x.size == 0:
        raise ValueError(
            f"{where}: empty input of shape {tuple(x.shape)}; the CUDA kernels need at least one value "
            "per statistic (the reference normlab.functional handles empty input)"
        )
    return xp


def _kernels(dtype: np.dtype) -> SimpleNamespace:
    cfg = _device.config()
    return _build_kernels(str(_device.compute_dtype(dtype)), cfg.threads, cfg.tile_x, cfg.tile_y)


def _param(xp: ModuleType, p: Any, size: int, ct: np.dtype, fill: float, where: str) -> Any:
    """A parameter as a flat contiguous device array of the compute dtype; ``fill`` when absent."""
    if p is None:
        return xp.full(size, fill, dtype=ct)
    if math.prod(np.shape(p)) != size:
        raise ValueError(f"{where}: expected a parameter of {size} values, got shape {np.shape(p)}")
    return xp.ascontiguousarray(xp.asarray(p, dtype=ct).reshape(size))


def _param_shape(weight: Any, bias: Any) -> Shape | None:
    param = weight if weight is not None else bias
    return None if param is None else tuple(np.shape(param))


def _channel_view(c: int, ndim: int) -> Shape:
    return (1, c) + (1,) * (ndim - 2)


def _is_channels_last(xp: ModuleType, x: Any) -> bool:
    return x.ndim > 2 and not x.flags.c_contiguous and xp.moveaxis(x, 1, -1).flags.c_contiguous


def _to_kernel_view(xp: ModuleType, a: Any, layout: str, channels_last: bool, shape: Shape) -> Any:
    """``a`` (logical shape (N, C, *spatial) or (N, C)) as the kernel's contiguous view for ``layout``."""
    n, c = a.shape[:2]
    if channels_last:
        return xp.ascontiguousarray(xp.moveaxis(a, 1, -1)).reshape(-1, c)
    a = xp.ascontiguousarray(a)
    return a.reshape(n, c) if layout == "bn_rows" else a.reshape(shape)


def _from_kernel_view(xp: ModuleType, a: Any, input_shape: Shape, channels_last: bool) -> Any:
    if channels_last:
        n, c = input_shape[:2]
        return xp.moveaxis(a.reshape((n, *input_shape[2:], c)), -1, 1)
    return a.reshape(input_shape)


def _check_gradient(dy: Any, cache: CudaNormCache) -> ModuleType:
    xp = _device.namespace(dy, "normalization backward", "gradient")
    if dy.dtype not in _device.float_dtypes():
        raise TypeError(
            f"normalization backward: expected a floating-point gradient, got dtype {dy.dtype}"
        )
    if tuple(dy.shape) != tuple(cache.input_shape):
        raise ValueError(
            f"normalization backward: expected a gradient of shape {cache.input_shape}, got "
            f"{tuple(dy.shape)}"
        )
    return xp


# ---------------------------------------------------------------------------------------------- batch norm
def batch_norm_forward(
    x: Any,
    weight: Any = None,
    bias: Any = None,
    running_mean: Any = None,
    running_var: Any = None,
    *,
    use_input_stats: bool | None = None,
    eps: float = 1e-5,
    training: bool | None = None,
) -> tuple[Any, CudaNormCache]:
    """Batch norm of (N, C, *spatial) ``x`` on the GPU; as :func:`normlab.functional.batch_norm_forward`
    (the same flag, ``use_input_stats=`` or PyTorch's ``training=``).

    NCHW-contiguous and channels-last inputs are both read in place; y has the input's layout.  The cache's
    ``mean``/``var`` (shape (1, C, 1...)) are what the caller averages into the running statistics (see
    :func:`update_running_stats`).
    """
    xp = _check_input(x, "batch_norm")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected input of shape (N, C, *), got shape {x.shape}")
    training, flag = input_stats_flag(use_input_stats, training, "batch_norm")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"batch_norm: {flag}=False needs running_mean and running_var")
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    ct = _device.compute_dtype(x.dtype)
    w = _param(xp, weight, c, ct, 1.0, "batch_norm weight")
    b = _param(xp, bias, c, ct, 0.0, "batch_norm bias")
    channels_last = _is_channels_last(xp, x)
    layout = "bn_rows" if channels_last or s == 1 else "bn_planes"
    xk = _to_kernel_view(xp, x, layout, channels_last, (n, c, s))
    if training:
        stats = _bn_train_stats(xp, xk, layout, w, b, ct, n * s, float(eps))
    else:
        stats = _bn_given_stats(xp, xk, running_mean, running_var, w, b, ct, float(eps))
    y = xp.empty(xk.shape, dtype=x.dtype)
    _bn_apply(xk, layout, stats.shift, stats.scale, stats.offset, y)
    cache = CudaNormCache(
        layout=layout,
        x=xk,
        shift=stats.shift,
        dmean=stats.dmean,
        variance=stats.var,
        rstd=stats.rstd,
        stats_view=_channel_view(c, x.ndim),
        count=n * s,
        input_shape=tuple(x.shape),
        input_dtype=x.dtype,
        channels_last=channels_last,
        weight=None if weight is None else w,
        param_shape=_param_shape(weight, bias),
        has_bias=bias is not None,
        center=True,
        input_stats=training,
        groups=1,
        segment=1 if layout == "bn_rows" else s,
    )
    return _from_kernel_view(xp, y, cache.input_shape, channels_last), cache


def _launch_bn_partial(
    xk: Any, dy: Any, layout: str, shift: Any, backward: bool, xp: ModuleType
) -> tuple[Any, Any]:
    """Stage one of the batch norm reductions: per (channel, slice) float64 sums, shape (C, P) each."""
    cfg = _device.config()
    k = _kernels(xk.dtype)
    c = xk.shape[1]
    if layout == "bn_planes":
        total = xk.shape[0] * xk.shape[2]
        p = _device.slices(total, c, cfg.threads)
        out_a, out_b = xp.empty((2, c, p), dtype=np.float64)
        k.planes_partial[(c, p), cfg.threads](xk, dy, shift, backward, out_a, out_b)
    else:
        p = _device.slices(xk.shape[0], math.ceil(c / cfg.tile_x), cfg.tile_y)
        out_a, out_b = xp.empty((2, c, p), dtype=np.float64)
        grid = (math.ceil(c / cfg.tile_x), p)
        k.rows_partial[grid, (cfg.tile_x, cfg.tile_y)](xk, dy, shift, backward, out_a, out_b)
    return out_a, out_b


def _first_sample(xp: ModuleType, xk: Any, layout: str, ct: np.dtype) -> Any:
    """Each channel's first value: the shift of its sums (the reference shifts by the same value)."""
    first = xk[0, :, 0] if layout == "bn_planes" else xk[0, :]
    return xp.ascontiguousarray(first.astype(ct))


def _bn_train_stats(
    xp: ModuleType, xk: Any, layout: str, w: Any, b: Any, ct: np.dtype, count: int, eps: float
) -> SimpleNamespace:
    c = xk.shape[1]
    shift = _first_sample(xp, xk, layout, ct)
    part_a, part_b = _launch_bn_partial(xk, xk, layout, shift, False, xp)
    dmean, var, rstd, scale, offset = xp.empty((5, c), dtype=ct)
    threads = _device.config().threads
    _kernels(xk.dtype).bn_finalize_forward[math.ceil(c / threads), threads](
        part_a, part_b, float(count), eps, w, b, dmean, var, rstd, scale, offset
    )
    return SimpleNamespace(shift=shift, dmean=dmean, var=var, rstd=rstd, scale=scale, offset=offset)


def _bn_given_stats(
    xp: ModuleType,
    xk: Any,
    running_mean: Any,
    running_var: Any,
    w: Any,
    b: Any,
    ct: np.dtype,
    eps: float,
) -> SimpleNamespace:
    c = xk.shape[1]
    shift = _param(xp, running_mean, c, ct, 0.0, "batch_norm running_mean")
    var = _param(xp, running_var, c, ct, 1.0, "batch_norm running_var")
    rstd, scale, offset = xp.empty((3, c), dtype=ct)
    threads = _device.config().threads
    _kernels(xk.dtype).bn_finalize_given[math.ceil(c / threads), threads](
        var, eps, w, b, rstd, scale, offset
    )
    return SimpleNamespace(
        shift=shift, dmean=xp.zeros(c, dtype=ct), var=var, rstd=rstd, scale=scale, offset=offset
    )


def _outer_inner(a: Any, layout: str) -> Any:
    """The apply kernels' 2-D view: (N*C, S) planes, or the (M, C) rows themselves."""
    return a if layout == "bn_rows" else a.reshape(a.shape[0] * a.shape[1], a.shape[2])


def _apply_grid(outer: int) -> int:
    return max(1, min(outer, _device.config().max_elementwise_blocks))


def _bn_apply(xk: Any, layout: str, shift: Any, scale: Any, offset: Any, y: Any) -> None:
    x2 = _outer_inner(xk, layout)
    _kernels(xk.dtype).bn_apply_forward[_apply_grid(x2.shape[0]), _device.config().threads](
        x2, shift, scale, offset, xk.shape[1], layout == "bn_planes", _outer_inner(y, layout)
    )


def batch_norm_backward(dy: Any, cache: CudaNormCache) -> NormGrads:
    """Gradients of :func:`batch_norm_forward`: dx like x (same layout), dweight/dbias of shape (C,)."""
    return _backward(dy, cache)


def _backward(dy: Any, cache: CudaNormCache) -> NormGrads:
    """The backward for whichever forward made ``cache`` (every op's gradient is the same closed form)."""
    if not isinstance(cache, CudaNormCache):
        raise TypeError(
            f"normalization backward: expected the cache of a normlab.kernels.cuda forward, got "
            f"{type(cache).__name__}"
        )
    if cache.layout in ("rows", "groups"):
        return _row_backward(dy, cache)
    return _bn_backward(dy, cache)


def _bn_backward(dy: Any, cache: CudaNormCache) -> NormGrads:
    xp = _check_gradient(dy, cache)
    xk = cache.x
    c = xk.shape[1]
    ct = _device.compute_dtype(cache.input_dtype)
    dyk = _to_kernel_view(xp, dy, cache.layout, cache.channels_last, xk.shape)
    part_a, part_b = _launch_bn_partial(xk, dyk, cache.layout, cache.shift, True, xp)
    w = cache.weight if cache.weight is not None else xp.ones(c, dtype=ct)
    dweight, dbias, k_dy, k_d, k_0 = xp.empty((5, c), dtype=ct)
    threads = _device.config().threads
    k = _kernels(cache.input_dtype)
    k.bn_finalize_backward[math.ceil(c / threads), threads](
        part_a,
        part_b,
        float(cache.count),
        cache.dmean,
        cache.rstd,
        w,
        cache.input_stats,
        dweight,
        dbias,
        k_dy,
        k_d,
        k_0,
    )
    dx = xp.empty(xk.shape, dtype=cache.input_dtype)
    x2 = _outer_inner(xk, cache.layout)
    k.bn_apply_backward[_apply_grid(x2.shape[0]), threads](
        x2,
        _outer_inner(dyk, cache.layout),
        cache.shift,
        k_dy,
        k_d,
        k_0,
        c,
        cache.layout == "bn_planes",
        _outer_inner(dx, cache.layout),
    )
    return _grads(xp, dx, dweight, dbias, cache)


def _grads(xp: ModuleType, dx: Any, dweight: Any, dbias: Any, cache: CudaNormCache) -> NormGrads:
    return NormGrads(
        _from_kernel_view(xp, dx, cache.input_shape, cache.channels_last),
        None if cache.weight is None else dweight.reshape(cache.param_shape),
        dbias.reshape(cache.param_shape) if cache.has_bias else None,
    )


def update_running_stats(
    running_mean: Any, running_var: Any, cache: CudaNormCache, factor: float, unbiased: bool = True
) -> tuple[Any, Any]:
    """New running statistics ``(1 - f) r + f b`` from a training forward's cache (PyTorch's form; the
    variance unbiased unless ``unbiased=False``); arrays of the cache's device and the running dtype.
    The same numbers as :func:`normlab.functional.update_running_stats` on the reference's statistics."""
    xp = _device.namespace(cache.shift, "update_running_stats", "cache")
    if not cache.input_stats:
        raise ValueError("update_running_stats: the cache holds running statistics, not a batch's")
    if unbiased and cache.count < 2:
        raise ValueError(
            f"an unbiased variance needs at least 2 values per statistic, got {cache.count}"
        )
    rm, rv = xp.asarray(running_mean), xp.asarray(running_var)
    ct = np.result_type(rm.dtype, np.float32)
    batch_var = cache.variance * (cache.count / (cache.count - 1)) if unbiased else cache.variance
    mean = cache.shift + cache.dmean
    new_mean = (1 - factor) * rm.astype(ct) + factor * mean.reshape(rm.shape).astype(ct)
    new_var = (1 - factor) * rv.astype(ct) + factor * batch_var.reshape(rv.shape).astype(ct)
    return new_mean.astype(rm.dtype), new_var.astype(rv.dtype)


# ---------------------------------------------------------------------------------------------- per-row norms
def _row_forward(
    x: Any,
    xp: ModuleType,
    rows_shape: Shape,
    groups: int,
    s_len: int,
    weight: Any,
    bias: Any,
    n_params: int,
    eps: float,
    center: bool,
    layout: str,
    stats_view: Shape,
    where: str,
) -> tuple[Any, CudaNormCache]:
    """Statistics per row of ``x`` viewed as ``rows_shape``; affine index ``(r % groups) * D/s_len + j // s_len``."""
    ct = _device.compute_dtype(x.dtype)
    w = _param(xp, weight, n_params, ct, 1.0, f"{where} weight")
    b = _param(xp, bias, n_params, ct, 0.0, f"{where} bias")
    xk = xp.ascontiguousarray(x).reshape(rows_shape)
    rows = rows_shape[0]
    shift, dmean, var, rstd = xp.empty((4, rows), dtype=ct)
    y = xp.empty(rows_shape, dtype=x.dtype)
    cfg = _device.config()
    grid = max(1, min(rows, cfg.max_elementwise_blocks))
    _kernels(x.dtype).row_forward[grid, cfg.threads](
        xk, groups, s_len, w, b, float(eps), center, y, shift, dmean, var, rstd
    )
    cache = CudaNormCache(
        layout=layout,
        x=xk,
        shift=shift,
        dmean=dmean,
        variance=var,
        rstd=rstd,
        stats_view=stats_view,
        count=rows_shape[1],
        input_shape=tuple(x.shape),
        input_dtype=x.dtype,
        channels_last=False,
        weight=None if weight is None else w,
        param_shape=_param_shape(weight, bias),
        has_bias=bias is not None,
        center=center,
        input_stats=True,
        groups=groups,
        segment=s_len,
    )
    return y.reshape(x.shape), cache


def _row_backward(dy: Any, cache: CudaNormCache) -> NormGrads:
    """dx one row per block; parameter gradients by column sums (rows) or segment sums (groups)."""
    xp = _check_gradient(dy, cache)
    xk = cache.x
    rows, d_len = xk.shape
    per_group = d_len // cache.segment
    n_params = per_group * cache.groups if cache.layout == "groups" else d_len
    ct = _device.compute_dtype(cache.input_dtype)
    w = cache.weight if cache.weight is not None else xp.ones(n_params, dtype=ct)
    dyk = xp.ascontiguousarray(dy).reshape(xk.shape)
    dx = xp.empty(xk.shape, dtype=cache.input_dtype)
    cfg = _device.config()
    k = _kernels(cache.input_dtype)
    seg_cols = per_group if cache.layout == "groups" else 0
    seg_dy, seg_dy_d = xp.zeros((2, rows, seg_cols), dtype=np.float64)
    grid = max(1, min(rows, cfg.max_elementwise_blocks))
    k.row_backward[grid, cfg.threads](
        xk,
        dyk,
        cache.groups,
        cache.segment,
        w,
        cache.shift,
        cache.dmean,
        cache.rstd,
        cache.center,
        dx,
        seg_dy,
        seg_dy_d,
    )
    if cache.layout == "groups":
        n = rows // cache.groups
        shape = (n, cache.groups, per_group)
        rstd = cache.rstd.astype(np.float64).reshape(n, cache.groups, 1)
        dmean = cache.dmean.astype(np.float64).reshape(n, cache.groups, 1)
        sum_dy = seg_dy.reshape(shape)
        dbias = sum_dy.sum(axis=0).reshape(-1)
        dweight = (rstd * (seg_dy_d.reshape(shape) - dmean * sum_dy)).sum(axis=0).reshape(-1)
    else:
        p = _device.slices(rows, math.ceil(d_len / cfg.tile_x), cfg.tile_y)
        part_a, part_b = xp.empty((2, d_len, p), dtype=np.float64)
        k.column_param_partial[(math.ceil(d_len / cfg.tile_x), p), (cfg.tile_x, cfg.tile_y)](
            xk, dyk, cache.shift, cache.dmean, cache.rstd, part_a, part_b
        )
        dbias, dweight = part_a.sum(axis=1), part_b.sum(axis=1)
    return _grads(xp, dx, dweight.astype(ct), dbias.astype(ct), cache)


def _check_trailing(x: Any, normalized_shape: Shape, where: str) -> None:
    k = len(normalized_shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k :]) != tuple(normalized_shape):
        raise ValueError(
            f"{where}: expected input ending in {tuple(normalized_shape)}, got shape {x.shape}"
        )


def layer_norm_forward(
    x: Any, normalized_shape: Shape, weight: Any = None, bias: Any = None, eps: float = 1e-5
) -> tuple[Any, CudaNormCache]:
    """Layer norm over the trailing ``normalized_shape`` axes; as :func:`normlab.functional.layer_norm_forward`."""
    xp = _check_input(x, "layer_norm")
    normalized_shape = tuple(normalized_shape)
    _check_trailing(x, normalized_shape, "layer_norm")
    d = math.prod(normalized_shape)
    k = len(normalized_shape)
    view = tuple(x.shape[: x.ndim - k]) + (1,) * k
    return _row_forward(
        x, xp, (x.size // d, d), 1, 1, weight, bias, d, eps, True, "rows", view, "layer_norm"
    )


def layer_norm_backward(dy: Any, cache: CudaNormCache) -> NormGrads:
    """Gradients of :func:`layer_norm_forward`; parameter gradients have ``normalized_shape``."""
    return _backward(dy, cache)


def rms_norm_forward(
    x: Any, normalized_shape: Shape, weight: Any = None, eps: float | None = None
) -> tuple[Any, CudaNormCache]:
    """RMS norm over the trailing axes (``eps=None``: the dtype's machine epsilon, as the reference)."""
    xp = _check_input(x, "rms_norm")
    normalized_shape = tuple(normalized_shape)
    _check_trailing(x, normalized_shape, "rms_norm")
    d = math.prod(normalized_shape)
    k = len(normalized_shape)
    view = tuple(x.shape[: x.ndim - k]) + (1,) * k
    eps = float(np.finfo(x.dtype).eps) if eps is None else eps
    return _row_forward(
        x, xp, (x.size // d, d), 1, 1, weight, None, d, eps, False, "rows", view, "rms_norm"
    )


def rms_norm_backward(dy: Any, cache: CudaNormCache) -> NormGrads:
    """Gradients of :func:`rms_norm_forward` (``dbias`` is ``None``)."""
    return _backward(dy, cache)


def group_norm_forward(
    x: Any, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5
) -> tuple[Any, CudaNormCache]:
    """Group norm of (N, C, *spatial) ``x``; as :func:`normlab.functional.group_norm_forward`."""
    xp = _check_input(x, "group_norm")
    if x.ndim < 2 or num_groups < 1 or x.shape[1] % num_groups != 0:
        raise ValueError(
            f"group_norm: expected input (N, C, *) with C divisible by num_groups={num_groups}, "
            f"got shape {x.shape}"
        )
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    rows_shape = (n * num_groups, (c // num_groups) * s)
    view = (n, num_groups, 1)
    return _row_forward(
        x, xp, rows_shape, num_groups, s, weight, bias, c, eps, True, "groups", view, "group_norm"
    )


def group_norm_backward(dy: Any, cache: CudaNormCache) -> NormGrads:
    """Gradients of :func:`group_norm_forward`."""
    return _backward(dy, cache)


def instance_norm_forward(
    x: Any,
    weight: Any = None,
    bias: Any = None,
    running_mean: Any = None,
    running_var: Any = None,
    *,
    use_input_stats: bool = True,
    eps: float = 1e-5,
) -> tuple[Any, CudaNormCache]:
    """Instance norm of (N, C, *spatial) ``x``: group norm with one channel per group, or, with
    ``use_input_stats=False``, batch norm in eval mode with the running statistics."""
    xp = _check_input(x, "instance_norm")
    if x.ndim < 3:
        raise ValueError(
            f"instance_norm: expected input of shape (N, C, *spatial), got shape {x.shape}"
        )
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError(
                "instance_norm: use_input_stats=False needs running_mean and running_var"
            )
        y, cache = batch_norm_forward(
            x, weight, bias, running_mean, running_var, training=False, eps=eps
        )
        return y, _replace_count(cache, math.prod(x.shape[2:]))
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    view = (n, c) + (1,) * (x.ndim - 2)
    return _row_forward(
        x, xp, (n * c, s), c, s, weight, bias, c, eps, True, "groups", view, "instance_norm"
    )


def _replace_count(cache: CudaNormCache, count: int) -> CudaNormCache:
    from dataclasses import replace

    return replace(cache, count=count)


def instance_norm_backward(dy: Any, cache: CudaNormCache) -> NormGrads:
    """Gradients of :func:`instance_norm_forward`."""
    return _backward(dy, cache)
