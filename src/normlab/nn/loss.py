"""Loss modules: ``loss = criterion(prediction, target)``, then ``dpred = criterion.backward()``.

They hold the cache between the two calls, like the layers; ``backward`` takes the upstream gradient of the
loss (1.0 by default: the loss itself is being minimised).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normlab import functional as F
from normlab.backend import is_grad_enabled
from normlab.functional.loss import check_reduction
from normlab.nn.module import Module
from normlab.nn.registry import register_module


class _Loss(Module):
    def __init__(self, reduction: str) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction, type(self).__name__)
        self._cache: F.LossCache | None = None

    def backward(self, grad_output: float | np.ndarray = 1.0) -> np.ndarray:
        """dL/d(prediction) of the last forward, scaled by ``grad_output``."""
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}: backward needs a forward pass first (each forward allows one "
                "backward; forward under no_grad() keeps nothing)"
            )
        cache, self._cache = self._cache, None
        return F.loss_backward(grad_output, cache)

    def _keep(self, cache: F.LossCache) -> None:
        self._cache = cache if is_grad_enabled() else None

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


@register_module
class CrossEntropyLoss(_Loss):
    """Cross-entropy between logits (N, C) and integer class labels (N,) in [0, C), through a stable
    log-softmax (do not put a ``Softmax`` before it).

    ``reduction``: ``"mean"`` over samples (default), ``"sum"`` or ``"none"`` (one loss per sample).
    ``label_smoothing`` ε mixes the one-hot target with the uniform distribution: ``q = (1-ε)·onehot + ε/C``.
    """

    def __init__(self, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(reduction)
        if isinstance(label_smoothing, bool) or not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(
                f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing!r}"
            )
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float | np.ndarray:
        loss, cache = F.cross_entropy_forward(
            logits, target, self.reduction, self.label_smoothing, where="CrossEntropyLoss"
        )
        self._keep(cache)
        return loss

    def get_config(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "label_smoothing": self.label_smoothing}

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"


@register_module
class MSELoss(_Loss):
    """Mean squared error between a prediction and a target of the same shape (float).

    ``reduction``: ``"mean"`` over all elements (default), ``"sum"`` or ``"none"``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction)

    def forward(self, prediction: np.ndarray, target: np.ndarray) -> float | np.ndarray:
        loss, cache = F.mse_forward(prediction, target, self.reduction, where="MSELoss")
        self._keep(cache)
        return loss

    def get_config(self) -> dict[str, Any]:
        return {"reduction": self.reduction}
