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

Arithmetic runs in the compute dtype of the input; outputs and gradients have the input's dtype.  The exact
GELU evaluates ``math.erf`` per element (NumPy has no erf): exact to double precision, not fast; the fast
paths belong in ``normlab.kernels``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from normlab.backend import check_float_array, compute_dtype

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
    return x.astype(compute_dtype(x.dtype), copy=False), x.dtype


def _check_grad(dy: np.ndarray, cache: ActivationCache, where: str) -> np.ndarray:
    if np.shape(dy) != cache.saved.shape:
        raise ValueError(
            f"{where} backward: expected a gradient of shape {cache.saved.shape}, got {np.shape(dy)}"
        )
    return np.asarray(dy, dtype=cache.saved.dtype)


# --------------------------------------------------------------------------------------- ReLU
def relu_forward(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """``max(x, 0)``; keeps the input for the mask."""
    x = check_float_array(x, "relu")
    return np.maximum(x, 0).astype(x.dtype, copy=False), ActivationCache(x, x.dtype)


def relu_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g = _check_grad(dy, cache, "relu")
    return np.where(cache.saved > 0, g, 0).astype(cache.input_dtype, copy=False)


# --------------------------------------------------------------------------------------- sigmoid
def sigmoid_forward(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """``1 / (1 + exp(-x))``, evaluated without overflow for large ``|x|``; keeps the output."""
    xc, dtype = _as_compute(x, "sigmoid")
    # exp of a non-positive number never overflows: use exp(-|x|) on both sides of 0
    e = np.exp(-np.abs(xc))
    s = np.where(xc >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(xc.dtype, copy=False)
    return s.astype(dtype, copy=False), ActivationCache(s, dtype)


def sigmoid_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g, s = _check_grad(dy, cache, "sigmoid"), cache.saved
    return (g * s * (1 - s)).astype(cache.input_dtype, copy=False)


# --------------------------------------------------------------------------------------- tanh
def tanh_forward(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """``tanh(x)``; keeps the output."""
    xc, dtype = _as_compute(x, "tanh")
    t = np.tanh(xc)
    return t.astype(dtype, copy=False), ActivationCache(t, dtype)


def tanh_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g, t = _check_grad(dy, cache, "tanh"), cache.saved
    return (g * (1 - t * t)).astype(cache.input_dtype, copy=False)


# --------------------------------------------------------------------------------------- GELU
def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``, in ``x``'s dtype."""
    return (0.5 * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))).astype(x.dtype, copy=False)


def gelu_forward(x: np.ndarray, approximate: str = "none") -> tuple[np.ndarray, ActivationCache]:
    """GELU (Hendrycks & Gimpel): ``x * Phi(x)``; ``approximate="tanh"`` uses the tanh formula instead."""
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    xc, dtype = _as_compute(x, "gelu")
    if approximate == "none":
        y = xc * normal_cdf(xc)
    else:
        y = 0.5 * xc * (1.0 + np.tanh(_SQRT_2_OVER_PI * (xc + _GELU_CUBIC * xc**3)))
    return y.astype(dtype, copy=False), ActivationCache(xc, dtype, approximate)


def gelu_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g, x = _check_grad(dy, cache, "gelu"), cache.saved
    if cache.option == "none":
        density = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)  # phi(x)
        slope = normal_cdf(x) + x * density
    else:
        t = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x * x)
        slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    return (g * slope).astype(cache.input_dtype, copy=False)


# --------------------------------------------------------------------------------------- softmax
def softmax_forward(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, ActivationCache]:
    """Softmax along ``axis``, stable: the maximum is subtracted first, so ``exp`` never overflows."""
    xc, dtype = _as_compute(x, "softmax")
    e = np.exp(xc - xc.max(axis=axis, keepdims=True))
    s = e / e.sum(axis=axis, keepdims=True)
    return s.astype(dtype, copy=False), ActivationCache(s, dtype, axis)


def softmax_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    g, s = _check_grad(dy, cache, "softmax"), cache.saved
    # the Jacobian diag(s) - s s^T applied to g, without forming it
    dx = s * (g - np.sum(g * s, axis=cache.option, keepdims=True))
    return dx.astype(cache.input_dtype, copy=False)
