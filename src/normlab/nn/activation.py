"""Activation layers: thin modules around the pairs in :mod:`normlab.functional.activation` (no parameters)."""

from __future__ import annotations

from typing import Any

import numpy as np

from normlab import functional as F
from normlab.nn.layers import CachedLayer
from normlab.nn.registry import register_module


class _Activation(CachedLayer):
    """An elementwise activation: the functional pair does everything."""

    def _forward_fn(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    _backward_fn: Any

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, cache = self._forward_fn(self._check_input(x))
        self._keep(cache, y)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        dy, cache = self._take_cache(grad_output)
        return type(self)._backward_fn(dy, cache)


@register_module
class ReLU(_Activation):
    """``max(x, 0)``; the derivative at 0 is taken as 0 (PyTorch's choice)."""

    _backward_fn = staticmethod(F.relu_backward)

    def _forward_fn(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        return F.relu_forward(x)


@register_module
class Sigmoid(_Activation):
    """``1 / (1 + exp(-x))``, computed without overflow."""

    _backward_fn = staticmethod(F.sigmoid_backward)

    def _forward_fn(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        return F.sigmoid_forward(x)


@register_module
class Tanh(_Activation):
    """``tanh(x)``."""

    _backward_fn = staticmethod(F.tanh_backward)

    def _forward_fn(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        return F.tanh_forward(x)


@register_module
class GELU(_Activation):
    """``x * Phi(x)`` with the exact normal CDF (``approximate="none"``, PyTorch's default) or the tanh
    approximation (``approximate="tanh"``)."""

    _backward_fn = staticmethod(F.gelu_backward)

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in F.GELU_APPROXIMATIONS:
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def _forward_fn(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        return F.gelu_forward(x, self.approximate)

    def get_config(self) -> dict[str, Any]:
        return {"approximate": self.approximate}

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


@register_module
class Softmax(_Activation):
    """Softmax along ``dim`` (default -1, the last axis), stable for large inputs.

    For classification, feed the logits to ``CrossEntropyLoss`` instead: it applies a stable log-softmax itself.
    """

    _backward_fn = staticmethod(F.softmax_backward)

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = int(dim)

    def _forward_fn(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        if not -x.ndim <= self.dim < max(x.ndim, 1):
            raise ValueError(
                f"{self._label()}: dim {self.dim} is out of range for input of shape {x.shape}"
            )
        return F.softmax_forward(x, self.dim)

    def get_config(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
