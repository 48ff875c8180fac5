"""Learning-rate schedules against ``torch.optim.lr_scheduler`` for 20 steps, two parameter groups with
different base rates.  PyTorch computes them recursively, normlab in closed form: ``rtol = 1e-12``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from normlab import optim
from normlab.nn import Parameter

STEPS = 20
BASE_LRS = (0.1, 0.03)


def _optimizers() -> tuple[optim.SGD, torch.optim.SGD]:
    ours = optim.SGD(
        [
            {"params": [Parameter(np.ones(2))]},
            {"params": [Parameter(np.ones(2))], "lr": BASE_LRS[1]},
        ],
        lr=BASE_LRS[0],
        momentum=0.9,
    )
    theirs = torch.optim.SGD(
        [
            {"params": [torch.ones(2, requires_grad=True)]},
            {"params": [torch.ones(2, requires_grad=True)], "lr": BASE_LRS[1]},
        ],
        lr=BASE_LRS[0],
        momentum=0.9,
    )
    return ours, theirs


SCHEDULES = {
    "step": (
        lambda o: optim.StepLR(o, step_size=4, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.StepLR(o, 4, 0.5),
    ),
    "cosine": (
        lambda o: optim.CosineAnnealingLR(o, T_max=12, eta_min=1e-3),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=1e-3),
    ),
    "linear-warmup": (
        lambda o: optim.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=6),
        lambda o: torch.optim.lr_scheduler.LinearLR(
            o, start_factor=0.1, end_factor=1.0, total_iters=6
        ),
    ),
    "linear-decay": (
        lambda o: optim.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=8),
        lambda o: torch.optim.lr_scheduler.LinearLR(
            o, start_factor=1.0, end_factor=0.2, total_iters=8
        ),
    ),
    "warmup-then-cosine": (
        lambda o: optim.warmup_cosine(
            o, warmup_steps=5, total_steps=20, start_factor=0.1, eta_min=1e-4
        ),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(
                    o, start_factor=0.1, end_factor=1.0, total_iters=5
                ),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=15, eta_min=1e-4),
            ],
            milestones=[5],
        ),
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_matches_torch(name: str) -> None:
    ours_opt, theirs_opt = _optimizers()
    build_ours, build_theirs = SCHEDULES[name]
    ours, theirs = build_ours(ours_opt), build_theirs(theirs_opt)
    seen = []
    for step in range(STEPS):
        ours_lrs = [g["lr"] for g in ours_opt.param_groups]
        theirs_lrs = [g["lr"] for g in theirs_opt.param_groups]
        np.testing.assert_allclose(ours_lrs, theirs_lrs, rtol=1e-12, err_msg=f"step {step}")
        np.testing.assert_allclose(ours.get_last_lr(), theirs.get_last_lr(), rtol=1e-12)
        seen.append(ours_lrs[0])
        ours_opt.step()
        theirs_opt.step()
        ours.step()
        theirs.step()
    assert len(set(seen)) > 2, "the schedule never changed the learning rate"


def test_warmup_cosine_shape() -> None:
    opt, _ = _optimizers()
    sched = optim.warmup_cosine(opt, warmup_steps=4, total_steps=10, start_factor=0.25)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    # linear up to the base 0.1
    np.testing.assert_allclose(lrs[:5], [0.025, 0.04375, 0.0625, 0.08125, 0.1])
    assert all(a > b for a, b in itertools.pairwise(lrs[4:]))  # then strictly down
    assert lrs[10] == pytest.approx(0.0, abs=1e-15)


def test_scheduler_state_round_trip() -> None:
    opt, _ = _optimizers()
    sched = optim.StepLR(opt, step_size=3, gamma=0.1)
    for _ in range(7):
        sched.step()
    state = sched.state_dict()
    opt2, _ = _optimizers()
    opt2.load_state_dict(opt.state_dict())
    sched2 = optim.StepLR(opt2, step_size=3, gamma=0.1, last_epoch=-1)
    sched2.load_state_dict(state)
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    with pytest.raises(ValueError, match="last_epoch"):
        sched2.load_state_dict({"last_epoch": -5, "base_lrs": [0.1, 0.1], "last_lr": [0.1, 0.1]})
