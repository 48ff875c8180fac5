"""Activation layers: thin modules around the pairs in :mod:`normlab.functional.activation` (no parameters).

Each runs the op :func:`normlab.kernels.resolve` returns (numba fast paths for ReLU and Sigmoid, the
reference otherwise or with ``NORMLAB_KERNELS=reference``).  A ReLU or Sigmoid right after a batch norm runs
fused into it in the model :func:`normlab.nn.fuse` returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normlab import functional as F
from normlab import kernels
from normlab.nn.layers import CachedLayer
from normlab.nn.registry import register_module


class _Activation(CachedLayer):
    """An elementwise activation: the op named ``op_name`` does everything; the cache keeps the backward
    that belongs to the forward that ran."""

    op_name: str  # the op in normlab.kernels' backend record

    def _args(self, x: np.ndarray) -> tuple[Any, ...]:
        """Extra arguments of the forward after the input (checked against it)."""
        return ()

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        op = kernels.resolve(self.op_name, x)
        y, cache = op.forward(x, *self._args(x))
        self._keep((cache, op.backward), y)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        dy, (cache, backward) = self._take_cache(grad_output)
        return backward(dy, cache)


@register_module
class ReLU(_Activation):
    """``max(x, 0)``; the derivative at 0 is taken as 0 (PyTorch's choice)."""

    op_name = "relu"


@register_module
class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``, computed without overflow."""

    op_name = "sigmoid"


@register_module
class Tanh(_Activation):
    """``tanh(x)``."""

    op_name = "tanh"


@register_module
class GELU(_Activation):
    """``x * Phi(x)`` with the exact normal CDF (``approximate="none"``, PyTorch's default) or the tanh
    approximation (``approximate="tanh"``)."""

    op_name = "gelu"

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in F.GELU_APPROXIMATIONS:
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def _args(self, x: np.ndarray) -> tuple[Any, ...]:
        return (self.approximate,)

    def get_config(self) -> dict[str, Any]:
        return {"approximate": self.approximate}

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


@register_module
class Softmax(_Activation):
    """Softmax along ``dim`` (default -1, the last axis), stable for large inputs.

    For classification, feed the logits to ``CrossEntropyLoss`` instead: it applies a stable log-softmax itself.
    """

    op_name = "softmax"

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = int(dim)

    def _args(self, x: np.ndarray) -> tuple[Any, ...]:
        if not -x.ndim <= self.dim < max(x.ndim, 1):
            raise ValueError(
                f"{self._label()}: dim {self.dim} is out of range for input of shape {x.shape}"
            )
        return (self.dim,)

    def get_config(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
