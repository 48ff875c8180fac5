"""Batch norm over a batch that arrives in parts: what gradient accumulation needs from the layers.

``fit(..., accumulate=k)`` cuts each step's batch into k micro-batches that are never in memory together.
Two ways for batch norm to live with that (the driver is :mod:`normlab.train.accumulate`):

* **ghost** — each micro-batch is normalized with its own statistics (Ghost Batch Norm with
  ``virtual_batch_size`` = the micro-batch), and the running statistics are updated once per step from the
  micro-batches' statistics merged exactly (:meth:`~normlab.nn.BatchNorm2d.defer_batch_stats`).
* **exact** — every micro-batch is normalized with the statistics of the whole step's batch, and its
  backward uses the whole batch's ``Σdy`` and ``Σdy·x̂``: the step is the full-batch step, number for number.
  Neither is known from one micro-batch, so the driver runs extra passes, and each layer here plays its part
  in them (:class:`SplitBatchNorm`): a forward pass per batch-norm layer to gather its statistics (the first
  layer still missing them gathers and stops the pass), then a forward + backward pass per layer, last
  first, to gather its sums (the first layer reached in backward that still misses them gathers and stops
  the pass), then the pass whose gradients are the step's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normlab import functional as F
from normlab.backend import is_numpy, namespace
from normlab.nn.module import Module
from normlab.nn.norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _flat

_PLAIN_BATCH_NORMS = (BatchNorm1d, BatchNorm2d, BatchNorm3d)


class StopPass(Exception):
    """Raised by the layer that gathered what the current pass was for: nothing after it matters."""


class SplitBatchNorm:
    """The exact-mode state of one batch-norm layer during one step (see the module docstring)."""

    def __init__(self, layer: Module) -> None:
        self.layer = layer
        self.parts: list[
            tuple[np.ndarray, np.ndarray, int]
        ] = []  # moments of the micro-batches seen
        self.stats: tuple[np.ndarray, np.ndarray, int] | None = (
            None  # the whole batch's (mean, var, n)
        )
        self.sum_parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.sums: tuple[np.ndarray, np.ndarray] | None = None  # the whole batch's Σdy, Σdy·x̂

    # ------------------------------------------------------------------ passes
    def forward(self, x: np.ndarray) -> np.ndarray:
        layer = self.layer
        axes = (0, *range(2, x.ndim))
        if self.stats is None:  # this pass gathers this layer's statistics
            mean, var = F.moments(x, axes)
            self.parts.append((mean, var, x.size // x.shape[1]))
            raise StopPass
        mean, var, _ = self.stats
        y, cache = F.batch_norm_forward(
            x, layer._w(), layer._b(), mean, var, use_input_stats=False, eps=layer.eps
        )
        layer._keep(cache, self._backward)
        return y

    def _backward(self, dy: np.ndarray, cache: Any) -> F.NormGrads:
        if self.sums is None:  # this pass gathers this layer's Σdy, Σdy·x̂
            self.sum_parts.append(F.channel_sums(dy, cache.xhat))
            raise StopPass
        return F.batch_norm_backward_from_sums(dy, cache, *self.sums, self.stats[2])

    # ------------------------------------------------------------------ between passes
    def finish_stats(self) -> bool:
        """Merge the gathered statistics; ``True`` if this pass was gathering them."""
        if self.stats is not None or not self.parts:
            return False
        self.stats = F.merge_moments(self.parts)
        return True

    def finish_sums(self) -> bool:
        """Add up the gathered sums; ``True`` if this pass was gathering them."""
        if self.sums is not None or not self.sum_parts:
            return False
        xp = namespace(self.sum_parts[0][0])
        if is_numpy(xp):
            self.sums = (
                np.sum([p[0] for p in self.sum_parts], axis=0),
                np.sum([p[1] for p in self.sum_parts], axis=0),
            )
        else:  # arrays on a device: stacked and summed there
            self.sums = tuple(
                xp.sum(xp.stack([p[i] for p in self.sum_parts]), axis=0) for i in (0, 1)
            )
        return True

    def update_running_stats(self) -> None:
        """One running-statistics update from the whole batch's statistics (as the full batch would)."""
        if self.layer.track_running_stats and self.stats is not None:
            mean, var, count = self.stats
            self.layer._apply_batch_stats(_flat(mean), _flat(var), count)


def split_batch_layers(model: Module, where: str) -> list[Module]:
    """The batch-norm layers of ``model`` that exact accumulation drives; ``ValueError`` for a layer it
    cannot make exact: Ghost BN or Batch Renorm (their statistics are per chunk, or per step by design) and
    dropout (a batch of k·b draws other masks than k batches of b, so no split step equals the full one)."""
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, _PLAIN_BATCH_NORMS) and type(m) in _PLAIN_BATCH_NORMS:
            if m.virtual_batch_size is not None:
                raise ValueError(
                    f"{where}: accumulation 'exact' needs plain batch norm, but layer {name!r} has "
                    f"virtual_batch_size={m.virtual_batch_size}; use accumulation='ghost'"
                )
            if m.training:
                layers.append(m)
        elif type(m).__name__.startswith("BatchRenorm"):
            raise ValueError(
                f"{where}: accumulation 'exact' does not apply to {type(m).__name__} layer {name!r}; "
                "use accumulation='ghost'"
            )
        elif type(m).__name__ == "Dropout" and m.training and getattr(m, "p", 0) > 0:
            raise ValueError(
                f"{where}: accumulation 'exact' cannot reproduce a full batch through Dropout layer "
                f"{name!r} (p={m.p}): its masks depend on how the batch is cut; use accumulation='ghost'"
            )
    return layers
