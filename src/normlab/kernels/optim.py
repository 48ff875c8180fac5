"""The optimizers' update rules in numba: one pass over each parameter instead of about ten NumPy passes.

Same signatures as :mod:`normlab.optim.updates` and the same numbers bit for bit: each element goes through
the reference's operations in the reference's order, in the parameter's dtype (the scalars are cast to it
first, as NumPy casts a Python float operand), with no fast-math flags (so no fused multiply-adds).
AMSGrad, float16 and arrays that are not contiguous go to the reference.

Small parameters run a serial loop (a parallel region costs about 5 µs to start); large ones a parallel loop,
which LLVM also vectorizes (the serial loop it does not: it cannot rule out that the four arrays overlap).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from normlab.kernels.norm import _compile_lock
from normlab.optim import updates as reference

_PARALLEL_FROM = 16384  # elements; below, the serial loop is faster


@njit(cache=True, inline="always")
def _adam_step(i, p, g, m, v, decay, l2, c1, b2, c2, step_size, sqrt_c2, eps):
    """Element i of :func:`normlab.optim.updates.adam_update`, operation for operation.

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


@njit(cache=True)
def _adam_serial(p, g, m, v, decay, l2, c1, b2, c2, step_size, sqrt_c2, eps):
    for i in range(p.shape[0]):
        _adam_step(i, p, g, m, v, decay, l2, c1, b2, c2, step_size, sqrt_c2, eps)


@njit(cache=True, parallel=True)
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
    """As :func:`normlab.optim.updates.adam_update`."""
    arrays = (param, grad, exp_avg, exp_avg_sq)
    dt = param.dtype
    if (
        max_exp_avg_sq is not None
        or dt not in (np.float32, np.float64)
        or any(a.dtype != dt or not a.flags.c_contiguous for a in arrays)
        or not all(a.flags.writeable for a in (param, exp_avg, exp_avg_sq))
    ):
        reference.adam_update(
            param,
            grad,
            exp_avg,
            exp_avg_sq,
            max_exp_avg_sq,
            step=step,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled,
        )
        return
    _ensure_compiled(dt)
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


_ready: set[np.dtype] = set()


def _ensure_compiled(dtype: np.dtype) -> None:
    """Compile (or load from the disk cache) both loops for ``dtype`` once per process, under the kernels'
    file lock (see :mod:`normlab.kernels.norm`: numba's cache is not safe against concurrent first compiles)."""
    if dtype in _ready:
        return
    with _compile_lock():
        if dtype not in _ready:
            a = [np.zeros(2, dtype) for _ in range(4)]
            one = dtype.type(1)
            for loop in (_adam_serial, _adam_parallel):
                loop(*a, one, one, one, one, one, one, one, one)
            _ready.add(dtype)
