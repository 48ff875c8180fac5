"""``fit``, ``evaluate`` and ``predict``, usable on any Module with ``forward``/``backward``.

The modes are switched here, never left to the user: ``fit`` trains in train mode, validates in eval mode, and
``evaluate``/``predict`` run in eval mode under ``no_grad()``.  Each restores every module's own mode flag
afterwards (also on error), so the "forgot ``model.eval()``" bug cannot happen through this API.

Reproducibility: with ``seed`` given, epoch ``e``'s shuffling and every dropout generator of the model are
derived from ``(seed, e)`` at the start of the epoch.  Two runs with the same seed, model and optimizer are
bit-identical, and a run resumed from a checkpoint at an epoch boundary (``initial_epoch``) repeats the
uninterrupted run exactly.

Devices: with the model on a device (``model.to("cuda")``), each NumPy batch is moved to the model's device as
it is used; batches already on a device are used as they are (on another device than the model's, the first
layer raises a ``ValueError`` naming both).  Losses and metrics come back as Python floats; ``predict``
returns one NumPy array.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from normlab import distributed, kernels
from normlab.backend import no_grad, to_host
from normlab.callbacks import Callback, FitRun
from normlab.doctor.callback import DoctorCallback
from normlab.nn.fusion import fuse
from normlab.nn.layers import dropout_generators
from normlab.nn.loss import CrossEntropyLoss
from normlab.nn.module import Module
from normlab.optim.optimizer import Optimizer
from normlab.train.accumulate import accumulation_step, check_accumulation
from normlab.train.batches import (
    as_xy,
    batch_source,
    check_batch_size,
    concat,
    model_array,
    on_device,
    split_batch,
)
from normlab.train.display import Display
from normlab.train.history import History
from normlab.train.metrics import Averages, Metric, per_sample_loss, resolve_metrics
from normlab.train.step import train_step

NONFINITE_LOSS = ("raise", "continue")


def _saved_modes(model: Module) -> list[tuple[Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore_modes(saved: list[tuple[Module, bool]]) -> None:
    for m, mode in saved:
        m.training = mode


def _reseed_dropout(model: Module, seed: int, epoch: int) -> None:
    for i, (_, m) in enumerate(dropout_generators(model)):
        m.generator = np.random.default_rng([seed, epoch, 1, i])


def _check_fit_arguments(
    optimizer: Any, criterion: Module, epochs: Any, initial_epoch: int, nonfinite_loss: str
) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"fit: optimizer must be a normlab Optimizer, got {type(optimizer).__name__}"
        )
    if getattr(criterion, "reduction", "mean") == "none":
        raise ValueError(
            "fit: the loss must reduce to a number (reduction 'mean' or 'sum'), not 'none'"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int, got {epochs!r}")
    if not 0 <= initial_epoch < epochs:
        raise ValueError(f"fit: initial_epoch must be in [0, epochs={epochs}), got {initial_epoch}")
    if nonfinite_loss not in NONFINITE_LOSS:
        raise ValueError(
            f"fit: nonfinite_loss must be one of {NONFINITE_LOSS}, got {nonfinite_loss!r}"
        )


def _split_validation(x: Any, y: Any, validation_data: Any, validation_split: float) -> tuple:
    """Hold out the *last* ``validation_split`` of the arrays, before shuffling (as Keras)."""
    if not validation_split:
        return x, y, validation_data
    if validation_data is not None or not isinstance(x, np.ndarray) or y is None:
        raise ValueError("fit: validation_split needs arrays (x, y) and no validation_data")
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"fit: validation_split must be in (0, 1), got {validation_split}")
    cut = int(len(x) * (1.0 - validation_split))
    if not 0 < cut < len(x):
        raise ValueError(
            f"fit: validation_split={validation_split} leaves no training or no validation data"
        )
    return x[:cut], y[:cut], (x[cut:], y[cut:])


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
    nonfinite_loss: str = "raise",
    accumulate: int = 1,
    accumulation: str = "ghost",
    doctor: bool = False,
) -> History:
    """Train ``model`` with ``optimizer`` on arrays ``(x, y)`` or on a batch source ``x`` of ``(xb, yb)``.

    Each epoch runs the model in training mode (batch norm uses batch statistics and updates its running
    ones) over the batches, with one forward, backward and optimizer step per batch, then evaluates on the
    validation data in eval mode.  Under ``mpiexec`` the batches are split over the ranks (see
    :mod:`normlab.distributed`).

    Args:
        model: the network; trained in place.
        x: inputs, an array (N, ...), or a batch source (an iterable of ``(xb, yb)`` such as a
            :class:`~normlab.data.DataLoader`, with ``y=None``).
        y: targets (N,) (class indices for cross-entropy) when ``x`` is an array.
        optimizer: a :mod:`normlab.optim` optimizer over ``model.parameters()``.
        loss: a loss module with ``forward(pred, target)``/``backward()``; ``CrossEntropyLoss()`` by default.
        epochs: train until this many epochs are completed (counting from ``initial_epoch``, for resuming).
        batch_size: how many samples per batch when ``x`` and ``y`` are arrays (a batch source batches itself).
        shuffle: whether arrays are shuffled each epoch (a batch source decides for itself).
        validation_data: ``(x_val, y_val)`` arrays or a batch source, evaluated in eval mode after each epoch.
        validation_split: fraction of the arrays held out for validation: the *last* samples, before
            shuffling (as Keras).
        metrics: ``"accuracy"`` and/or functions ``(outputs, targets) -> float``; accuracy by default with
            cross-entropy.  Values are averaged over samples.
        callbacks: :class:`EarlyStopping`, :class:`ModelCheckpoint`, :class:`LRSchedulerCallback`, ...  A
            callback that sets ``run.stop_training`` in ``on_batch_end`` ends the epoch after that batch (the
            epoch's end, validation included, still runs); set in ``on_epoch_end`` it ends training there.
        verbose: 0 silent, 1 progress bar (on a terminal; one line per epoch otherwise), 2 one line per epoch.
        seed: derive each epoch's shuffling and dropout masks from ``(seed, epoch)``; ``None`` draws a seed
            (recorded in ``History.seed``) and leaves dropout generators alone.
        nonfinite_loss: ``"raise"`` (default) stops with ``FloatingPointError`` before the update when the
            loss is NaN or infinite; ``"continue"`` makes the update and leaves the decision to callbacks
            (:class:`TerminateOnNaN` stops after that step).
        accumulate: one optimizer step per this many batches of ``batch_size`` (micro-batches): the step of
            a batch ``accumulate`` times larger, in the memory of one micro-batch.  ``History.iterations``
            then counts optimizer steps.
        accumulation: what batch norm does across the micro-batches: ``"ghost"`` (each normalized by its
            own statistics, running statistics updated once per step) or ``"exact"`` (the full batch's step,
            number for number, at the cost of extra passes); see :mod:`normlab.train.accumulate`.
        initial_epoch: the epoch to start counting from (when resuming from a checkpoint).
        doctor: run the batch-norm doctor's cheap checks when training starts and after each epoch, warning
            once per finding code (:class:`normlab.doctor.DoctorCallback`).

    Returns:
        The :class:`History`: one record per epoch (``loss``, metrics, ``val_*``, ``lr``) and per step.
            The modes of all modules are restored afterwards, whatever happens.

    Examples:
        >>> import numpy as np
        >>> import normlab as nl
        >>> from normlab import nn, optim
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(256, 4)).astype(np.float32)
        >>> y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
        >>> model = nn.Sequential(nn.Linear(4, 16, rng=0), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2, rng=1))
        >>> history = nl.fit(model, x, y, optimizer=optim.Adam(model.parameters(), lr=0.01),
        ...                  epochs=3, batch_size=32, validation_split=0.25, seed=0, verbose=0)
        >>> [sorted(record) for record in history.epochs][:1]
        [['accuracy', 'epoch', 'loss', 'lr', 'val_accuracy', 'val_loss']]
        >>> history["val_accuracy"][-1] > 0.8, model.training  # the model is back in its mode
        (True, True)
    """
    criterion = CrossEntropyLoss() if loss is None else loss
    if doctor:
        callbacks = [*callbacks, DoctorCallback()]
    _check_fit_arguments(optimizer, criterion, epochs, initial_epoch, nonfinite_loss)
    accumulate = check_accumulation(accumulate, accumulation, "fit")
    batch_size = check_batch_size(batch_size, "fit")
    reseed = seed is not None
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**63)
    sync = distributed.FitSync.begin(model, seed)  # None in one process
    if sync is not None:
        if accumulate > 1:
            raise ValueError(
                "fit: accumulate > 1 is not supported under MPI yet; use one step per batch"
            )
        seed = sync.seed  # rank 0's seed on every rank
    x, y, validation_data = _split_validation(x, y, validation_data, validation_split)
    batches = batch_source(x, y, batch_size, shuffle, seed, "fit")
    if sync is not None:
        batches = sync.shard(batches)  # this rank's part of every global batch
    metric_fns = resolve_metrics(metrics, criterion)
    history = History(seed=seed)
    history.accumulation = {"accumulate": accumulate, "mode": accumulation}
    ordered = sorted(callbacks, key=lambda c: c.priority)
    run = FitRun(model, optimizer, criterion, history, batches, list(ordered), sync=sync)
    display = Display(verbose if sync is None or sync.world.is_main else 0, epochs, len(batches))
    # ---- THE MODEL THAT RUNS: every training forward/backward goes through ``runner``, ``model`` with each
    # BatchNorm + ReLU/Sigmoid pair fused into one op (nn.fuse: the same layer objects, so the same parameters
    # and buffers, and the same numbers); validation, callbacks and checkpoints keep working on ``model``.
    runner = fuse(model)
    saved_modes = _saved_modes(model) + ([] if runner is model else _saved_modes(runner))
    input_grad = runner.requires_input_grad
    runner.requires_input_grad_(False)  # the input is data: the first layer may skip dL/dx
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
                if runner is not model:
                    runner.train()
                display.epoch_begin(epoch)
                for cb in ordered:
                    cb.on_epoch_begin(run, epoch)
                logs = {
                    "epoch": epoch,
                    **_train_epoch(
                        run,
                        model if accumulation == "exact" else runner,
                        metric_fns,
                        display,
                        nonfinite_loss,
                        accumulate,
                        accumulation,
                    ),
                }
                if validation_data is not None:
                    val = evaluate(
                        model,
                        *as_xy(validation_data),
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
            runner.requires_input_grad_(input_grad)
    return history


def _train_epoch(
    run: FitRun,
    runner: Module,
    metric_fns: dict[str, Metric],
    display: Display,
    nonfinite_loss: str,
    accumulate: int = 1,
    accumulation: str = "ghost",
) -> dict[str, float]:
    """One pass of ``runner`` over ``run.batches``, a training step per batch (or per ``accumulate``
    batches), callbacks after each; stops early when a callback sets ``run.stop_training``.  Returns the
    sample-weighted means of the pass."""
    epoch, optimizer, history = run.epoch, run.optimizer, run.history
    averages = Averages()
    # a model on a device (model.to(...)) gets every batch there; NumPy models get NumPy batches
    reference = model_array(runner)
    for group in _groups(run.batches, accumulate, reference):
        try:
            if accumulate == 1:
                xb, yb = group[0]
                step = train_step(
                    runner,
                    optimizer,
                    run.loss,
                    xb,
                    yb,
                    nonfinite_loss=nonfinite_loss,
                    sync=run.sync,
                )
            else:
                step = accumulation_step(
                    runner,
                    optimizer,
                    run.loss,
                    group,
                    mode=accumulation,
                    nonfinite_loss=nonfinite_loss,
                )
        except FloatingPointError as e:
            raise FloatingPointError(
                f"fit: {e} in epoch {epoch + 1}; lower the learning rate or check the data"
            ) from None
        logs = {"epoch": epoch, "loss": step.loss}
        logs.update({k: float(fn(step.outputs, step.targets)) for k, fn in metric_fns.items()})
        logs["lr"] = optimizer.param_groups[0]["lr"]
        count = len(step)
        if run.sync is not None:  # loss and metrics of the global batch, the same on every rank
            logs = run.sync.reduce_logs(logs, count, ["loss", *metric_fns])
            count = int(logs.pop("_n"))
        averages.add({k: logs[k] for k in ("loss", *metric_fns)}, count)
        history.iterations.append({"iteration": len(history.iterations), **logs})
        run.step = step
        for cb in run.callbacks:
            cb.on_batch_end(run, logs)
        display.batch_end(averages.means())
        if run.stop_training:
            break
    return averages.means()


def _groups(
    batches: Any, size: int, reference: Any = None
) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """The batches in consecutive groups of ``size`` (the last one of an epoch may be shorter), on the
    device of ``reference`` (see :func:`normlab.train.batches.split_batch`)."""
    group: list[tuple[np.ndarray, np.ndarray]] = []
    for batch in batches:
        group.append(split_batch(batch, "fit", reference))
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _eval_batches(x: Any, y: Any, batch_size: int, where: str) -> Any:
    return batch_source(x, y, check_batch_size(batch_size, where), False, 0, where)


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
    check_batch_size(batch_size, "evaluate")
    if isinstance(x, np.ndarray) and y is None:
        raise ValueError("evaluate: got an array x but no labels y")
    batches = _eval_batches(x, y, batch_size, "evaluate")
    metric_fns = resolve_metrics(metrics, criterion)
    averages = Averages()
    saved_modes = _saved_modes(model)
    reference = model_array(model)
    try:
        model.eval()
        with no_grad():
            for batch in batches:
                xb, yb = split_batch(batch, "evaluate", reference)
                out = model(xb)
                n = int(out.shape[0])
                values = {"loss": per_sample_loss(criterion, criterion(out, yb), n)}
                values.update({name: float(fn(out, yb)) for name, fn in metric_fns.items()})
                averages.add(values, n)
    finally:
        _restore_modes(saved_modes)
    return averages.means()


def predict(model: Module, x: Any, *, batch_size: int = 256) -> np.ndarray:
    """Outputs of ``model`` in eval mode for array ``x`` (N, ...) or a batch source (of arrays or of
    ``(xb, yb)`` pairs, whose ``yb`` is ignored), concatenated along the first axis, under ``no_grad()``.

    A model on a device (``model.to(...)``) gets each batch there; the outputs come back as one NumPy array."""
    batches = _eval_batches(x, None, batch_size, "predict")
    outputs = []
    saved_modes = _saved_modes(model)
    reference = model_array(model)
    try:
        model.eval()
        with no_grad():
            for batch in batches:
                xb = batch[0] if isinstance(batch, (tuple, list)) else batch
                outputs.append(model(on_device(xb, reference)))
    finally:
        _restore_modes(saved_modes)
    # a model on a device: its outputs are joined there and copied to the host once
    return to_host(concat(outputs))


__all__ = ["evaluate", "fit", "predict"]
