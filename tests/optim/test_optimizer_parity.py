"""Every optimizer against ``torch.optim`` on the same parameters and gradients, step by step for 20 steps.

Gradients depend on the current parameters (``g = 0.5·θ + noise``), so a wrong update rule changes every later
gradient too.  Tolerances: float64 ``rtol = 1e-10, atol = 1e-12`` (the two libraries order a few float
operations differently); float32 ``rtol = 1e-5, atol = 1e-6``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from normlab import optim
from normlab.nn import Parameter

STEPS = 20
SHAPES = [(3, 4), (4,), (2, 3, 2)]
TOL = {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 1e-5, "atol": 1e-6}}


@dataclass(frozen=True)
class OptCase:
    ours: str
    theirs: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float64"

    @property
    def id(self) -> str:
        kw = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.ours}[{kw}]-{self.dtype}"


CASES = [
    OptCase("SGD", "SGD", {"lr": 0.1}),
    OptCase("SGD", "SGD", {"lr": 0.1, "weight_decay": 0.01}),
    OptCase("SGD", "SGD", {"lr": 0.05, "momentum": 0.9}),
    OptCase("SGD", "SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-3}),
    OptCase("SGD", "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    OptCase("SGD", "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    OptCase("AdaGrad", "Adagrad", {"lr": 0.1}),
    OptCase("AdaGrad", "Adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01}),
    OptCase("AdaGrad", "Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-6}),
    OptCase("RMSProp", "RMSprop", {"lr": 0.01}),
    OptCase("RMSProp", "RMSprop", {"lr": 0.01, "alpha": 0.9, "weight_decay": 0.01}),
    OptCase("RMSProp", "RMSprop", {"lr": 0.01, "momentum": 0.8}),
    OptCase("RMSProp", "RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}),
    OptCase("Adam", "Adam", {"lr": 0.01}),
    OptCase("Adam", "Adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.05}),
    OptCase("Adam", "Adam", {"lr": 0.01, "amsgrad": True, "eps": 1e-6}),
    OptCase("AdamW", "AdamW", {"lr": 0.01}),
    OptCase("AdamW", "AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    OptCase("SGD", "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, "float32"),
    OptCase("Adam", "Adam", {"lr": 0.01, "weight_decay": 0.01}, "float32"),
    OptCase("AdamW", "AdamW", {"lr": 0.01}, "float32"),
    OptCase("RMSProp", "RMSprop", {"lr": 0.01, "centered": True}, "float32"),
]

# torch keeps the same state under the same names; "step" is a tensor there
STATE_NAMES = (
    "momentum_buffer",
    "sum",
    "square_avg",
    "grad_avg",
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
)


def _pair_of_params(dtype: str, seed: int = 0) -> tuple[list[Parameter], list[torch.Tensor]]:
    rng = np.random.default_rng(seed)
    values = [rng.normal(size=s).astype(dtype) for s in SHAPES]
    ours = [Parameter(v.copy()) for v in values]
    theirs = [torch.tensor(v.copy(), requires_grad=True) for v in values]
    return ours, theirs


def _set_gradients(
    ours: list[Parameter], theirs: list[torch.Tensor], rng: np.random.Generator
) -> None:
    for p, t in zip(ours, theirs, strict=True):
        g = (0.5 * p.data + rng.normal(size=p.shape)).astype(p.dtype)
        p.grad = g.copy()
        t.grad = torch.from_numpy(g.copy())


def _run_both(ours_opt, theirs_opt, ours, theirs, case_tol, steps=STEPS, seed=1) -> None:
    rng = np.random.default_rng(seed)
    for step in range(steps):
        _set_gradients(ours, theirs, rng)
        ours_opt.step()
        theirs_opt.step()
        for i, (p, t) in enumerate(zip(ours, theirs, strict=True)):
            np.testing.assert_allclose(
                p.data, t.detach().numpy(), err_msg=f"step {step} param {i}", **case_tol
            )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_update_rule_matches_torch(case: OptCase) -> None:
    ours, theirs = _pair_of_params(case.dtype)
    ours_opt = getattr(optim, case.ours)(ours, **case.kwargs)
    theirs_opt = getattr(torch.optim, case.theirs)(theirs, **case.kwargs)
    _run_both(ours_opt, theirs_opt, ours, theirs, TOL[case.dtype])
    for p, t in zip(ours, theirs, strict=True):
        t_state = theirs_opt.state[t]
        ours_state = ours_opt.state[p]
        names = {n for n in STATE_NAMES if t_state.get(n) is not None}
        assert names == {n for n in STATE_NAMES if n in ours_state}
        for name in names:
            np.testing.assert_allclose(
                ours_state[name], t_state[name].numpy(), err_msg=name, **TOL[case.dtype]
            )
        if "step" in t_state:
            assert ours_state["step"] == int(t_state["step"]) == STEPS
        assert p.data.dtype == np.dtype(case.dtype)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSProp", "AdaGrad"])
def test_parameter_groups_match_torch(name: str) -> None:
    ours, theirs = _pair_of_params("float64")
    torch_name = {"AdaGrad": "Adagrad", "RMSProp": "RMSprop"}.get(name, name)
    extra = {"momentum": 0.9} if name == "SGD" else {}

    def groups(params):
        return [
            {"params": params[:2], "weight_decay": 0.1},
            {"params": params[2:], "lr": 0.002, "weight_decay": 0.0},
        ]

    ours_opt = getattr(optim, name)(groups(ours), lr=0.02, **extra)
    theirs_opt = getattr(torch.optim, torch_name)(groups(theirs), lr=0.02, **extra)
    _run_both(ours_opt, theirs_opt, ours, theirs, TOL["float64"])
    assert ours_opt.param_groups[1]["lr"] == 0.002
    assert ours_opt.param_groups[0]["weight_decay"] == 0.1


def test_weight_decay_is_coupled_in_adam_and_decoupled_in_adamw() -> None:
    """With a zero gradient Adam's L2 term still moves θ by about lr (the normalized step), AdamW's decay by
    exactly lr·λ·θ: the two formulations differ, as they should."""
    theta = np.array([2.0])
    adam_p, adamw_p = Parameter(theta.copy()), Parameter(theta.copy())
    adam = optim.Adam([adam_p], lr=0.1, weight_decay=0.01)
    adamw = optim.AdamW([adamw_p], lr=0.1, weight_decay=0.01)
    adam_p.grad = np.zeros(1)
    adamw_p.grad = np.zeros(1)
    adam.step()
    adamw.step()
    np.testing.assert_allclose(adamw_p.data, 2.0 * (1 - 0.1 * 0.01))  # no Adam step: m = 0
    np.testing.assert_allclose(
        adam_p.data, 2.0 - 0.1, rtol=1e-6
    )  # m/sqrt(v) = 1 for the L2 gradient alone


def test_parameters_without_gradient_or_frozen_are_left_alone() -> None:
    a, b, c = Parameter(np.ones(2)), Parameter(np.ones(2)), Parameter(np.ones(2))
    c.requires_grad = False
    opt = optim.SGD([a, b, c], lr=0.5, momentum=0.9)
    a.grad = np.ones(2)
    c.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(a.data, [0.5, 0.5])
    np.testing.assert_array_equal(b.data, [1.0, 1.0])
    np.testing.assert_array_equal(c.data, [1.0, 1.0])
    assert b not in opt.state and c not in opt.state


def test_zero_grad() -> None:
    a = Parameter(np.ones(3))
    opt = optim.SGD([a], lr=0.1)
    a.grad = np.full(3, 2.0)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, np.zeros(3))
    opt.zero_grad()
    assert a.grad is None
