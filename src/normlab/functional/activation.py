r"""Elementwise activations and softmax as forward/backward pairs; each derivative sits under its forward.

========  =============================================  ==============================================
op        forward                                        derivative used in backward
========  =============================================  ==============================================
ReLU      :math:`\max(x, 0)`                             :math:`1[x > 0]` (0 at x = 0, as PyTorch)
sigmoid   :math:`\sigma(x) = 1 / (1 + e^{-x})`           :math:`\sigma(x)(1 - \sigma(x))` from the output
tanh      :math:`\tanh x`                                :math:`1 - \tanh^2 x` from the output
GELU      :math:`x\,\Phi(x)`, :math:`\Phi` the normal    :math:`\Phi(x) + x\,\varphi(x)`
          CDF (exact, via erf)
GELU      :math:`\tfrac12 x (1 + \tanh u)`,              :math:`\tfrac12(1 + \tanh u) +
(tanh)    :math:`u = \sqrt{2/\pi}(x + 0.044715 x^3)`     \tfrac12 x (1 - \tanh^2 u)\, u'`
softmax   :math:`s_i = e^{x_i} / \sum_j e^{x_j}`         :math:`s \odot (g - \langle g, s\rangle)`
========  =============================================  ==============================================

Arithmetic runs in the compute dtype of the input; outputs and gradients have the input's dtype.  The code
uses the Array API namespace ``xp`` of the input (NumPy, CuPy, ...; see :func:`normlab.backend.namespace`),
except the exact GELU: it evaluates ``math.erf`` per element (neither NumPy nor the standard has erf), exact to
double precision, not fast, and for NumPy arrays only; the fast paths belong in ``normlab.kernels``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from normlab.backend import check_float_array, compute_dtype, is_numpy, namespace

_erf = np.frompyfunc(math.erf, 1, 1)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
GELU_APPROXIMATIONS = ("none", "tanh")


class ActivationCache(NamedTuple):
    """What an activation's backward needs: ``saved`` is the input or the output, depending on the op."""

    saved: np.ndarray
    input_dtype: np.dtype
    option: str | int | None = None  # GELU's approximation, softmax's axis


def _as_compute(x: np.ndarray, where: str) -> tuple[np.ndarray, np.dtype]:
    x = check_float_array(x, where)
    xp = namespace(x)
    return xp.astype(x, compute_dtype(x.dtype, xp), copy=False), x.dtype


def _check_grad(dy: np.ndarray, cache: ActivationCache, where: str) -> np.ndarray:
    shape = tuple(dy.shape) if hasattr(dy, "shape") else np.shape(dy)
    if shape != tuple(cache.saved.shape):
        raise ValueError(
            f"{where} backward: expected a gradient of shape {tuple(cache.saved.shape)}, got {shape}"
        )
    return namespace(dy, cache.saved).asarray(dy, dtype=cache.saved.dtype)


# --------------------------------------------------------------------------------------- ReLU
def relu_forward(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """``max(x, 0)``; keeps the input for the mask."""
    x = check_float_array(x, "relu")
    xp = namespace(x)
    return xp.astype(xp.maximum(x, 0), x.dtype, copy=False), ActivationCache(x, x.dtype)


def relu_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g = _check_grad(dy, cache, "relu")
    xp = namespace(g)
    return xp.astype(xp.where(cache.saved > 0, g, xp.zeros_like(g)), cache.input_dtype, copy=False)


# --------------------------------------------------------------------------------------- sigmoid
def sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """``1 / (1 + exp(-x))``, evaluated without overflow for large ``|x|``; keeps the output."""
    xc, dtype = _as_compute(x, "sigmoid")
    xp = namespace(xc)
    # exp of a non-positive number never overflows: use exp(-|x|) on both sides of 0
    e = xp.exp(-xp.abs(xc))
    s = xp.astype(xp.where(xc >= 0, 1.0 / (1.0 + e), e / (1.0 + e)), xc.dtype, copy=False)
    return xp.astype(s, dtype, copy=False), ActivationCache(s, dtype)


def sigmoid_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g, s = _check_grad(dy, cache, "sigmoid"), cache.saved
    return namespace(g).astype(g * s * (1 - s), cache.input_dtype, copy=False)


# --------------------------------------------------------------------------------------- tanh
def tanh_forward(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """``tanh(x)``; keeps the output."""
    xc, dtype = _as_compute(x, "tanh")
    xp = namespace(xc)
    t = xp.tanh(xc)
    return xp.astype(t, dtype, copy=False), ActivationCache(t, dtype)


def tanh_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g, t = _check_grad(dy, cache, "tanh"), cache.saved
    return namespace(g).astype(g * (1 - t * t), cache.input_dtype, copy=False)


# --------------------------------------------------------------------------------------- GELU
def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``, in ``x``'s dtype (NumPy arrays only: the
    Array API standard has no erf)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"normal_cdf (exact GELU): erf is not in the Array API standard, so the reference takes NumPy "
            f"arrays only, got {type(x).__module__}.{type(x).__name__}; use approximate='tanh'"
        )
    return (0.5 * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))).astype(x.dtype, copy=False)


def gelu_forward(x: np.ndarray, approximate: str = "none") -> tuple[np.ndarray, ActivationCache]:
    """GELU (Hendrycks & Gimpel): ``x * Phi(x)``; ``approximate="tanh"`` uses the tanh formula instead."""
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    xc, dtype = _as_compute(x, "gelu")
    xp = namespace(xc)
    if approximate == "none":
        if not is_numpy(xp):
            raise TypeError(
                "gelu(approximate='none'): the exact GELU needs erf, which the Array API standard lacks; "
                f"the reference takes NumPy arrays only for it, got {type(xc).__module__}."
                f"{type(xc).__name__}; use approximate='tanh'"
            )
        y = xc * normal_cdf(xc)
    else:
        y = 0.5 * xc * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (xc + _GELU_CUBIC * xc**3)))
    return xp.astype(y, dtype, copy=False), ActivationCache(xc, dtype, approximate)


def gelu_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g, x = _check_grad(dy, cache, "gelu"), cache.saved
    xp = namespace(g, x)
    if cache.option == "none":
        density = xp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)  # phi(x)
        slope = normal_cdf(x) + x * density
    else:
        t = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x * x)
        slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    return xp.astype(g * slope, cache.input_dtype, copy=False)


# --------------------------------------------------------------------------------------- softmax
def softmax_forward(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, ActivationCache]:
    """Softmax along ``axis``, stable: the maximum is subtracted first, so ``exp`` never overflows."""
    xc, dtype = _as_compute(x, "softmax")
    xp = namespace(xc)
    e = xp.exp(xc - xp.max(xc, axis=axis, keepdims=True))
    s = e / xp.sum(e, axis=axis, keepdims=True)
    return xp.astype(s, dtype, copy=False), ActivationCache(s, dtype, axis)


def softmax_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g, s = _check_grad(dy, cache, "softmax"), cache.saved
    xp = namespace(g, s)
    # the Jacobian diag(s) - s s^T applied to g, without forming it
    dx = s * (g - xp.sum(g * s, axis=cache.option, keepdims=True))
    return xp.astype(dx, cache.input_dtype, copy=False)
