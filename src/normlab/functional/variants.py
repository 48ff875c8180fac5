r"""The answers to batch norm's known failures, as pure functions: Batch Renormalization, Ghost Batch Norm and
Weight Standardization.  Each is written on top of :func:`~normlab.functional.norm.batch_norm_forward` and its
backward, so what differs from plain batch norm is all that is written here.

**Batch Renormalization** (Ioffe, 2017).  In training, with the batch's mean :math:`\mu_B` and standard deviation
:math:`\sigma_B = \sqrt{\mathrm{var}_B + \epsilon}`, and moving averages :math:`\mu, \sigma`:

.. math::

    r = \mathrm{clip}\big(\sigma_B / \sigma,\ 1/r_{max},\ r_{max}\big), \qquad
    d = \mathrm{clip}\big((\mu_B - \mu) / \sigma,\ -d_{max},\ d_{max}\big), \qquad
    y = \gamma\,(\hat x\, r + d) + \beta, \quad \hat x = (x - \mu_B) / \sigma_B

``r`` and ``d`` are constants for the gradient (the paper's "stop_gradient").  So the backward is batch norm's
with the upstream gradient scaled by :math:`\gamma r`, and :math:`\partial L/\partial\gamma = \sum g\,(\hat x r + d)`.
With :math:`r_{max} = 1, d_{max} = 0` it is batch norm.  In eval mode :math:`y = \gamma (x - \mu)/\sigma + \beta`:
batch norm with running variance :math:`\sigma^2 - \epsilon`.

**Ghost Batch Norm** (Hoffer et al., 2017).  The batch of N samples is cut into N / v chunks of ``v``
consecutive samples ("virtual batches"); each chunk is normalized with its own statistics.  The output and the
gradient of each chunk are batch norm's on that chunk alone; the parameter gradients are the chunks' sums.

**Weight Standardization** (Qiao et al., 2019).  A convolution's weight of shape (C_out, C_in, kh, kw) is
standardized per output channel before use: :math:`\hat W = (W - \mathrm{mean}(W)) / \sqrt{\mathrm{var}(W) + \epsilon}`
over (C_in, kh, kw).  That is layer norm over the trailing three axes without affine parameters, so its backward
is layer norm's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from normlab.backend import check_float_array, compute_dtype, namespace
from normlab.functional import checks
from normlab.functional.checks import check_gradient
from normlab.functional.norm import (
    NormGrads,
    batch_norm_backward,
    batch_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
)


# --------------------------------------------------------------------------------------- batch renorm
@dataclass(frozen=True)
class RenormClipping:
    """The limits of the renorm corrections: ``r`` in ``[r_min, r_max]`` and ``|d| <= d_max``.

    ``r_min`` defaults to ``1 / r_max`` (the paper's symmetric range).  ``r_max = 1, d_max = 0`` is batch
    norm; ``r_max = inf, d_max = inf`` never clips.
    """

    r_max: float = 3.0
    d_max: float = 5.0
    r_min: float | None = None

    def __post_init__(self) -> None:
        for name in ("r_max", "d_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"RenormClipping: {name} must be a number, got {value!r}")
        if self.r_max < 1:
            raise ValueError(f"RenormClipping: r_max must be >= 1, got {self.r_max}")
        if self.d_max < 0:
            raise ValueError(f"RenormClipping: d_max must be >= 0, got {self.d_max}")
        if self.r_min is not None and not 0 < self.r_min <= self.r_max:
            raise ValueError(
                f"RenormClipping: r_min must be in (0, r_max={self.r_max}], got {self.r_min}"
            )

    @property
    def lower(self) -> float:
        return 1.0 / self.r_max if self.r_min is None else float(self.r_min)


@dataclass(frozen=True)
class RenormSchedule:
    """The paper's warm-up of the clipping limits, driven by the training step count.

    ``r_max = 1, d_max = 0`` (batch norm) for the first ``warmup`` steps; then ``r_max`` rises linearly to
    ``r_max_final`` at step ``r_max_steps`` and ``d_max`` to ``d_max_final`` at step ``d_max_steps`` (Ioffe 2017,
    §4: 5k, 40k and 25k steps for 3 and 5).
    """

    warmup: int = 5000
    r_max_steps: int = 40000
    d_max_steps: int = 25000
    r_max_final: float = 3.0
    d_max_final: float = 5.0

    def __post_init__(self) -> None:
        for name in ("warmup", "r_max_steps", "d_max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"RenormSchedule: {name} must be an int >= 0, got {value!r}")
        if self.r_max_steps < self.warmup or self.d_max_steps < self.warmup:
            raise ValueError(
                "RenormSchedule: r_max_steps and d_max_steps must be >= warmup, got "
                f"warmup={self.warmup}, r_max_steps={self.r_max_steps}, d_max_steps={self.d_max_steps}"
            )
        RenormClipping(self.r_max_final, self.d_max_final)  # the same limits on the final values

    def at(self, step: int) -> RenormClipping:
        """The clipping in force at training step ``step`` (0 for the first batch)."""

        def ramp(start: float, end: float, last: int) -> float:
            if step <= self.warmup:
                return start
            if step >= last:
                return end
            return start + (end - start) * (step - self.warmup) / (last - self.warmup)

        return RenormClipping(
            ramp(1.0, self.r_max_final, self.r_max_steps),
            ramp(0.0, self.d_max_final, self.d_max_steps),
        )


class NormOp(NamedTuple):
    """A batch-norm implementation with the reference's signatures (``normlab.kernels.Op`` fits): the
    variants run on top of whichever one the caller resolved, the reference by default."""

    forward: Callable[..., Any] = batch_norm_forward
    backward: Callable[..., Any] = batch_norm_backward


REFERENCE_BN = NormOp()


class BatchRenormCache(NamedTuple):
    """What :func:`batch_renorm_backward` needs: batch norm's cache (without affine) and the corrections."""

    norm: Any  # the cache of the un-scaled batch norm (batch mean/var): its backward needs it
    norm_op: NormOp  # the batch norm that made it: its backward is the one to run
    xhat: np.ndarray  # the normalized input, compute dtype: dL/dγ needs it
    r: np.ndarray  # shape (C,), compute dtype
    d: np.ndarray  # shape (C,), compute dtype
    weight: np.ndarray | None  # gamma, shape (C,), compute dtype
    has_bias: bool

    @property
    def mean(self) -> np.ndarray:
        return self.norm.mean

    @property
    def var(self) -> np.ndarray:
        return self.norm.var

    @property
    def count(self) -> int:
        return self.norm.count

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.norm.input_shape


def renorm_corrections(
    batch_mean: np.ndarray,
    batch_std: np.ndarray,
    moving_mean: np.ndarray,
    moving_std: np.ndarray,
    clipping: RenormClipping,
) -> tuple[np.ndarray, np.ndarray]:
    """``r = clip(σ_B / σ, r_min, r_max)`` and ``d = clip((μ_B − μ) / σ, −d_max, d_max)``, per channel."""
    xp = namespace(batch_mean, batch_std, moving_mean, moving_std)
    r = xp.clip(batch_std / moving_std, clipping.lower, clipping.r_max)
    d = xp.clip((batch_mean - moving_mean) / moving_std, -clipping.d_max, clipping.d_max)
    return r, d


def batch_renorm_forward(
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    moving_mean: np.ndarray,
    moving_std: np.ndarray,
    *,
    clipping: RenormClipping,
    eps: float = 1e-5,
    norm: NormOp = REFERENCE_BN,
) -> tuple[np.ndarray, BatchRenormCache]:
    """Batch renormalization of channels-first ``x`` (N, C, *spatial) in training mode.

    ``moving_mean``/``moving_std`` (shape (C,)) are the moving averages of the batch mean and of
    ``sqrt(var_B + eps)`` that define ``r`` and ``d``.  Returns ``y`` and the cache; the cache's ``mean`` and
    ``var`` are the batch's (for the caller to update the moving averages).  Eval mode is plain
    :func:`~normlab.functional.norm.batch_norm_forward` with ``running_var = moving_std**2 - eps``.
    ``norm`` is the batch norm underneath (the reference, or a kernel with its signatures).
    """
    x = check_float_array(x, "batch_renorm")
    if not isinstance(clipping, RenormClipping):
        raise TypeError(f"batch_renorm: clipping must be a RenormClipping, got {clipping!r}")
    eps = checks.check_eps(eps, "batch_renorm")
    checks.check_min_rank(x, 2, "(N, C, *)", "batch_renorm")
    c = x.shape[1:2]
    weight = checks.check_param(weight, c, "weight", "batch_renorm")
    bias = checks.check_param(bias, c, "bias", "batch_renorm")
    moving_mean = checks.check_statistic(moving_mean, c, "moving_mean", "batch_renorm")
    moving_std = checks.check_statistic(moving_std, c, "moving_std", "batch_renorm")
    xhat, norm_cache = norm.forward(x, None, None, use_input_stats=True, eps=eps)
    xp = namespace(x, weight, bias, moving_mean, moving_std)
    ct = compute_dtype(x.dtype, xp)
    xhat = xp.astype(xhat, ct, copy=False)
    channels = xhat.shape[1]
    mean_b = xp.reshape(norm_cache.mean, (channels,))
    std_b = xp.sqrt(xp.reshape(norm_cache.var, (channels,)) + eps)
    r, d = renorm_corrections(
        mean_b,
        std_b,
        xp.astype(moving_mean, ct, copy=False),
        xp.astype(moving_std, ct, copy=False),
        clipping,
    )
    gamma = None if weight is None else xp.astype(weight, ct, copy=False)
    scale = r if gamma is None else gamma * r
    shift = d if gamma is None else gamma * d
    if bias is not None:
        shift = shift + xp.astype(bias, ct, copy=False)
    cshape = (1, channels) + (1,) * (xhat.ndim - 2)
    y = xhat * xp.reshape(scale, cshape) + xp.reshape(shift, cshape)
    cache = BatchRenormCache(norm_cache, norm, xhat, r, d, gamma, bias is not None)
    return xp.astype(y, x.dtype, copy=False), cache


def batch_renorm_backward(dy: np.ndarray, cache: BatchRenormCache) -> NormGrads:
    """Gradients of :func:`batch_renorm_forward`, ``r`` and ``d`` held constant.

    ``dL/dx`` is batch norm's backward of ``g·γ·r``; ``dL/dγ = Σ g (x̂ r + d)``; ``dL/dβ = Σ g``.
    """
    if not isinstance(cache, BatchRenormCache):
        raise TypeError(
            f"batch_renorm backward: expected the forward's BatchRenormCache, got {cache!r}"
        )
    dy = check_gradient(dy, cache.norm.input_shape, "batch_renorm backward")
    xp = namespace(dy, cache.r)
    ct = cache.r.dtype
    g = xp.astype(dy, ct, copy=False)
    channels = dy.shape[1]
    cshape = (1, channels) + (1,) * (dy.ndim - 2)
    axes = (0, *range(2, dy.ndim))
    scale = cache.r if cache.weight is None else cache.weight * cache.r
    dx = cache.norm_op.backward(g * xp.reshape(scale, cshape), cache.norm).dx
    sum_g = xp.astype(xp.sum(g, axis=axes, dtype=xp.float64), ct)
    sum_g_xhat = xp.astype(xp.sum(g * cache.xhat, axis=axes, dtype=xp.float64), ct)
    dweight = None if cache.weight is None else cache.r * sum_g_xhat + cache.d * sum_g
    dbias = sum_g if cache.has_bias else None
    return NormGrads(dx, dweight, dbias)


def update_moving_moments(
    moving_mean: np.ndarray,
    moving_std: np.ndarray,
    batch_mean: np.ndarray,
    batch_std: np.ndarray,
    momentum: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's moving averages, in PyTorch's momentum form: ``μ ← μ + m (μ_B − μ)``, likewise ``σ``.

    Returns new arrays in the moving statistics' dtype.
    """
    xp = namespace(moving_mean, moving_std, batch_mean, batch_std)
    ct = xp.result_type(moving_mean.dtype, xp.float32)
    new_mean = xp.astype(moving_mean, ct) + momentum * (
        xp.astype(batch_mean, ct, copy=False) - moving_mean
    )
    new_std = xp.astype(moving_std, ct) + momentum * (
        xp.astype(batch_std, ct, copy=False) - moving_std
    )
    return xp.astype(new_mean, moving_mean.dtype), xp.astype(new_std, moving_std.dtype)


# --------------------------------------------------------------------------------------- ghost batch norm
class GhostBatchNormCache(NamedTuple):
    """One batch-norm cache per virtual batch, and the merged statistics of the whole call."""

    chunks: tuple[Any, ...]  # the batch-norm cache of each virtual batch
    norm_op: NormOp  # the batch norm that made them
    virtual_batch_size: int
    mean: np.ndarray  # merged mean over every chunk, shape (1, C, 1, ...)
    var: np.ndarray  # merged biased variance over every chunk
    count: int  # values per channel over the whole call
    input_shape: tuple[int, ...]


def ghost_batch_norm_forward(
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    *,
    virtual_batch_size: int,
    eps: float = 1e-5,
    norm: NormOp = REFERENCE_BN,
) -> tuple[np.ndarray, GhostBatchNormCache]:
    """Batch norm of each chunk of ``virtual_batch_size`` consecutive samples, in training mode.

    ``x.shape[0]`` must be a multiple of ``virtual_batch_size``.  The cache's ``mean``/``var`` are the
    statistics of the whole batch, merged exactly from the chunks' (Chan et al.): equal to batch norm's
    statistics of ``x``, which is what the running averages are updated with (once per call).
    """
    x = check_float_array(x, "ghost_batch_norm")
    eps = checks.check_eps(eps, "ghost_batch_norm")
    v = virtual_batch_size
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"ghost_batch_norm: virtual_batch_size must be an int >= 1, got {v!r}")
    if x.ndim < 2 or x.shape[0] % v != 0:
        raise ValueError(
            f"ghost_batch_norm: the batch size must be a multiple of virtual_batch_size={v}, "
            f"got input of shape {x.shape}"
        )
    outputs, caches = [], []
    for start in range(0, x.shape[0], v):
        y, cache = norm.forward(
            x[start : start + v, ...], weight, bias, use_input_stats=True, eps=eps
        )
        outputs.append(y)
        caches.append(cache)
    mean, var, count = merge_moments([(c.mean, c.var, c.count) for c in caches])
    xp = namespace(x)
    out = xp.concat(outputs, axis=0) if outputs else xp.asarray(x, copy=True)
    return out, GhostBatchNormCache(tuple(caches), norm, v, mean, var, count, x.shape)


def ghost_batch_norm_backward(dy: np.ndarray, cache: GhostBatchNormCache) -> NormGrads:
    """Gradients of :func:`ghost_batch_norm_forward`: each chunk's batch-norm backward; parameter
    gradients summed over the chunks."""
    if not isinstance(cache, GhostBatchNormCache):
        raise TypeError(f"ghost_batch_norm backward: expected the forward's cache, got {cache!r}")
    dy = check_gradient(dy, cache.input_shape, "ghost_batch_norm backward")
    v = cache.virtual_batch_size
    backward = cache.norm_op.backward
    grads = [backward(dy[i * v : (i + 1) * v, ...], c) for i, c in enumerate(cache.chunks)]
    dx = namespace(dy).concat([g.dx for g in grads], axis=0)
    dweight = None if grads[0].dweight is None else sum(g.dweight for g in grads)
    dbias = None if grads[0].dbias is None else sum(g.dbias for g in grads)
    return NormGrads(dx, dweight, dbias)


def merge_moments(
    parts: list[tuple[np.ndarray, np.ndarray, int]],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Merge (mean, biased variance, count) of disjoint parts into those of their union (Chan et al. 1979).

    Pairwise, in float64: ``M2 = M2_a + M2_b + δ² n_a n_b / n`` with ``δ = mean_b − mean_a``; exact up to
    rounding, and stable for large means (no ``E[x²] − E[x]²``).
    """
    mean = var = None
    total = 0
    for part_mean, part_var, n in parts:
        xp = namespace(part_mean, part_var)
        part_mean = xp.astype(xp.asarray(part_mean), xp.float64)
        part_m2 = xp.astype(xp.asarray(part_var), xp.float64) * n
        if mean is None:
            mean, m2, total = part_mean, part_m2, n
            continue
        merged = total + n
        delta = part_mean - mean
        mean = mean + delta * (n / merged)
        m2 = m2 + part_m2 + delta**2 * (total * n / merged)
        total = merged
    if mean is None:
        raise ValueError("merge_moments: nothing to merge")
    var = m2 / total
    xp = namespace(parts[0][0])
    dtype = xp.asarray(parts[0][0]).dtype
    return xp.astype(mean, dtype), xp.astype(var, dtype), total


# --------------------------------------------------------------------------------------- weight standardization
def weight_standardization_forward(weight: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, Any]:
    """Standardize a conv weight (C_out, C_in, kh, kw) per output channel over its other axes.

    Returns the standardized weight (same shape and dtype) and the cache for the backward.  A weight with
    a single element per output channel cannot be standardized (it would be all zeros): ``ValueError``.
    """
    weight = check_float_array(weight, "weight_standardization", "weight")
    if weight.ndim < 2 or math.prod(weight.shape[1:]) < 2:
        raise ValueError(
            "weight_standardization: expected a weight (C_out, C_in, *kernel) with more than one element "
            f"per output channel, got shape {weight.shape}"
        )
    eps = checks.check_eps(eps, "weight_standardization")
    return layer_norm_forward(weight, tuple(weight.shape[1:]), None, None, eps)


def weight_standardization_backward(dw_hat: np.ndarray, cache: Any) -> np.ndarray:
    """dL/dW from dL/dŴ: layer norm's backward over the same axes."""
    return layer_norm_backward(dw_hat, cache).dx


# --------------------------------------------------------------------------------------- a batch in parts
def batch_norm_backward_from_sums(
    dy: np.ndarray, cache: Any, sum_dy: np.ndarray, sum_dy_xhat: np.ndarray, count: int
) -> NormGrads:
    """Batch norm's training backward for one part of a batch that was normalized as a whole.

    ``cache`` is the part's :func:`~normlab.functional.norm.batch_norm_forward` cache made with the whole
    batch's statistics (``use_input_stats=False``, the statistics given); ``sum_dy`` and ``sum_dy_xhat``
    (shape (C,)) are ``Σ dy`` and ``Σ dy·x̂`` over the *whole* batch, ``count`` its values per channel.  Then

        dx = γ · rstd · (dy − Σdy / n − x̂ · Σ(dy·x̂) / n)

    is exactly the whole batch's dx restricted to this part, and ``dweight``/``dbias`` are this part's
    shares of ``Σ dy·x̂`` and ``Σ dy`` (summing the parts' gives the whole batch's).
    """
    dy = check_gradient(dy, cache.input_shape, "batch_norm_backward_from_sums")
    xp = namespace(dy, cache.xhat, sum_dy, sum_dy_xhat)
    ct = cache.xhat.dtype
    g = xp.astype(dy, ct, copy=False)
    channels = dy.shape[1]
    cshape = (1, channels) + (1,) * (dy.ndim - 2)
    axes = (0, *range(2, dy.ndim))
    xhat = xp.reshape(cache.xhat, dy.shape)

    def per_channel_mean(total: np.ndarray) -> np.ndarray:
        return xp.reshape(xp.astype(xp.astype(total, xp.float64) / count, ct), cshape)

    mean_dy, mean_dy_xhat = per_channel_mean(sum_dy), per_channel_mean(sum_dy_xhat)
    dx = (g - mean_dy - xhat * mean_dy_xhat) * xp.reshape(cache.rstd, cshape)
    if cache.weight is not None:
        dx *= cache.weight
    dweight = None
    if cache.weight is not None:
        dweight = xp.sum(g * xhat, axis=axes, dtype=xp.float64)
        dweight = xp.reshape(xp.astype(dweight, ct), cache.param_shape)
    dbias = xp.astype(xp.sum(g, axis=axes, dtype=xp.float64), ct) if cache.has_bias else None
    return NormGrads(xp.astype(dx, cache.input_dtype, copy=False), dweight, dbias)


def channel_sums(dy: np.ndarray, xhat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Σ dy`` and ``Σ dy·x̂`` per channel (axis 1), in float64: what a batch norm's backward needs from
    every part of a batch before any part's dx is final."""
    axes = (0, *range(2, dy.ndim))
    xp = namespace(dy, xhat)
    dy64 = xp.astype(dy, xp.float64)
    return xp.sum(dy64, axis=axes), xp.sum(dy64 * xp.reshape(xhat, dy.shape), axis=axes)
