"""The optimizers' update rules in numba: one pass over each parameter instead of about ten NumPy passes.

Same signatures as :mod:`normlab.functional.optim` and the same numbers bit for bit: each element goes through
the reference's operations in the reference's order, in the parameter's dtype (the scalars are cast to it
first, as NumPy casts a Python float operand), with no fast-math flags (so no fused multiply-adds).
There is no AMSGrad loop; :func:`normlab.kernels.resolve` sends AMSGrad, float16 and arrays that are not
contiguous and writeable, or not all of one dtype, to the reference.

Small parameters run a serial loop (a parallel region costs about 5 µs to start); large ones a parallel loop,
which LLVM also vectorizes (the serial loop it does not: it cannot rule out that the four arrays overlap).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from normlab.kernels._compile import entry, helper

_PARALLEL_FROM = 16384  # elements; below, the serial loop is faster


@helper(inline="always")
def _adam_step(i, p, g, m, v, decay, l2, c1, b2, c2, step_size, sqrt_c2, eps):
    """Element i of :func:`normlab.functional.optim.adam_update`, operation for operation.

    ``decay`` is AdamW's factor (1 - lr·wd; 1 for Adam), ``l2`` Adam's weight decay (0 for AdamW),
    ``c1 = 1 - beta1``, ``b2 = beta2``, ``c2 = 1 - beta2``; all in the parameter's dtype.
    """
    if decay != 1:
        p[i] *= decay
    gi = g[i]
    if l2 != 0:
        gi = gi + l2 * p[i]
    m[i] += c1 * (gi - m[i])
    v[i] *= b2
    v[i] += c2 * gi * gi
    p[i] -= step_size * m[i] / (np.sqrt(v[i]) / sqrt_c2 + eps)


@entry()
def _adam_serial(p, g, m, v, decay, l2, c1, b2, c2, step_size, sqrt_c2, eps):
    for i in range(p.shape[0]):
        _adam_step(i, p, g, m, v, decay, l2, c1, b2, c2, step_size, sqrt_c2, eps)


@entry(parallel=True)
def _adam_parallel(p, g, m, v, decay, l2, c1, b2, c2, step_size, sqrt_c2, eps):
    for i in prange(p.shape[0]):
        _adam_step(i, p, g, m, v, decay, l2, c1, b2, c2, step_size, sqrt_c2, eps)


def adam_update(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    """As :func:`normlab.functional.optim.adam_update`, for contiguous, writeable arrays of one dtype
    (float32 or float64); ``max_exp_avg_sq`` must be ``None`` (no AMSGrad)."""
    arrays = (param, grad, exp_avg, exp_avg_sq)
    dt = param.dtype
    t = dt.type
    scalars = (
        t(1 - lr * weight_decay) if decoupled else t(1),
        t(0) if decoupled or weight_decay == 0 else t(weight_decay),
        t(1 - beta1),
        t(beta2),
        t(1 - beta2),
        t(lr / (1 - beta1**step)),
        t(math.sqrt(1 - beta2**step)),
        t(eps),
    )
    flat = [a.reshape(-1) for a in arrays]
    loop = _adam_parallel if param.size >= _PARALLEL_FROM else _adam_serial
    loop(*flat, *scalars)
