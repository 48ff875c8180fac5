"""One training step, the unit ``fit`` repeats (the data flow of ``ARCHITECTURE.md``)::

out = model(xb); loss = criterion(out, yb); model.backward(criterion.backward()); optimizer.step()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from normlab.nn.module import Module
from normlab.optim.optimizer import Optimizer
from normlab.train.metrics import per_sample_loss


@dataclass
class Step:
    """What one training step saw and computed (``fit`` shows the last one to callbacks as ``run.step``).

    ``outputs``: the model's outputs (N, ...) for the batch, computed in the step's forward pass (train mode);
    ``targets``: the batch's targets; ``loss``: the per-sample mean loss; ``loss_value``: what the loss module
    returned (the sum for ``reduction="sum"``)."""

    outputs: np.ndarray
    targets: np.ndarray
    loss: float
    loss_value: Any

    def __len__(self) -> int:
        return int(self.outputs.shape[0])


def train_step(
    model: Module,
    optimizer: Optimizer,
    criterion: Module,
    xb: np.ndarray,
    yb: np.ndarray,
    *,
    nonfinite_loss: str = "raise",
    sync: Any = None,
) -> Step:
    """Forward ``xb``, the loss against ``yb``, backward, one optimizer update.

    A loss that is NaN or infinite raises ``FloatingPointError`` *before* the update with
    ``nonfinite_loss="raise"``; with ``"continue"`` the update is made and the caller decides (a diverged
    run is what some experiments measure).  ``sync`` (``fit`` under ``mpiexec``) makes the step that of the
    global batch split over the ranks.
    """
    optimizer.zero_grad()
    out = model(xb)
    value = criterion(out, yb)
    loss = per_sample_loss(criterion, value, int(out.shape[0]))
    if nonfinite_loss == "raise" and not math.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss}")
    grad = criterion.backward()
    if (
        sync is not None
    ):  # MPI (normlab.distributed.FitSync): the gradient of the global batch's loss
        grad = sync.scale_output_grad(grad, criterion)
    model.backward(grad)
    if sync is not None:  # averaged over the ranks, in rank order
        sync.average_gradients()
    optimizer.step()
    return Step(out, yb, loss, value)
