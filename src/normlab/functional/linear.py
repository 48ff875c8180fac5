r"""The affine (fully connected) layer as a forward/backward pair.

.. math::

    y = x W^\top + b, \qquad
    \frac{\partial L}{\partial x} = g\, W, \qquad
    \frac{\partial L}{\partial W} = g^\top x, \qquad
    \frac{\partial L}{\partial b} = \textstyle\sum_{\text{rows}} g

with :math:`g = \partial L / \partial y`.  ``x`` may have any number of leading axes (``(*, in)``): they are
treated as rows, so ``dW`` and ``db`` sum over all of them.  Arithmetic runs in the compute dtype of ``x``
(float32 for float16/float32, float64 for float64); the output and ``dx`` have ``x``'s dtype.  The code uses the
Array API namespace ``xp`` of the input (NumPy, CuPy, ...; see :func:`normlab.backend.namespace`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normlab.backend import check_float_array, compute_dtype, namespace


class LinearCache(NamedTuple):
    """What :func:`linear_backward` needs."""

    x2d: np.ndarray  # input as rows (M, in), compute dtype: dW needs it
    weight: np.ndarray  # (out, in), compute dtype: dx needs it
    input_shape: tuple[int, ...]
    input_dtype: np.dtype
    has_bias: bool


class LinearGrads(NamedTuple):
    dx: np.ndarray | None  # (*, in); None when not asked for (input_grad=False)
    dweight: np.ndarray  # (out, in)
    dbias: np.ndarray | None  # (out,), None without a bias


def linear_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None
) -> tuple[np.ndarray, LinearCache]:
    """``y = x @ weight.T + bias`` for ``x`` of shape (*, in), ``weight`` (out, in), ``bias`` (out,).

    Returns ``y`` of shape (*, out) in ``x``'s dtype, and the cache for :func:`linear_backward`.
    """
    x = check_float_array(x, "linear")
    out_features, in_features = weight.shape
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"linear: expected input of shape (*, {in_features}), got shape {tuple(x.shape)}"
        )
    xp = namespace(x, weight, bias)
    ct = compute_dtype(x.dtype, xp)
    x2d = xp.astype(xp.reshape(x, (-1, in_features)), ct, copy=False)
    w = xp.astype(weight, ct, copy=False)
    y = x2d @ w.T
    if bias is not None:
        y += xp.astype(bias, ct, copy=False)
    y = xp.astype(xp.reshape(y, (*x.shape[:-1], out_features)), x.dtype, copy=False)
    return y, LinearCache(x2d, w, tuple(x.shape), x.dtype, bias is not None)


def linear_backward(dy: np.ndarray, cache: LinearCache, input_grad: bool = True) -> LinearGrads:
    """Gradients of :func:`linear_forward` for ``dy`` of shape (*, out).

    ``input_grad=False`` skips ``dx`` (returned as ``None``): the first layer of a network, whose input is
    data, needs only its parameter gradients.
    """
    out_features = cache.weight.shape[0]
    expected = (*cache.input_shape[:-1], out_features)
    if tuple(dy.shape) != expected:
        raise ValueError(
            f"linear backward: expected a gradient of shape {expected}, got {dy.shape}"
        )
    xp = namespace(dy, cache.weight)
    g = xp.astype(xp.reshape(dy, (-1, out_features)), cache.weight.dtype, copy=False)
    dx = None
    if input_grad:
        dx = xp.reshape(g @ cache.weight, cache.input_shape)
        dx = xp.astype(dx, cache.input_dtype, copy=False)
    dweight = g.T @ cache.x2d
    dbias = xp.sum(g, axis=0) if cache.has_bias else None
    return LinearGrads(dx, dweight, dbias)
