"""Every normalization layer against ``torch.nn``: outputs, all gradients and the running statistics after
several training steps, then output and gradients in eval mode.

Tolerances: float64 cases agree to ``rtol = atol = 1e-10``; float32 cases to ``rtol = 1e-4, atol = 2e-5``
(both libraries round differently in float32; the statistics of both are accumulated in higher precision).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.norm_cases import CASES, NormCase, randomize
from helpers.parity import TORCH_NORMS, assert_parity

TRAIN_STEPS = 3


def _torch_module(case: NormCase, state: dict[str, np.ndarray]) -> torch.nn.Module:
    dtype = getattr(torch, case.dtype)
    module = getattr(torch.nn, case.layer)(*case.args, **case.kwargs, dtype=dtype)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return module


def _compare(
    name: str, ours: np.ndarray | None, theirs: torch.Tensor | None, case: NormCase
) -> None:
    assert_parity(ours, theirs, TORCH_NORMS, f"{case.id}: {name}")


def _step(ours, theirs, case: NormCase, rng: np.random.Generator, tag: str) -> None:
    """One forward and backward through both, comparing output, dx, dweight and dbias."""
    x = case.make_input(rng)
    tx = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    ours.zero_grad()
    theirs.zero_grad()
    y = ours(x)
    ty = theirs(tx)
    _compare(f"{tag} output", y, ty, case)
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    dx = ours.backward(dy)
    ty.backward(torch.from_numpy(dy))
    _compare(f"{tag} dx", dx, tx.grad, case)
    for name, p in ours.named_parameters():
        _compare(f"{tag} d{name}", p.grad, getattr(theirs, name).grad, case)


def _compare_buffers(ours, theirs, case: NormCase, tag: str) -> None:
    t_buffers = dict(theirs.named_buffers())
    n_buffers = dict(ours.named_buffers())
    assert set(n_buffers) == set(t_buffers), f"buffers {set(n_buffers)} vs torch {set(t_buffers)}"
    for name in ("running_mean", "running_var"):
        if name in t_buffers:
            _compare(f"{tag} {name}", n_buffers[name], t_buffers[name], case)
    if "num_batches_tracked" in t_buffers and not case.layer.startswith("InstanceNorm"):
        # PyTorch's instance norm never counts its batches; normlab's does (see nn/norm.py)
        assert int(n_buffers["num_batches_tracked"]) == int(t_buffers["num_batches_tracked"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_torch_in_train_then_eval(case: NormCase) -> None:
    rng = np.random.default_rng(1234)
    ours = randomize(case.build(), rng)
    theirs = _torch_module(case, ours.state_dict())
    ours.train()
    theirs.train()
    for step in range(TRAIN_STEPS):
        _step(ours, theirs, case, rng, f"train step {step}")
        _compare_buffers(ours, theirs, case, f"after train step {step}")
    ours.eval()
    theirs.eval()
    _step(ours, theirs, case, rng, "eval")
    _compare_buffers(ours, theirs, case, "after eval")


def test_case_table_covers_the_required_variety() -> None:
    """The table is the proof; make sure it keeps covering what the parity requirement lists."""
    ranks = {len(c.shape) for c in CASES}
    assert {2, 3, 4, 5} <= ranks
    assert {"float32", "float64"} == {c.dtype for c in CASES}
    assert {"contiguous", "strided", "transposed"} == {c.layout for c in CASES}
    bn = [c for c in CASES if c.layer.startswith("BatchNorm")]
    assert {c.kwargs.get("momentum", 0.1) for c in bn} >= {0.1, None}
    assert {c.kwargs.get("affine", True) for c in bn} == {True, False}
    assert {c.kwargs.get("track_running_stats", True) for c in bn} == {True, False}
    layers = {c.layer for c in CASES}
    assert layers >= {
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "LayerNorm",
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "RMSNorm",
    }
