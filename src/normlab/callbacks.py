"""Callbacks for :func:`normlab.fit`: early stopping, checkpoints every N epochs, LR schedules, stopping on NaN.

A callback overrides any of the hooks of :class:`Callback`; each receives the :class:`FitRun` (model,
optimizer, history, ...) and can stop training by setting ``run.stop_training``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.checkpoint import save_checkpoint
from normlab.nn.module import Module
from normlab.optim.lr_scheduler import LRScheduler
from normlab.optim.optimizer import Optimizer

if TYPE_CHECKING:
    from collections.abc import Iterable

    from normlab.train import History, Step


@dataclass
class FitRun:
    """What callbacks see of a running ``fit``."""

    model: Module
    optimizer: Optimizer
    loss: Module
    history: History
    batches: Iterable[Any]
    callbacks: list[Callback]
    epoch: int = 0
    stop_training: bool = False
    step: Step | None = (
        None  # the last training step (outputs, targets, loss), set before on_batch_end
    )
    sync: Any = None  # under mpiexec: normlab.distributed.FitSync (the ranks' shared step)


class Callback:
    """Hooks called by ``fit``.  ``priority`` orders callbacks at each hook (lower first; LR schedules step
    before checkpoints save, so a checkpoint holds the state the next epoch starts from)."""

    priority = 50

    def on_train_begin(self, run: FitRun) -> None: ...

    def on_epoch_begin(self, run: FitRun, epoch: int) -> None: ...

    def on_batch_end(self, run: FitRun, logs: dict[str, float]) -> None: ...

    def on_epoch_end(self, run: FitRun, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, run: FitRun) -> None: ...


class LRSchedulerCallback(Callback):
    """Step ``scheduler`` after every epoch (``interval="epoch"``) or every iteration (``"iteration"``)."""

    priority = 10

    def __init__(self, scheduler: LRScheduler, interval: str = "epoch") -> None:
        if interval not in ("epoch", "iteration"):
            raise ValueError(
                f"LRSchedulerCallback: interval must be 'epoch' or 'iteration', got {interval!r}"
            )
        self.scheduler, self.interval = scheduler, interval

    def on_batch_end(self, run: FitRun, logs: dict[str, float]) -> None:
        if self.interval == "iteration":
            self.scheduler.step()

    def on_epoch_end(self, run: FitRun, epoch: int, logs: dict[str, float]) -> None:
        if self.interval == "epoch":
            self.scheduler.step()


class TerminateOnNaN(Callback):
    """Stop training after the first step whose loss is NaN or infinite (that step's update is made and the
    epoch's end still runs, as Keras's ``TerminateOnNaN``).  Use with ``fit(..., nonfinite_loss="continue")``;
    by default ``fit`` raises ``FloatingPointError`` before such an update instead."""

    def __init__(self) -> None:
        self.stopped_at: int | None = None  # the iteration whose loss was not finite

    def on_train_begin(self, run: FitRun) -> None:
        self.stopped_at = None

    def on_batch_end(self, run: FitRun, logs: dict[str, float]) -> None:
        if not np.isfinite(logs["loss"]):
            self.stopped_at = len(run.history.iterations) - 1
            run.stop_training = True


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``mode`` is ``"min"``, ``"max"`` or ``"auto"`` (max for names containing "acc", else min).  With
    ``restore_best_weights`` the parameters and buffers of the best epoch are loaded back when training ends.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 0,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = False,
    ) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), abs(float(min_delta))
        self.maximize = mode == "max" or (mode == "auto" and "acc" in monitor)
        self.restore_best_weights = restore_best_weights
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, np.ndarray] | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_train_begin(self, run: FitRun) -> None:
        self.best = self.best_epoch = self.best_state = self.stopped_epoch = None
        self.wait = 0

    def on_epoch_end(self, run: FitRun, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise ValueError(
                f"EarlyStopping: '{self.monitor}' is not among the epoch's values {sorted(logs)} "
                "(val_* needs validation_data or validation_split)"
            )
        value = logs[self.monitor]
        if self.best is None:
            improved = True
        else:
            gain = value - self.best if self.maximize else self.best - value
            improved = gain > self.min_delta
        if improved:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_state = run.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            run.stop_training = True

    def on_train_end(self, run: FitRun) -> None:
        if self.restore_best_weights and self.best_state is not None:
            run.model.load_state_dict(self.best_state)


class ModelCheckpoint(Callback):
    """Save a checkpoint (model, optimizer, LR schedule, epoch, history; see :func:`normlab.save_checkpoint`)
    every ``every`` epochs.  ``path`` may contain ``{epoch}``, formatted with the number of epochs completed;
    its directory is created if it does not exist yet.
    """

    priority = 90

    def __init__(self, path: str | Path, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"ModelCheckpoint: every must be a positive int, got {every!r}")
        self.path, self.every = str(path), every
        self.saved: list[Path] = []

    def on_epoch_end(self, run: FitRun, epoch: int, logs: dict[str, float]) -> None:
        completed = epoch + 1
        if completed % self.every:
            return
        schedulers = [c.scheduler for c in run.callbacks if isinstance(c, LRSchedulerCallback)]
        path = Path(self.path.format(epoch=completed))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            path,
            run.model,
            run.optimizer,
            epoch=completed,
            scheduler=schedulers[0] if schedulers else None,
            loader=run.batches if hasattr(run.batches, "state_dict") else None,
            extra={"history": run.history.to_dict()},
        )
        self.saved.append(path)
