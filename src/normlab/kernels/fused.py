"""Batch norm with a ReLU or sigmoid fused into it: the fast path of :class:`normlab.nn.BatchNormAct`.

The batch norm kernel writes a fresh output and the activation is applied to it in place, one parallel pass
while it is warm in cache: no second output array, no second layer call.  The values are those of the two
kernels run one after the other (the batch norm kernel, then :mod:`normlab.kernels.layers`' activation), bit
for bit; the reference is the two ops in sequence (:class:`normlab.nn.BatchNormAct` without a fast path).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normlab.functional.activation import ActivationCache
from normlab.functional.norm import NormGrads
from normlab.kernels import layers, norm


class BatchNormActCache(NamedTuple):
    """The caches of the two halves; ``mean``, ``var``, ``count``, ``input_shape`` are the batch norm's (what
    the layer reads to update its running statistics and to check the gradient's shape)."""

    norm: norm.KernelNormCache
    act: ActivationCache  # the activation's output: enough to rebuild the derivative of either

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


def _forward(
    activation: str, x: np.ndarray, *args: object, **kwargs: object
) -> tuple[np.ndarray, BatchNormActCache]:
    y, norm_cache = norm.batch_norm_forward(x, *args, **kwargs)  # type: ignore[arg-type]
    layers.activation_inplace(y, activation)
    # ReLU's backward needs y > 0, which the output tells as well as the input (relu(y) > 0 iff y > 0);
    # sigmoid's needs the output itself
    return y, BatchNormActCache(norm_cache, ActivationCache(y, y.dtype))


def batch_norm_relu_forward(
    x: np.ndarray, *args: object, **kwargs: object
) -> tuple[np.ndarray, BatchNormActCache]:
    """``relu(batch_norm(x))``; arguments as :func:`normlab.kernels.norm.batch_norm_forward`."""
    return _forward("relu", x, *args, **kwargs)


def batch_norm_relu_backward(dy: np.ndarray, cache: BatchNormActCache) -> NormGrads:
    """ReLU's derivative (one parallel pass), then the batch norm backward kernel."""
    return norm.batch_norm_backward(layers.relu_backward(dy, cache.act), cache.norm)


def batch_norm_sigmoid_forward(
    x: np.ndarray, *args: object, **kwargs: object
) -> tuple[np.ndarray, BatchNormActCache]:
    """``sigmoid(batch_norm(x))``; arguments as :func:`normlab.kernels.norm.batch_norm_forward`."""
    return _forward("sigmoid", x, *args, **kwargs)


def batch_norm_sigmoid_backward(dy: np.ndarray, cache: BatchNormActCache) -> NormGrads:
    """The sigmoid's derivative from its output (one parallel pass), then the batch norm backward kernel."""
    return norm.batch_norm_backward(layers.sigmoid_backward(dy, cache.act), cache.norm)
