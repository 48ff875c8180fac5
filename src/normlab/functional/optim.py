r"""The optimizers' update rules as plain functions on arrays: the readable reference.

Each updates its arrays in place and returns nothing.  The optimizer classes keep the state and the
hyper-parameters and call these through :func:`normlab.kernels.resolve`, which returns these or their numba
twins in :mod:`normlab.kernels.optim` (tested equal bit for bit: same operations, same order, same dtype).

Scalars are Python floats; NumPy (and any Array API namespace) casts them to the arrays' dtype before each
operation, so a float32 parameter is updated entirely in float32 arithmetic.  The arrays may be of any Array API
namespace (NumPy, CuPy, ...; see :func:`normlab.backend.namespace`).
"""

from __future__ import annotations

import math

import numpy as np

from normlab.backend import namespace


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
    r"""One Adam / AdamW step (see :mod:`normlab.optim.adaptive` for the formulas), ``step`` counted from 1.

    ``max_exp_avg_sq`` is the AMSGrad running maximum (``None`` without AMSGrad); ``decoupled`` selects AdamW's
    weight decay :math:`\theta \leftarrow \theta(1 - \eta\lambda)` instead of the L2 term in the gradient.
    """
    if decoupled:
        param *= 1 - lr * weight_decay
        g = grad
    else:
        g = grad + weight_decay * param if weight_decay != 0 else grad
    exp_avg += (1 - beta1) * (g - exp_avg)  # m = beta1·m + (1 - beta1)·g, as a step towards g
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    step_size = lr / (1 - beta1**step)
    sqrt_c2 = math.sqrt(1 - beta2**step)
    xp = namespace(param)
    v = exp_avg_sq
    if max_exp_avg_sq is not None:
        max_exp_avg_sq[...] = xp.maximum(max_exp_avg_sq, exp_avg_sq)
        v = max_exp_avg_sq
    param -= step_size * exp_avg / (xp.sqrt(v) / sqrt_c2 + eps)


def sgd_update(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> np.ndarray | None:
    """One SGD step (see :mod:`normlab.optim.sgd` for the formulas) on ``param`` in place.

    Returns the momentum buffer (``None`` without momentum): ``momentum_buffer`` updated in place, or, on the
    first step (``None`` given), a new one holding this step's direction.
    """
    d = grad + weight_decay * param if weight_decay != 0 else grad
    if momentum != 0:
        if momentum_buffer is None:
            momentum_buffer = namespace(d).asarray(d, copy=True)
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1 - dampening) * d
        d = d + momentum * momentum_buffer if nesterov else momentum_buffer
    param -= lr * d
    return momentum_buffer
