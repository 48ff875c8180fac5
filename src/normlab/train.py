"""Training loop: ``fit``, ``evaluate`` and ``predict``, usable on any Module with ``forward``/``backward``.

One training step is the data flow of ``ARCHITECTURE.md``::

    out = model(xb); loss = criterion(out, yb); model.backward(criterion.backward()); optimizer.step()

The modes are switched here, never left to the user: ``fit`` trains in train mode, validates in eval mode, and
``evaluate``/``predict`` run in eval mode under ``no_grad()``.  Each restores every module's own mode flag
afterwards (also on error), so the "forgot ``model.eval()``" bug cannot happen through this API.

Data is either arrays ``(x, y)``, cut into mini-batches here, or any *re-iterable* batch source with a
``len`` (a list of ``(xb, yb)`` pairs, a ``normlab.data.DataLoader``, ...).

Reproducibility: with ``seed`` given, epoch ``e``'s shuffling and every dropout generator of the model are
derived from ``(seed, e)`` at the start of the epoch.  Two runs with the same seed, model and optimizer are
bit-identical, and a run resumed from a checkpoint at an epoch boundary (``initial_epoch``) repeats the
uninterrupted run exactly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normlab import distributed, kernels
from normlab.backend import no_grad
from normlab.callbacks import Callback, FitRun
from normlab.nn.layers import dropout_generators
from normlab.nn.loss import CrossEntropyLoss
from normlab.nn.module import Module
from normlab.optim.optimizer import Optimizer

Metric = Callable[[np.ndarray, np.ndarray], float]


# --------------------------------------------------------------------------------------- data
class ArrayBatches:
    """Mini-batches of arrays ``x`` (N, ...) and ``y`` (N, ...): re-iterable, with ``len``.

    With ``shuffle``, the order of epoch ``e`` (set by :meth:`set_epoch`) is a permutation drawn from a
    generator seeded with ``(seed, e)``, so every epoch's order can be reproduced on its own.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        where: str = "fit",
    ) -> None:
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0
        n = len(x)
        if n == 0:
            raise ValueError(f"{where}: the data is empty (0 samples, x has shape {np.shape(x)})")
        if y is not None and len(y) != n:
            raise ValueError(
                f"{where}: x and y hold different numbers of samples: {n} and {len(y)}"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        n = len(self.x)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 0]).permutation(n)
        else:
            order = None
        for start in range(0, n, self.batch_size):
            if order is None:
                idx: Any = slice(start, start + self.batch_size)
            else:
                idx = order[start : start + self.batch_size]
            yield self.x[idx], (None if self.y is None else self.y[idx])


def _check_batch_size(batch_size: Any, where: str) -> int:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"{where}: batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def _batch_source(
    x: Any, y: Any, batch_size: int, shuffle: bool, seed: int, where: str
) -> Iterable[Any]:
    """Arrays become :class:`ArrayBatches`; anything else must be a re-iterable batch source with a len."""
    if isinstance(x, np.ndarray) or y is not None:
        if y is None and where == "fit":
            raise ValueError(f"{where}: got an array x but no labels y")
        x = np.asarray(x)
        return ArrayBatches(
            x, None if y is None else np.asarray(y), batch_size, shuffle, seed, where
        )
    if hasattr(x, "__next__"):
        raise TypeError(
            f"{where}: got a one-shot iterator ({type(x).__name__}); pass something that can be iterated "
            "once per epoch (a list of batches or a DataLoader)"
        )
    if not hasattr(x, "__iter__") or not hasattr(x, "__len__"):
        raise TypeError(
            f"{where}: expected arrays (x, y) or a re-iterable source of (x, y) batches with a len, "
            f"got {type(x).__name__}"
        )
    if len(x) == 0:
        raise ValueError(f"{where}: the batch source is empty (len 0)")
    return x


def _split_batch(batch: Any, where: str) -> tuple[np.ndarray, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{where}: each batch must be a pair (x, y), got {type(batch).__name__}")
    return np.asarray(batch[0]), np.asarray(batch[1])


# --------------------------------------------------------------------------------------- metrics
def accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows whose largest output is at the target class."""
    return float(np.mean(np.argmax(outputs, axis=1) == targets))


def _resolve_metrics(metrics: Sequence[str | Metric] | None, loss: Module) -> dict[str, Metric]:
    if metrics is None:
        metrics = ["accuracy"] if isinstance(loss, CrossEntropyLoss) else []
    resolved: dict[str, Metric] = {}
    for m in metrics:
        if m == "accuracy":
            resolved["accuracy"] = accuracy
        elif callable(m):
            resolved[getattr(m, "__name__", "metric")] = m
        else:
            raise ValueError(
                f"unknown metric {m!r}: use 'accuracy' or a function (outputs, targets) -> float"
            )
    return resolved


class _Averages:
    """Sample-weighted running means of the loss and metrics over the batches of one pass."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float], n: int) -> None:
        for k, v in values.items():
            self.totals[k] = self.totals.get(k, 0.0) + v * n
        self.count += n

    def means(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: v / self.count for k, v in self.totals.items()}


def _loss_value(criterion: Module, out: np.ndarray, yb: np.ndarray) -> float:
    value = criterion(out, yb)
    reduction = getattr(criterion, "reduction", "mean")
    if reduction == "sum":
        return float(value) / max(len(out), 1)  # report a per-sample mean whatever the reduction
    return float(np.mean(value))


# --------------------------------------------------------------------------------------- history
@dataclass
class History:
    """What ``fit`` recorded: one dict per epoch (``epoch``, ``loss``, metrics, ``val_*``, ``lr``) and one per
    training iteration (``epoch``, ``iteration``, ``loss``, metrics, ``lr``)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    iterations: list[dict[str, float]] = field(default_factory=list)
    seed: int | None = None

    def __getitem__(self, key: str) -> list[float]:
        """The per-epoch values of ``key`` (``history["val_loss"]``)."""
        return [record[key] for record in self.epochs if key in record]

    @property
    def history(self) -> dict[str, list[float]]:
        """Keras's layout: metric name -> per-epoch values."""
        keys = dict.fromkeys(k for record in self.epochs for k in record if k != "epoch")
        return {k: self[k] for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "iterations": self.iterations, "seed": self.seed}


# --------------------------------------------------------------------------------------- display
def _console() -> Any:
    from rich.console import Console

    return Console(file=sys.stdout)


class _Display:
    """A rich progress bar per epoch on a terminal with ``verbose=1``; one plain line per epoch when the
    output is not a terminal or ``verbose=2``; nothing with ``verbose=0``."""

    def __init__(self, verbose: int, epochs: int, steps: int) -> None:
        self.epochs, self.steps = epochs, steps
        self.console = _console() if verbose else None
        self.progress: Any = None
        self.task: Any = None
        if verbose == 1 and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=self.console,
            )
            self.progress.start()

    def epoch_begin(self, epoch: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(
                f"Epoch {epoch + 1}/{self.epochs}", total=self.steps, metrics=""
            )

    def batch_end(self, running: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, metrics=_format(running))

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, metrics=_format(logs))
        elif self.console is not None:  # plain lines for logs and pipes: no control codes
            print(
                f"Epoch {epoch + 1}/{self.epochs} - {_format(logs)}",
                file=self.console.file,
                flush=True,
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _format(values: dict[str, float]) -> str:
    return " - ".join(f"{k} {v:.4g}" for k, v in values.items() if k not in ("epoch", "lr"))


# --------------------------------------------------------------------------------------- modes and seeds
def _saved_modes(model: Module) -> list[tuple[Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore_modes(saved: list[tuple[Module, bool]]) -> None:
    for m, mode in saved:
        m.training = mode


def _reseed_dropout(model: Module, seed: int, epoch: int) -> None:
    for i, (_, m) in enumerate(dropout_generators(model)):
        m.generator = np.random.default_rng([seed, epoch, 1, i])


# --------------------------------------------------------------------------------------- fit
def fit(
    model: Module,
    x: Any,
    y: np.ndarray | None = None,
    *,
    optimizer: Optimizer,
    loss: Module | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    shuffle: bool = True,
    validation_data: Any = None,
    validation_split: float = 0.0,
    metrics: Sequence[str | Metric] | None = None,
    callbacks: Sequence[Callback] = (),
    verbose: int = 1,
    seed: int | None = None,
    initial_epoch: int = 0,
) -> History:
    """Train ``model`` with ``optimizer`` on arrays ``(x, y)`` or on a batch source ``x`` of ``(xb, yb)``.

    Args:
        loss: a loss module with ``forward(pred, target)``/``backward()``; ``CrossEntropyLoss()`` by default.
        epochs: train until this many epochs are completed (counting from ``initial_epoch``, for resuming).
        batch_size, shuffle: how arrays are cut into batches (a batch source batches itself).
        validation_data: ``(x_val, y_val)`` arrays or a batch source, evaluated in eval mode after each epoch.
        validation_split: fraction of the arrays held out for validation: the *last* samples, before
            shuffling (as Keras).
        metrics: ``"accuracy"`` and/or functions ``(outputs, targets) -> float``; accuracy by default with
            cross-entropy.  Values are averaged over samples.
        callbacks: :class:`EarlyStopping`, :class:`ModelCheckpoint`, :class:`LRSchedulerCallback`, ...
        verbose: 0 silent, 1 progress bar (on a terminal; one line per epoch otherwise), 2 one line per epoch.
        seed: derive each epoch's shuffling and dropout masks from ``(seed, epoch)``; ``None`` draws a seed
            (recorded in ``History.seed``) and leaves dropout generators alone.

    Returns the :class:`History`.  A non-finite loss stops training with ``FloatingPointError``.  The modes of
    all modules are restored afterwards, whatever happens.
    """
    criterion = CrossEntropyLoss() if loss is None else loss
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"fit: optimizer must be a normlab Optimizer, got {type(optimizer).__name__}"
        )
    if getattr(criterion, "reduction", "mean") == "none":
        raise ValueError(
            "fit: the loss must reduce to a number (reduction 'mean' or 'sum'), not 'none'"
        )
    batch_size = _check_batch_size(batch_size, "fit")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int, got {epochs!r}")
    if not 0 <= initial_epoch < epochs:
        raise ValueError(f"fit: initial_epoch must be in [0, epochs={epochs}), got {initial_epoch}")
    reseed = seed is not None
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**63)
    sync = distributed.FitSync.begin(model, seed)  # distributed: None in one process
    if sync is not None:
        seed = sync.seed  # distributed: rank 0's seed on every rank
    if validation_split:
        if validation_data is not None or not isinstance(x, np.ndarray) or y is None:
            raise ValueError("fit: validation_split needs arrays (x, y) and no validation_data")
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"fit: validation_split must be in (0, 1), got {validation_split}")
        cut = int(len(x) * (1.0 - validation_split))
        if not 0 < cut < len(x):
            raise ValueError(
                f"fit: validation_split={validation_split} leaves no training or no validation data"
            )
        x, y, validation_data = x[:cut], y[:cut], (x[cut:], y[cut:])
    batches = _batch_source(x, y, batch_size, shuffle, seed, "fit")
    if sync is not None:
        batches = sync.shard(batches)  # distributed: this rank's chunk of every batch
    metric_fns = _resolve_metrics(metrics, criterion)
    history = History(seed=seed)
    ordered = sorted(callbacks, key=lambda c: c.priority)
    run = FitRun(model, optimizer, criterion, history, batches, list(ordered))
    display = _Display(verbose if sync is None or sync.world.is_main else 0, epochs, len(batches))
    saved_modes = _saved_modes(model)
    input_grad = model.requires_input_grad
    model.requires_input_grad_(False)  # the input is data: the first layer may skip dL/dx
    # BLAS on one thread while the numba kernels use all cores (see normlab.kernels.training_threads)
    with kernels.training_threads():
        try:
            for cb in ordered:
                cb.on_train_begin(run)
            for epoch in range(initial_epoch, epochs):
                run.epoch = epoch
                if hasattr(batches, "set_epoch"):
                    batches.set_epoch(epoch)
                if reseed:
                    _reseed_dropout(model, seed, epoch)
                model.train()
                display.epoch_begin(epoch)
                for cb in ordered:
                    cb.on_epoch_begin(run, epoch)
                averages = _Averages()
                for batch in batches:
                    logs = _train_step(model, optimizer, criterion, batch, metric_fns, epoch, sync)
                    averages.add({k: logs[k] for k in ("loss", *metric_fns)}, int(logs.pop("_n")))
                    history.iterations.append({"iteration": len(history.iterations), **logs})
                    for cb in ordered:
                        cb.on_batch_end(run, logs)
                    display.batch_end(averages.means())
                logs = {"epoch": epoch, **averages.means()}
                if validation_data is not None:
                    val = evaluate(
                        model,
                        *_as_xy(validation_data),
                        loss=criterion,
                        batch_size=batch_size,
                        metrics=metrics,
                    )
                    logs.update({f"val_{k}": v for k, v in val.items()})
                logs["lr"] = history.iterations[-1]["lr"]  # the rate the epoch's last step used
                history.epochs.append(logs)
                display.epoch_end(epoch, logs)
                for cb in ordered:
                    cb.on_epoch_end(run, epoch, logs)
                if run.stop_training:
                    break
            for cb in ordered:
                cb.on_train_end(run)
        finally:
            display.close()
            _restore_modes(saved_modes)
            model.requires_input_grad_(input_grad)
    return history


def _as_xy(data: Any) -> tuple[Any, Any]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        return data
    return data, None


def _train_step(
    model: Module,
    optimizer: Optimizer,
    criterion: Module,
    batch: Any,
    metric_fns: dict[str, Metric],
    epoch: int,
    sync: distributed.FitSync | None = None,
) -> dict[str, float]:
    xb, yb = _split_batch(batch, "fit")
    optimizer.zero_grad()
    out = model(xb)
    value = _loss_value(criterion, out, yb)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"fit: the loss became {value} in epoch {epoch + 1}; lower the learning rate or check the data"
        )
    grad = criterion.backward()
    # distributed: the gradient of the global batch's loss, averaged over ranks
    if sync is not None:
        grad = sync.scale_output_grad(grad, criterion)
    model.backward(grad)
    if sync is not None:
        sync.average_gradients()
    optimizer.step()
    logs = {"epoch": epoch, "loss": value}
    logs.update({name: float(fn(out, yb)) for name, fn in metric_fns.items()})
    logs["lr"] = optimizer.param_groups[0]["lr"]
    logs["_n"] = len(xb)
    if sync is not None:  # distributed: loss and metrics of the global batch on every rank
        logs = sync.reduce_logs(logs, len(xb), ["loss", *metric_fns])
    return logs


# --------------------------------------------------------------------------------------- evaluate, predict
def evaluate(
    model: Module,
    x: Any,
    y: np.ndarray | None = None,
    *,
    loss: Module | None = None,
    batch_size: int = 256,
    metrics: Sequence[str | Metric] | None = None,
) -> dict[str, float]:
    """Loss and metrics of ``model`` in eval mode over arrays ``(x, y)`` or a batch source of ``(xb, yb)``,
    averaged over samples, under ``no_grad()``.  Every module's mode is restored afterwards."""
    criterion = CrossEntropyLoss() if loss is None else loss
    batch_size = _check_batch_size(batch_size, "evaluate")
    if isinstance(x, np.ndarray) and y is None:
        raise ValueError("evaluate: got an array x but no labels y")
    batches = _batch_source(x, y, batch_size, False, 0, "evaluate")
    metric_fns = _resolve_metrics(metrics, criterion)
    averages = _Averages()
    saved_modes = _saved_modes(model)
    try:
        model.eval()
        with no_grad():
            for batch in batches:
                xb, yb = _split_batch(batch, "evaluate")
                out = model(xb)
                values = {"loss": _loss_value(criterion, out, yb)}
                values.update({name: float(fn(out, yb)) for name, fn in metric_fns.items()})
                averages.add(values, len(xb))
    finally:
        _restore_modes(saved_modes)
    return averages.means()


def predict(model: Module, x: Any, *, batch_size: int = 256) -> np.ndarray:
    """Outputs of ``model`` in eval mode for array ``x`` (N, ...) or a batch source (of arrays or of
    ``(xb, yb)`` pairs, whose ``yb`` is ignored), concatenated along the first axis, under ``no_grad()``."""
    batch_size = _check_batch_size(batch_size, "predict")
    batches = _batch_source(x, None, batch_size, False, 0, "predict")
    outputs = []
    saved_modes = _saved_modes(model)
    try:
        model.eval()
        with no_grad():
            for batch in batches:
                xb = batch[0] if isinstance(batch, (tuple, list)) else batch
                outputs.append(model(np.asarray(xb)))
    finally:
        _restore_modes(saved_modes)
    return np.concatenate(outputs, axis=0)
