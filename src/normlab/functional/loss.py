r"""Losses as forward/backward pairs: cross-entropy from logits, and mean squared error.

**Cross-entropy** of logits :math:`z` (N, C) against class labels :math:`y` (N,), computed through a stable
log-softmax (the row maximum is subtracted before ``exp``, so nothing overflows):

.. math::

    \log p_{ic} = z_{ic} - \max_k z_{ik} - \log \textstyle\sum_k e^{z_{ik} - \max_k z_{ik}}, \qquad
    \ell_i = -\textstyle\sum_c q_{ic} \log p_{ic}, \qquad
    q_{ic} = (1 - \varepsilon)\, 1[c = y_i] + \varepsilon / C

with label smoothing :math:`\varepsilon` (0 gives the one-hot target and :math:`\ell_i = -\log p_{i y_i}`).
Its gradient is the classic :math:`\partial \ell_i / \partial z_{ic} = p_{ic} - q_{ic}`.

**Mean squared error**: :math:`\ell = (\hat y - t)^2` elementwise, :math:`\partial\ell/\partial\hat y =
2(\hat y - t)`.

``reduction`` is ``"mean"`` (over samples for cross-entropy, over all elements for MSE), ``"sum"`` or
``"none"`` (per sample / per element).  Forward returns a Python float for mean/sum and an array for none;
backward takes the upstream gradient of that value (1.0 for a loss being minimised).  The code uses the Array
API namespace ``xp`` of the inputs (NumPy, CuPy, ...; see :func:`normlab.backend.namespace`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import array_api_compat
import numpy as np

from normlab.backend import check_float_array, compute_dtype, device_of, namespace

REDUCTIONS = ("mean", "sum", "none")


class LossCache(NamedTuple):
    """What a loss backward needs."""

    dloss_dpred: np.ndarray  # per-element gradient before reduction, compute dtype
    reduction: str
    count: int  # what "mean" divided by
    item_shape: tuple[
        int, ...
    ]  # shape of the unreduced loss: (N,) for cross-entropy, pred's for MSE
    pred_shape: tuple[int, ...]
    pred_dtype: np.dtype


def check_reduction(reduction: str, where: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def check_class_labels(target: object, n: int, num_classes: int, where: str) -> np.ndarray:
    """``target`` as an integer array of shape (n,) with values in [0, num_classes), or a clear error."""
    t = target if array_api_compat.is_array_api_obj(target) else np.asarray(target)
    xp = namespace(t)
    if not xp.isdtype(t.dtype, "integral"):
        raise TypeError(
            f"{where}: expected integer class labels (e.g. int64) of shape ({n},), got dtype {t.dtype}; "
            "cast float labels with .astype(np.int64) if they hold class indices"
        )
    if tuple(t.shape) != (n,):
        raise ValueError(
            f"{where}: expected labels of shape ({n},) for {n} samples, got {tuple(t.shape)}"
        )
    if n:
        low, high = int(xp.min(t)), int(xp.max(t))
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{where}: labels must lie in [0, {num_classes}) for {num_classes} classes, "
                f"got values in [{low}, {high}]"
            )
    return t


def _reduce(per_item: np.ndarray, reduction: str, dtype: np.dtype) -> float | np.ndarray:
    """The unreduced loss in the prediction's ``dtype``, or its mean or sum as a float (summed in float64)."""
    xp = namespace(per_item)
    if reduction == "none":
        return xp.astype(per_item, dtype, copy=False)
    total = float(xp.sum(per_item, dtype=xp.float64))
    return total / math.prod(per_item.shape) if reduction == "mean" else total


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``log(softmax(z))`` along ``axis``, without overflow or ``log(0)``."""
    xp = namespace(z)
    shifted = z - xp.max(z, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def cross_entropy_forward(
    logits: np.ndarray,
    target: np.ndarray,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    where: str = "cross_entropy",
) -> tuple[float | np.ndarray, LossCache]:
    """Cross-entropy of ``logits`` (N, C) against integer labels ``target`` (N,) in [0, C).

    ``where`` names the caller in error messages.
    """
    logits = check_float_array(logits, where, "logits")
    check_reduction(reduction, where)
    if logits.ndim != 2:
        raise ValueError(f"{where}: expected logits of shape (N, C), got shape {logits.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{where}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    n, num_classes = logits.shape
    labels = check_class_labels(target, n, num_classes, where)
    if n == 0 and reduction == "mean":
        raise ValueError(f"{where}: the mean loss of an empty batch is undefined (got 0 samples)")

    xp = namespace(logits, labels)
    logp = log_softmax(xp.astype(logits, compute_dtype(logits.dtype, xp), copy=False))
    # the target q: label_smoothing / C everywhere, plus 1 - label_smoothing at each row's label
    classes = xp.arange(num_classes, device=device_of(logits))
    one_hot = xp.astype(labels[:, None] == classes, logp.dtype)
    q = xp.full_like(logp, label_smoothing / num_classes) + (1.0 - label_smoothing) * one_hot
    per_sample = -xp.sum(q * logp, axis=1)
    cache = LossCache(xp.exp(logp) - q, reduction, n, (n,), tuple(logits.shape), logits.dtype)
    return _reduce(per_sample, reduction, logits.dtype), cache


def mse_forward(
    pred: np.ndarray, target: np.ndarray, reduction: str = "mean", *, where: str = "mse"
) -> tuple[float | np.ndarray, LossCache]:
    """Mean squared error between ``pred`` and ``target`` of the same shape."""
    pred = check_float_array(pred, where, "prediction")
    target = check_float_array(target, where, "target")
    check_reduction(reduction, where)
    if pred.shape != target.shape:
        raise ValueError(
            f"{where}: prediction and target must have the same shape, got {pred.shape} and {target.shape}"
        )
    size = math.prod(pred.shape)
    if size == 0 and reduction == "mean":
        raise ValueError(f"{where}: the mean loss of an empty batch is undefined (got 0 elements)")
    xp = namespace(pred, target)
    ct = compute_dtype(pred.dtype, xp)
    diff = xp.astype(pred, ct) - xp.astype(target, ct)
    shape = tuple(pred.shape)
    cache = LossCache(2.0 * diff, reduction, size, shape, shape, pred.dtype)
    return _reduce(diff * diff, reduction, pred.dtype), cache


def loss_backward(dloss: float | np.ndarray, cache: LossCache) -> np.ndarray:
    """Gradient of a loss with respect to its prediction (the logits for cross-entropy).

    ``dloss`` is the gradient of the reduced loss: a scalar for mean/sum, or for ``reduction="none"`` an
    array of the unreduced loss's shape (N,) for cross-entropy, the prediction's shape for MSE.
    """
    g = cache.dloss_dpred
    xp = namespace(g, dloss)
    upstream = xp.asarray(dloss, dtype=g.dtype, device=device_of(g))
    expected = cache.item_shape if cache.reduction == "none" else ()
    if tuple(upstream.shape) != expected:
        raise ValueError(
            f"loss backward: expected an upstream gradient of shape {expected} "
            f"(reduction={cache.reduction!r}), got {tuple(upstream.shape)}"
        )
    if cache.reduction == "mean":
        upstream = upstream / cache.count
    # per-sample values of cross-entropy broadcast over the classes of their row
    upstream = xp.reshape(upstream, tuple(upstream.shape) + (1,) * (g.ndim - upstream.ndim))
    return xp.astype(g * upstream, cache.pred_dtype, copy=False)


def cross_entropy_backward(dloss: float | np.ndarray, cache: LossCache) -> np.ndarray:
    """``dlogits`` (N, C) of :func:`cross_entropy_forward`: ``(softmax - q) * dloss`` (divided by N for
    the mean)."""
    return loss_backward(dloss, cache)


def mse_backward(dloss: float | np.ndarray, cache: LossCache) -> np.ndarray:
    """``dpred`` of :func:`mse_forward`: ``2 (pred - target) * dloss`` (divided by the count for the mean)."""
    return loss_backward(dloss, cache)
