r"""Learning-rate schedules, each a closed-form function of the step count.

A scheduler sets ``lr`` in every parameter group of its optimizer.  Call ``scheduler.step()`` once per epoch
(or per iteration, if the schedule is counted in iterations) *after* ``optimizer.step()``, as in
``torch.optim.lr_scheduler``; creating a scheduler already sets the learning rate for step 0.  The base
learning rate of each group is its ``lr`` when the first scheduler was attached (kept in the group as
``"initial_lr"``, as PyTorch does).

=====================  =============================================================================
schedule               learning rate at step t (base rate :math:`\eta_0`)
=====================  =============================================================================
``StepLR``             :math:`\eta_0\,\gamma^{\lfloor t / \text{step\_size} \rfloor}`
``CosineAnnealingLR``  :math:`\eta_{\min} + (\eta_0 - \eta_{\min})\,\tfrac12\,(1 + \cos(\pi t / T_{\max}))`
``LinearLR``           :math:`\eta_0\,(s + (e - s)\,\min(t, T) / T)`: a linear warm-up from factor s to e
``SequentialLR``       schedule k from milestone k on, with its own step count restarting at 0
=====================  =============================================================================

Being closed forms, the schedules compose without drift and a scheduler's whole state is its step count.
PyTorch computes the same values recursively; the tests check both agree for 20 steps.
:func:`warmup_cosine` chains a linear warm-up into cosine annealing.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from normlab.optim.optimizer import Optimizer


class LRScheduler:
    """Base class: subclasses implement :meth:`lr_at` (the learning rates at a given step)."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: expected a normlab Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        elif any("initial_lr" not in g for g in optimizer.param_groups):
            raise KeyError(
                f"{type(self).__name__}: resuming (last_epoch={last_epoch}) needs 'initial_lr' in every group"
            )
        self.base_lrs: list[float] = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr: list[float] = [g["lr"] for g in optimizer.param_groups]
        self.step()

    def lr_at(self, step: int) -> list[float]:
        """The learning rate of every parameter group at ``step``."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one step and set the optimizer's learning rates."""
        self.last_epoch += 1
        self._last_lr = self.lr_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The learning rates the last :meth:`step` set."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "base_lrs": list(self.base_lrs),
            "last_lr": list(self._last_lr),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the step count (the optimizer's learning rates come with the optimizer's own state)."""
        self._check_state(state_dict)
        self.last_epoch = int(state_dict["last_epoch"])
        self.base_lrs = [float(v) for v in state_dict["base_lrs"]]
        self._last_lr = [float(v) for v in state_dict["last_lr"]]

    def _check_state(self, state_dict: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` if ``state_dict`` does not fit this scheduler (nothing is changed)."""
        name = type(self).__name__
        n = len(self.optimizer.param_groups)
        if not isinstance(state_dict, Mapping) or not {"last_epoch", "base_lrs", "last_lr"} <= set(
            state_dict
        ):
            raise ValueError(f"{name}.load_state_dict: expected keys last_epoch, base_lrs, last_lr")
        epoch = state_dict["last_epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(
                f"{name}.load_state_dict: last_epoch must be an int >= 0, got {epoch!r}"
            )
        for key in ("base_lrs", "last_lr"):
            values = state_dict[key]
            if not isinstance(values, Sequence) or len(values) != n:
                raise ValueError(
                    f"{name}.load_state_dict: {key} must list {n} learning rate(s), got {values!r}"
                )


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` steps."""

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive int, got {step_size!r}")
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> list[float]:
        return [base * self.gamma ** (step // self.step_size) for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Anneal from the base rate to ``eta_min`` along half a cosine over ``T_max`` steps (SGDR without
    restarts; beyond ``T_max`` the cosine continues, as in PyTorch)."""

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive int, got {T_max!r}")
        self.T_max, self.eta_min = T_max, float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> list[float]:
        weight = 0.5 * (1.0 + math.cos(math.pi * step / self.T_max))
        return [self.eta_min + (base - self.eta_min) * weight for base in self.base_lrs]


class LinearLR(LRScheduler):
    """Scale the base rate by a factor moving linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps, then constant: the usual linear warm-up."""

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if not 0.0 < start_factor <= 1.0 or not 0.0 <= end_factor <= 1.0:
            raise ValueError(
                f"LinearLR: expected 0 < start_factor <= 1 and 0 <= end_factor <= 1, got {start_factor}, {end_factor}"
            )
        if isinstance(total_iters, bool) or not isinstance(total_iters, int) or total_iters < 1:
            raise ValueError(f"LinearLR: total_iters must be a positive int, got {total_iters!r}")
        self.start_factor, self.end_factor, self.total_iters = (
            float(start_factor),
            float(end_factor),
            total_iters,
        )
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> list[float]:
        progress = min(step, self.total_iters) / self.total_iters
        factor = self.start_factor + (self.end_factor - self.start_factor) * progress
        return [base * factor for base in self.base_lrs]


class SequentialLR(LRScheduler):
    """Run ``schedulers[k]`` from step ``milestones[k-1]`` on, each counting its own steps from 0 there."""

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch: int = -1,
    ) -> None:
        schedulers, milestones = list(schedulers), [int(m) for m in milestones]
        if not schedulers or any(s.optimizer is not optimizer for s in schedulers):
            raise ValueError("SequentialLR: expected schedulers of this same optimizer")
        if (
            len(milestones) != len(schedulers) - 1
            or milestones != sorted(milestones)
            or any(m < 1 for m in milestones)
        ):
            raise ValueError(
                f"SequentialLR: expected {len(schedulers) - 1} increasing positive milestone(s), got {milestones}"
            )
        self.schedulers, self.milestones = schedulers, milestones
        super().__init__(optimizer, last_epoch)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for scheduler in self.schedulers:  # the children compute from the same base rates
            scheduler.base_lrs = list(self.base_lrs)

    def lr_at(self, step: int) -> list[float]:
        k = bisect.bisect_right(self.milestones, step)
        start = self.milestones[k - 1] if k > 0 else 0
        return self.schedulers[k].lr_at(step - start)


def warmup_cosine(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int,
    start_factor: float = 0.1,
    eta_min: float = 0.0,
) -> SequentialLR:
    """Linear warm-up from ``start_factor``·base over ``warmup_steps``, then cosine annealing to ``eta_min``
    at ``total_steps`` (``LinearLR`` then ``CosineAnnealingLR`` in a ``SequentialLR``)."""
    if not 0 < warmup_steps < total_steps:
        raise ValueError(
            f"warmup_cosine: expected 0 < warmup_steps < total_steps, got {warmup_steps}, {total_steps}"
        )
    warmup = LinearLR(optimizer, start_factor, 1.0, warmup_steps)
    cosine = CosineAnnealingLR(optimizer, total_steps - warmup_steps, eta_min)
    return SequentialLR(optimizer, [warmup, cosine], [warmup_steps])
