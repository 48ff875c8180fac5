"""Every network layer against ``torch.nn``: output and every gradient (input, weight, bias), in float64 and
float32, and for the containers the running statistics after training steps and the eval-mode output.

Tolerances: float64 ``rtol = atol = 1e-10``; float32 ``rtol = 1e-4, atol = 1e-5`` (the libraries sum in
different orders).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.layer_cases import CASES, LayerCase
from helpers.parity import TORCH_LAYERS, assert_parity


def _compare(name: str, ours: np.ndarray, theirs: torch.Tensor, dtype: str) -> None:
    assert_parity(ours, theirs, TORCH_LAYERS, name, dtype=dtype)


def _step(ours, theirs, x: np.ndarray, rng: np.random.Generator, dtype: str, tag: str) -> None:
    tx = torch.tensor(x, requires_grad=True)
    ours.zero_grad()
    theirs.zero_grad()
    y = ours(x)
    ty = theirs(tx)
    _compare(f"{tag} output", y, ty, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ours.backward(dy)
    ty.backward(torch.from_numpy(dy))
    _compare(f"{tag} dx", dx, tx.grad, dtype)
    t_params = dict(theirs.named_parameters())
    assert {n for n, _ in ours.named_parameters()} == set(t_params)
    for name, p in ours.named_parameters():
        _compare(f"{tag} d{name}", p.grad, t_params[name].grad, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_layer_matches_torch(case: LayerCase, dtype: str) -> None:
    rng = np.random.default_rng(3)
    ours = case.build(dtype)
    theirs = case.build_torch(ours, dtype)
    theirs.train(ours.training)
    for step in range(3):  # several steps: running statistics of the containers move
        x = rng.normal(0.5, 1.5, size=case.shape).astype(dtype)
        _step(ours, theirs, x, rng, dtype, f"{case.id} step {step}")
    t_buffers = dict(theirs.named_buffers())
    for name, buf in ours.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert int(buf) == int(t_buffers[name])
        else:
            _compare(f"buffer {name}", buf, t_buffers[name], dtype)
    ours.eval()
    theirs.eval()
    x = rng.normal(0.5, 1.5, size=case.shape).astype(dtype)
    _step(ours, theirs, x, rng, dtype, f"{case.id} eval")


def test_cross_entropy_of_extreme_logits_is_finite_and_matches_torch() -> None:
    from normlab import nn

    logits = np.array([[1e4, -1e4, 0.0], [-3e3, 2e3, 2e3 - 1.0]])
    target = np.array([1, 2])
    loss = nn.CrossEntropyLoss()
    value = loss(logits, target)
    grad = loss.backward()
    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(target))
    t_loss.backward()
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, t_loss.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, t_logits.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_max_pool_ties_send_the_gradient_to_the_first_maximum_like_torch() -> None:
    from normlab import nn

    x = np.array([[[[1.0, 1.0, 0.0], [1.0, 1.0, 2.0], [2.0, 0.0, 2.0]]]])
    pool = nn.MaxPool2d(2, stride=1)
    y = pool(x)
    dx = pool.backward(np.ones_like(y))
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(tx, 2, stride=1).sum().backward()
    np.testing.assert_array_equal(dx, tx.grad.numpy())
    assert dx.sum() == y.size  # every window sends its whole gradient to one input
