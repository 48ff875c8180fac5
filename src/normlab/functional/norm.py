r"""Normalization layers as pure functions: the readable reference every faster path is tested against.

Every normalization in this file is the same three steps, differing only in *which* axes the statistics are
taken over and which axes carry the affine parameters:

.. math::

    \mu = \frac{1}{n}\sum x, \qquad \sigma^2 = \frac{1}{n}\sum (x - \mu)^2, \qquad
    \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad y = \gamma \hat x + \beta

========================  =====================================  ===========================
op                        statistics over (for x of shape          gamma / beta shape
                          (N, C, *spatial))
========================  =====================================  ===========================
batch norm                N and every spatial axis, per channel   (C,)
layer norm                the trailing ``normalized_shape`` axes  ``normalized_shape``
group norm                C/G channels and spatial axes,          (C,)
                          per sample and group
instance norm             spatial axes, per sample and channel    (C,)
RMS norm                  trailing axes; no mean is subtracted    ``normalized_shape``
========================  =====================================  ===========================

Each op is a pair ``y, cache = <op>_forward(x, ...)`` and ``grads = <op>_backward(dy, cache)``, where
``grads`` is ``NormGrads(dx, dweight, dbias)``.

Backward uses the closed form.  With :math:`g = \partial L/\partial \hat x = \gamma\, \partial L / \partial y`
and means :math:`\langle\cdot\rangle` over the same n values the statistics were taken over:

.. math::

    \frac{\partial L}{\partial x} = \frac{1}{\sqrt{\sigma^2+\epsilon}}
        \Big(g - \langle g\rangle - \hat x\,\langle g\,\hat x\rangle\Big)

The :math:`\langle g\rangle` term comes from the mean depending on x, the :math:`\hat x\langle g\hat x\rangle`
term from the variance depending on x.  RMS norm has no mean, so no :math:`\langle g\rangle` term.  When the
statistics are constants (batch norm in eval mode, using running statistics) both terms vanish and
:math:`\partial L/\partial x = g / \sqrt{\sigma^2+\epsilon}`.

Numerics.  Statistics are computed by a *shifted two-pass* algorithm: the first value along the reduced axes is
subtracted before anything is summed, the mean of the shifted values is taken, and the variance is the mean of
squared deviations from it.  Sums are accumulated in float64.  This never forms ``E[x^2] - E[x]^2``, so an
input with mean 1e4 and standard deviation 1 in float32 keeps its precision, and a constant input gives a
variance of exactly zero.  When ``var + eps == 0`` (constant input, ``eps=0``) the normalized value is defined
as 0, so the output is ``beta``, never NaN.  Statistics that are not finite (a NaN or an infinity among the
values they were taken over, or a variance that overflows, as float64 values near 1e200 do) make every output
of their group NaN: the math has no other answer, and a bias whatever the input would hide the problem.  Elementwise arithmetic runs in float32 for float16/float32 inputs
and in float64 for float64 inputs; the output has the input's dtype.

Arrays.  The code uses only the Array API standard, through ``xp``, the namespace of the input
(:func:`normlab.backend.namespace`): the same lines run on NumPy arrays, on CuPy arrays on a GPU, and on
``array-api-strict`` arrays in the tests that keep it so.  ``np.errstate`` only silences NumPy's warnings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from normlab.backend import check_float_array, compute_dtype, device_of, namespace
from normlab.functional import checks

Shape = tuple[int, ...]


class NormGrads(NamedTuple):
    """Gradients returned by every normalization backward; ``None`` for a parameter the op did not use."""

    dx: np.ndarray
    dweight: np.ndarray | None
    dbias: np.ndarray | None


@dataclass(frozen=True)
class NormCache:
    """What a normalization forward keeps for its backward.

    The statistics are kept in the *statistics view*: the input reshaped to ``stat_shape`` (only group norm
    needs a shape different from the input's) and reduced over ``stat_axes`` with ``keepdims=True``.
    """

    xhat: np.ndarray  # normalized input, statistics view, compute dtype: dx and dweight need it
    rstd: np.ndarray  # 1 / sqrt(var + eps), keepdims: dx needs it
    mean: np.ndarray  # the mean used (batch or running), keepdims; zeros for RMS norm
    var: (
        np.ndarray
    )  # the (biased) variance used, or mean square for RMS norm; running stats need it
    count: int  # how many values each statistic was taken over
    stat_shape: Shape
    stat_axes: Shape
    input_shape: Shape
    input_dtype: np.dtype
    weight: (
        np.ndarray | None
    )  # gamma in compute dtype, shaped to broadcast against the input: dx needs it
    affine_shape: Shape  # how gamma and beta broadcast against the input
    param_shape: Shape | None  # the shape gamma and beta have as parameters
    has_bias: bool
    center: bool  # False for RMS norm (no mean subtracted)
    input_stats: (
        bool  # True if the statistics were computed from this input (so dx has the extra terms)
    )


# --------------------------------------------------------------------------------------- statistics core
def _float64_mean(a: np.ndarray, axes: Shape) -> np.ndarray:
    """Mean over ``axes`` (keepdims), summed and returned in float64."""
    xp = namespace(a)
    count = math.prod(a.shape[ax] for ax in axes)
    return xp.sum(a, axis=axes, keepdims=True, dtype=xp.float64) / count


def _accumulate_mean(a: np.ndarray, axes: Shape) -> np.ndarray:
    """Mean over ``axes`` (keepdims), summed in float64 and returned in ``a``'s dtype."""
    return namespace(a).astype(_float64_mean(a, axes), a.dtype, copy=False)


def _first_along(x: np.ndarray, axes: Shape) -> np.ndarray:
    """The element at index 0 along each of ``axes`` (keepdims), copied: the shift for the two-pass
    algorithm."""
    index = tuple(slice(0, 1) if ax in axes else slice(None) for ax in range(x.ndim))
    return namespace(x).asarray(x[index], copy=True)


def centered_moments(
    x: np.ndarray, axes: Shape, center: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Statistics over ``axes`` (keepdims) in ``x``'s compute dtype, and the centered input.

    Returns ``(mean, var, xc)`` with ``xc = x - mean`` and ``var = mean(xc**2)`` (biased).  With
    ``center=False`` (RMS norm) the mean is zero, ``var`` is the mean square and ``xc`` is ``x`` itself.
    """
    xp = namespace(x)
    ct = compute_dtype(x.dtype, xp)
    xc = xp.astype(x, ct, copy=True)
    if center:
        shift = _first_along(xc, axes)
        xc -= shift  # exact for values within a factor of two of the shift; keeps large means harmless
        shifted_mean = _accumulate_mean(xc, axes)
        xc -= shifted_mean
        mean = shift + shifted_mean
    else:
        kept = tuple(1 if ax in axes else n for ax, n in enumerate(x.shape))
        mean = xp.zeros(kept, dtype=ct, device=device_of(x))
    var = _accumulate_mean(xp.square(xc), axes)
    return mean, var, xc


def moments(
    x: np.ndarray, axes: int | Shape, keepdims: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance of ``x`` over ``axes``, numerically stable (shifted two-pass, float64 sums)."""
    x = check_float_array(x, "moments")
    xp = namespace(x)
    axes = checks.axes_arg(axes, x.ndim, "moments")
    if any(
        x.shape[a] == 0 for a in axes
    ):  # no values to take statistics over: NaN, as numpy and PyTorch
        kept = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
        ct = compute_dtype(x.dtype, xp)
        mean = var = xp.full(kept, xp.nan, dtype=ct, device=device_of(x))
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            mean, var, _ = centered_moments(x, axes)
            if not xp.all(
                xp.isfinite(mean)
            ):  # an inf among the values: the shift made it inf - inf = NaN
                plain = xp.astype(_float64_mean(x, axes), mean.dtype)
                mean = xp.where(xp.isfinite(mean), mean, plain)
    if not keepdims:
        mean, var = xp.squeeze(mean, axis=axes), xp.squeeze(var, axis=axes)
    return mean, var


def inverse_std(var: np.ndarray, eps: float) -> np.ndarray:
    """``1 / sqrt(var + eps)``: 0 where ``var + eps == 0``, so that a constant input maps to 0; NaN where
    ``var + eps`` is not finite (NaN statistics, or an overflowed variance), so that the group's outputs are
    NaN rather than the bias."""
    xp = namespace(var)
    denom = var + eps  # a Python float takes the array's dtype
    finite = xp.isfinite(denom)
    positive = (denom > 0) & finite
    # the root only where it is defined (1 elsewhere, so nothing warns); 0 or NaN where it is not
    rstd = 1.0 / xp.sqrt(xp.where(positive, denom, xp.ones_like(denom)))
    return xp.where(
        positive, rstd, xp.where(finite, xp.zeros_like(denom), xp.full_like(denom, xp.nan))
    )


def _sum_to_shape(a: np.ndarray, broadcast_shape: Shape, param_shape: Shape) -> np.ndarray:
    """Undo broadcasting: sum ``a`` over the axes where ``broadcast_shape`` (right-aligned) is 1."""
    aligned = (1,) * (a.ndim - len(broadcast_shape)) + tuple(broadcast_shape)
    axes = tuple(i for i, n in enumerate(aligned) if n == 1)
    xp = namespace(a)
    total = xp.sum(a, axis=axes, dtype=xp.float64)
    return xp.astype(xp.reshape(total, param_shape), a.dtype, copy=False)


# --------------------------------------------------------------------------------------- shared forward
def _normalize_forward(
    x: np.ndarray,
    *,
    stat_shape: Shape,
    stat_axes: Shape,
    eps: float,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    affine_shape: Shape,
    center: bool = True,
    given_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, NormCache]:
    """Normalize ``x`` over ``stat_axes`` of its ``stat_shape`` view, then scale and shift.

    ``affine_shape`` is the shape gamma and beta are reshaped to so that they broadcast against ``x``.
    ``given_stats=(mean, var)`` (broadcastable to the statistics view) uses those instead of the input's.
    """
    xp = namespace(x, weight, bias)
    ct = compute_dtype(x.dtype, xp)
    count = math.prod(stat_shape[a] for a in stat_axes)
    xv = xp.reshape(x, stat_shape)
    if given_stats is None:
        if count == 0:  # empty input: nothing to normalize, no statistics to report
            kept = tuple(1 if a in stat_axes else n for a, n in enumerate(stat_shape))
            mean = var = xp.full(kept, xp.nan, dtype=ct, device=device_of(x))
            xc = xp.astype(xv, ct)
        else:
            with np.errstate(
                over="ignore", invalid="ignore"
            ):  # non-finite statistics give NaN (see above)
                mean, var, xc = centered_moments(xv, stat_axes, center)
    else:
        mean, var = (xp.astype(s, ct, copy=False) for s in given_stats)
        xc = xp.astype(xv, ct) - mean if center else xp.astype(xv, ct)
    rstd = inverse_std(var, eps)
    xhat = xc * rstd

    y = xp.reshape(xhat, x.shape)
    w = None if weight is None else xp.reshape(xp.astype(weight, ct, copy=False), affine_shape)
    if w is not None:
        y = y * w
    if bias is not None:
        y = y + xp.reshape(xp.astype(bias, ct, copy=False), affine_shape)
    param = weight if weight is not None else bias
    cache = NormCache(
        xhat=xhat,
        rstd=rstd,
        mean=mean,
        var=var,
        count=count,
        stat_shape=tuple(stat_shape),
        stat_axes=stat_axes,
        input_shape=tuple(x.shape),
        input_dtype=x.dtype,
        weight=w,
        affine_shape=tuple(affine_shape),
        param_shape=None if param is None else tuple(param.shape),
        has_bias=bias is not None,
        center=center,
        input_stats=given_stats is None,
    )
    return xp.astype(y, x.dtype, copy=False), cache


def _normalize_backward(dy: np.ndarray, cache: NormCache, where: str) -> NormGrads:
    """Closed-form gradients of :func:`_normalize_forward` (see the module docstring for the formula)."""
    checks.check_cache(cache, NormCache, where)
    dy = checks.check_gradient(dy, cache.input_shape, where)
    xp = namespace(dy, cache.xhat)
    ct = cache.xhat.dtype
    g = xp.astype(dy, ct, copy=False)
    xhat = xp.reshape(cache.xhat, cache.input_shape)
    dweight = dbias = None
    if cache.weight is not None:
        dweight = _sum_to_shape(g * xhat, cache.affine_shape, cache.param_shape)
    if cache.has_bias:
        dbias = _sum_to_shape(g, cache.affine_shape, cache.param_shape)

    dxhat = xp.reshape(g * cache.weight if cache.weight is not None else g, cache.stat_shape)
    xhat_v = cache.xhat
    if cache.input_stats and cache.count > 0:
        axes = cache.stat_axes
        dx = dxhat - xhat_v * _accumulate_mean(dxhat * xhat_v, axes)  # variance term
        if cache.center:
            dx -= _accumulate_mean(dxhat, axes)  # mean term
        dx *= cache.rstd
    else:
        dx = dxhat * cache.rstd
    dx = xp.astype(xp.reshape(dx, cache.input_shape), cache.input_dtype, copy=False)
    return NormGrads(dx, dweight, dbias)


def _channel_args(
    x: np.ndarray,
    weight: object,
    bias: object,
    running_mean: object,
    running_var: object,
    use_input_stats: bool,
    eps: object,
    where: str,
) -> tuple[float, np.ndarray | None, np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """The checked arguments of a per-channel norm (batch, instance): eps, gamma and beta of shape (C,), and
    the given running statistics (shape (C,)) reshaped to broadcast, or None when the input's are used."""
    c = (x.shape[1],)
    eps = checks.check_eps(eps, where)
    weight = checks.check_param(weight, c, "weight", where)
    bias = checks.check_param(bias, c, "bias", where)
    given = None
    if not use_input_stats:
        cshape = _channel_shape(x)
        running_mean = checks.check_statistic(running_mean, c, "running_mean", where)
        running_var = checks.check_statistic(running_var, c, "running_var", where)
        xp = namespace(running_mean, running_var)
        given = (xp.reshape(running_mean, cshape), xp.reshape(running_var, cshape))
    return eps, weight, bias, given


def _channel_shape(x: np.ndarray) -> Shape:
    """(1, C, 1, ..., 1): how a per-channel parameter broadcasts against channels-first ``x``."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


# --------------------------------------------------------------------------------------- batch norm
def batch_norm_forward(
    x: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    *,
    use_input_stats: bool | None = None,
    eps: float = 1e-5,
    training: bool | None = None,
) -> tuple[np.ndarray, NormCache]:
    """Batch norm of channels-first ``x`` of shape (N, C, *spatial), statistics per channel.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with ``mean``/``var`` per channel, broadcast over
    N and the spatial axes.  This function keeps no state: updating running statistics is the caller's job
    (:func:`update_running_stats`, as the layers do).

    Args:
        x: (N, C, *spatial), floating point.
        weight: (C,) scale, or ``None`` for 1.
        bias: (C,) shift, or ``None`` for 0.
        running_mean: (C,), used when ``use_input_stats=False``.
        running_var: (C,), used when ``use_input_stats=False``.
        use_input_stats: ``True`` (the default) normalizes with the batch's own mean and biased variance over
            (N, *spatial); the cache's ``mean``/``var`` hold them (shape (1, C, 1...)) for the caller to update
            running statistics.  ``False`` uses ``running_mean``/``running_var``, which must then be given.
        eps: added to the variance; >= 0.
        training: the same flag as ``use_input_stats`` under PyTorch's name (``F.batch_norm(..., training=...)``).

    Returns:
        ``y`` (same shape and dtype as ``x``) and the cache for :func:`batch_norm_backward`.

    Examples:
        >>> import numpy as np
        >>> from normlab import functional as F
        >>> x = np.random.default_rng(0).normal(size=(16, 3))
        >>> y, cache = F.batch_norm_forward(x, np.array([1.0, 2.0, 0.5]), np.zeros(3), training=True)
        >>> y.shape, cache.mean.shape
        ((16, 3), (1, 3))
        >>> y_eval, _ = F.batch_norm_forward(x, None, None, np.zeros(3), np.ones(3), training=False)
        >>> bool(np.allclose(y_eval, x / np.sqrt(1 + 1e-5)))  # running mean 0, variance 1
        True
    """
    x = check_float_array(x, "batch_norm")
    checks.check_min_rank(x, 2, "(N, C, *)", "batch_norm")
    use_input_stats, flag = checks.input_stats_flag(use_input_stats, training, "batch_norm")
    checks.check_given_stats(use_input_stats, running_mean, running_var, flag, "batch_norm")
    eps, weight, bias, given = _channel_args(
        x, weight, bias, running_mean, running_var, use_input_stats, eps, "batch_norm"
    )
    cshape = _channel_shape(x)
    return _normalize_forward(
        x,
        stat_shape=x.shape,
        stat_axes=(0, *range(2, x.ndim)),
        eps=eps,
        weight=weight,
        bias=bias,
        affine_shape=cshape,
        given_stats=given,
    )


def batch_norm_backward(dy: np.ndarray, cache: NormCache) -> NormGrads:
    """Gradients of :func:`batch_norm_forward`: ``dx`` like ``x``, ``dweight``/``dbias`` of shape (C,).

    With batch statistics, per channel over its m = N * prod(spatial) values, ``xhat = (x - mean) * rstd``
    and ``g = dy * weight``::

        dbias = sum(dy);   dweight = sum(dy * xhat)
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))

    (the mean and variance depend on every x, hence the two subtracted terms).  With running statistics
    (eval) they are constants and ``dx = rstd * g``.

    Args:
        dy: dL/dy, the shape of ``y``.
        cache: the cache :func:`batch_norm_forward` returned with ``y``.

    Returns:
        ``NormGrads(dx, dweight, dbias)``; ``dweight``/``dbias`` are ``None`` when the forward had no
            weight/bias.

    Examples:
        >>> import numpy as np
        >>> from normlab import functional as F
        >>> rng = np.random.default_rng(0)
        >>> x, w = rng.normal(size=(16, 3)), np.array([1.0, 2.0, 0.5])
        >>> y, cache = F.batch_norm_forward(x, w, np.zeros(3), training=True)
        >>> dy = rng.normal(size=y.shape)
        >>> grads = F.batch_norm_backward(dy, cache)
        >>> xhat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)
        >>> g = dy * w
        >>> dx = (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)
        >>> bool(np.allclose(grads.dx, dx)), bool(np.allclose(grads.dweight, (dy * xhat).sum(axis=0)))
        (True, True)
    """
    return _normalize_backward(dy, cache, "batch_norm_backward")


# --------------------------------------------------------------------------------------- batch norm + activation
def update_running_stats(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    batch_mean: np.ndarray,
    batch_var: np.ndarray,
    factor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Exponential moving average of batch statistics, PyTorch's form: ``r <- (1 - f) r + f b``.

    ``factor`` is the momentum, or ``1 / num_batches_tracked`` for a cumulative average.  ``batch_var`` is
    stored as given: pass it through :func:`unbiased_variance` first for PyTorch's convention.  Returns new
    arrays in the running statistics' dtype.
    """
    where = "update_running_stats"
    running_mean = check_float_array(running_mean, where, "running_mean")
    shape = running_mean.shape
    running_var = checks.check_statistic(running_var, shape, "running_var", where)
    batch_mean = checks.check_statistic(batch_mean, shape, "batch_mean", where)
    batch_var = checks.check_statistic(batch_var, shape, "batch_var", where)
    factor = checks.check_factor(factor, "factor", where)
    xp = namespace(running_mean, running_var, batch_mean, batch_var)
    ct = xp.result_type(running_mean.dtype, xp.float32)
    new_mean = (1 - factor) * xp.astype(running_mean, ct) + factor * xp.astype(batch_mean, ct)
    new_var = (1 - factor) * xp.astype(running_var, ct) + factor * xp.astype(batch_var, ct)
    return xp.astype(new_mean, running_mean.dtype), xp.astype(new_var, running_var.dtype)


def unbiased_variance(biased_var: np.ndarray, count: int) -> np.ndarray:
    """Bessel's correction: the biased variance of ``count`` values times ``count / (count - 1)``."""
    if count < 2:
        raise ValueError(f"an unbiased variance needs at least 2 values per statistic, got {count}")
    return biased_var * (count / (count - 1))


# --------------------------------------------------------------------------------------- layer norm
def layer_norm_forward(
    x: np.ndarray,
    normalized_shape: int | Shape,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, NormCache]:
    """Layer norm over the trailing ``normalized_shape`` axes of ``x``; gamma/beta have that shape."""
    x = check_float_array(x, "layer_norm")
    normalized_shape = checks.normalized_shape_arg(normalized_shape, "layer_norm")
    checks.check_trailing(x, normalized_shape, "layer_norm")
    eps = checks.check_eps(eps, "layer_norm")
    weight = checks.check_param(weight, normalized_shape, "weight", "layer_norm")
    bias = checks.check_param(bias, normalized_shape, "bias", "layer_norm")
    k = len(normalized_shape)
    return _normalize_forward(
        x,
        stat_shape=x.shape,
        stat_axes=tuple(range(x.ndim - k, x.ndim)),
        eps=eps,
        weight=weight,
        bias=bias,
        affine_shape=tuple(normalized_shape),
    )


def layer_norm_backward(dy: np.ndarray, cache: NormCache) -> NormGrads:
    """Gradients of :func:`layer_norm_forward`; parameter gradients have ``normalized_shape``."""
    return _normalize_backward(dy, cache, "layer_norm_backward")


# --------------------------------------------------------------------------------------- RMS norm
def rms_norm_forward(
    x: np.ndarray,
    normalized_shape: int | Shape,
    weight: np.ndarray | None = None,
    eps: float | None = None,
) -> tuple[np.ndarray, NormCache]:
    """RMS norm: ``x / sqrt(mean(x**2) + eps) * gamma`` over the trailing ``normalized_shape`` axes.

    ``eps=None`` uses the machine epsilon of ``x``'s dtype, as PyTorch does.
    """
    x = check_float_array(x, "rms_norm")
    normalized_shape = checks.normalized_shape_arg(normalized_shape, "rms_norm")
    checks.check_trailing(x, normalized_shape, "rms_norm")
    eps = None if eps is None else checks.check_eps(eps, "rms_norm")
    weight = checks.check_param(weight, normalized_shape, "weight", "rms_norm")
    k = len(normalized_shape)
    return _normalize_forward(
        x,
        stat_shape=x.shape,
        stat_axes=tuple(range(x.ndim - k, x.ndim)),
        eps=float(namespace(x).finfo(x.dtype).eps) if eps is None else eps,
        weight=weight,
        bias=None,
        affine_shape=tuple(normalized_shape),
        center=False,
    )


def rms_norm_backward(dy: np.ndarray, cache: NormCache) -> NormGrads:
    """Gradients of :func:`rms_norm_forward` (``dbias`` is ``None``)."""
    return _normalize_backward(dy, cache, "rms_norm_backward")


# --------------------------------------------------------------------------------------- group norm
def group_norm_forward(
    x: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, NormCache]:
    """Group norm of (N, C, *spatial) ``x``: statistics per sample over each group of C/G channels and all
    spatial positions; gamma/beta per channel, shape (C,)."""
    x = check_float_array(x, "group_norm")
    num_groups = checks.check_groups(x, num_groups, "group_norm")
    eps = checks.check_eps(eps, "group_norm")
    weight = checks.check_param(weight, x.shape[1:2], "weight", "group_norm")
    bias = checks.check_param(bias, x.shape[1:2], "bias", "group_norm")
    n, c = x.shape[:2]
    group_size = (c // num_groups) * math.prod(x.shape[2:])
    return _normalize_forward(
        x,
        stat_shape=(n, num_groups, group_size),
        stat_axes=(2,),
        eps=eps,
        weight=weight,
        bias=bias,
        affine_shape=_channel_shape(x),
    )


def group_norm_backward(dy: np.ndarray, cache: NormCache) -> NormGrads:
    """Gradients of :func:`group_norm_forward`."""
    return _normalize_backward(dy, cache, "group_norm_backward")


# --------------------------------------------------------------------------------------- instance norm
def instance_norm_forward(
    x: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    *,
    use_input_stats: bool = True,
    eps: float = 1e-5,
) -> tuple[np.ndarray, NormCache]:
    """Instance norm of (N, C, *spatial) ``x``: statistics per sample and channel over the spatial axes.

    With ``use_input_stats=False`` the running statistics (shape (C,)) are used instead, as batch norm
    does in eval mode.  The cache's ``mean``/``var`` have shape (N, C, 1, ...).
    """
    x = check_float_array(x, "instance_norm")
    checks.check_min_rank(x, 3, "(N, C, *spatial)", "instance_norm")
    checks.check_given_stats(
        use_input_stats, running_mean, running_var, "use_input_stats", "instance_norm"
    )
    eps, weight, bias, given = _channel_args(
        x, weight, bias, running_mean, running_var, use_input_stats, eps, "instance_norm"
    )
    cshape = _channel_shape(x)
    return _normalize_forward(
        x,
        stat_shape=x.shape,
        stat_axes=tuple(range(2, x.ndim)),
        eps=eps,
        weight=weight,
        bias=bias,
        affine_shape=cshape,
        given_stats=given,
    )


def instance_norm_backward(dy: np.ndarray, cache: NormCache) -> NormGrads:
    """Gradients of :func:`instance_norm_forward`."""
    return _normalize_backward(dy, cache, "instance_norm_backward")
