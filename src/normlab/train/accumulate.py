"""Gradient accumulation: one optimizer step per k micro-batches (``fit(..., accumulate=k)``).

The loss of a step is the per-sample mean over all its micro-batches, so each micro-batch's loss gradient is
weighted by its share of the samples; parameter gradients add up over the micro-batches.  What batch norm
does across the micro-batches is the ``accumulation`` mode (see :mod:`normlab.nn.accumulation`):

* ``"ghost"`` (default, one pass): each micro-batch normalized by its own statistics — the same step as Ghost
  Batch Norm with ``virtual_batch_size`` = the micro-batch on the whole batch — and the running statistics
  updated once per step from the micro-batches' statistics merged exactly.
* ``"exact"``: the step of the whole batch, number for number.  With L batch-norm layers it costs L partial
  forward passes (statistics), L forward + partial backward passes (the sums ``Σdy``, ``Σdy·x̂``) and the final
  forward + backward pass: 2L + 1 forwards and L + 1 backwards per micro-batch, with the memory of one
  micro-batch.

A step never spans two epochs (an epoch's last step takes the micro-batches that are left), so checkpoints,
written between epochs, never fall in the middle of an accumulation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np

from normlab.backend import no_grad
from normlab.nn.accumulation import SplitBatchNorm, StopPass, split_batch_layers
from normlab.nn.module import Module
from normlab.nn.norm import _NormBase
from normlab.optim.optimizer import Optimizer
from normlab.train.batches import concat
from normlab.train.metrics import per_sample_loss
from normlab.train.step import Step

MODES = ("ghost", "exact")

Batch = tuple[np.ndarray, np.ndarray]


def check_accumulation(accumulate: object, mode: object, where: str) -> int:
    """``accumulate`` as an int >= 1 and ``mode`` one of :data:`MODES`, or a ``ValueError`` naming them."""
    if (
        isinstance(accumulate, bool)
        or not isinstance(accumulate, int | np.integer)
        or accumulate < 1
    ):
        raise ValueError(f"{where}: accumulate must be an int >= 1, got {accumulate!r}")
    if mode not in MODES:
        raise ValueError(f"{where}: accumulation must be one of {', '.join(MODES)}, got {mode!r}")
    return int(accumulate)


def accumulation_step(
    model: Module,
    optimizer: Optimizer,
    criterion: Module,
    micro_batches: Sequence[Batch],
    *,
    mode: str = "ghost",
    nonfinite_loss: str = "raise",
) -> Step:
    """One optimizer step over ``micro_batches`` (see the module docstring).  Running statistics change
    only when the step completes; a loss that is not finite raises before the update (as ``train_step``)."""
    step = _exact_pass if mode == "exact" else _ghost_pass
    return step(model, optimizer, criterion, micro_batches, nonfinite_loss)


def _run_micro_batches(
    model: Module, criterion: Module, micro_batches: Sequence[Batch]
) -> tuple[Step, bool]:
    """Forward, loss and backward of every micro-batch, the loss gradients weighted by sample share.
    Returns the step's record and whether a layer stopped the backward (an exact-mode gathering pass)."""
    total = sum(int(xb.shape[0]) for xb, _ in micro_batches)
    mean_loss = getattr(criterion, "reduction", "mean") == "mean"
    outputs, losses, values, stopped = [], [], [], False
    for xb, yb in micro_batches:
        out = model(xb)
        n = int(out.shape[0])
        value = criterion(out, yb)
        losses.append(per_sample_loss(criterion, value, n) * n)
        values.append(float(value) * (n if mean_loss else 1))
        grad = criterion.backward()
        try:
            model.backward(grad * (n / total) if mean_loss else grad)
        except StopPass:
            stopped = True
        outputs.append(out)
    loss_value = sum(values) / total if mean_loss else sum(values)
    targets = concat([yb for _, yb in micro_batches])
    return Step(concat(outputs), targets, sum(losses) / total, loss_value), stopped


def _check_loss(step: Step, nonfinite_loss: str) -> None:
    if nonfinite_loss == "raise" and not math.isfinite(step.loss):
        raise FloatingPointError(f"the loss became {step.loss}")


def _ghost_pass(
    model: Module,
    optimizer: Optimizer,
    criterion: Module,
    micro_batches: Sequence[Batch],
    nonfinite_loss: str,
) -> Step:
    norms = [m for m in model.modules() if isinstance(m, _NormBase) and m.training]
    for m in norms:
        m.defer_batch_stats()
    try:
        optimizer.zero_grad()
        step, _ = _run_micro_batches(model, criterion, micro_batches)
        _check_loss(step, nonfinite_loss)
    except BaseException:
        for m in norms:  # a failed step updates no running statistic
            m._deferred_stats = None
        raise
    for m in norms:
        m.flush_batch_stats()
    optimizer.step()
    return step


def _exact_pass(
    model: Module,
    optimizer: Optimizer,
    criterion: Module,
    micro_batches: Sequence[Batch],
    nonfinite_loss: str,
) -> Step:
    layers = split_batch_layers(model, "fit")
    states = [SplitBatchNorm(m) for m in layers]
    for layer, state in zip(layers, states, strict=True):
        layer.split_batch = state
    try:
        with no_grad():  # statistics, one batch-norm layer per pass, in forward order
            while any(s.stats is None for s in states):
                for xb, _ in micro_batches:
                    with contextlib.suppress(StopPass):  # the gathering layer ends the pass
                        model(xb)
                if not any([s.finish_stats() for s in states]):
                    raise RuntimeError(
                        "fit: exact accumulation reached a batch-norm layer no pass uses"
                    )
        while True:  # the sums, one layer per pass, last layer first; then the step's own pass
            optimizer.zero_grad()
            step, stopped = _run_micro_batches(model, criterion, micro_batches)
            if not stopped:
                break
            if not any([s.finish_sums() for s in states]):
                raise RuntimeError("fit: exact accumulation stopped a backward without gathering")
        _check_loss(step, nonfinite_loss)
    finally:
        for layer in layers:
            layer.split_batch = None
    for state in states:
        state.update_running_stats()
    optimizer.step()
    return step
