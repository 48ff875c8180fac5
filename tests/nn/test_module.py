"""Module and Parameter: registration, modes, traversal, gradients, dtype."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.head = nn.LayerNorm(3)
        self.scale = nn.Parameter(np.ones(3, np.float32))
        self.register_buffer("steps", np.zeros((), np.int64))
        self.register_buffer("scratch", np.zeros(3), persistent=False)


def test_parameters_and_buffers_are_kept_apart() -> None:
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "scale",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    ]
    assert [n for n, _ in net.named_buffers()] == [
        "steps",
        "scratch",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    ]
    keys = list(net.state_dict())
    assert "scratch" not in keys  # non-persistent buffers are not saved
    assert keys[:2] == ["scale", "steps"] and "norm.running_var" in keys


def test_train_and_eval_are_recursive() -> None:
    net = Net()
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    with pytest.raises(TypeError, match="bool"):
        net.train("no")


def test_zero_grad_and_accumulation() -> None:
    bn = nn.BatchNorm1d(3)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    dy = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    bn(x)
    bn.backward(dy)
    first = bn.weight.grad.copy()
    bn(x)
    bn.backward(dy)
    np.testing.assert_allclose(bn.weight.grad, 2 * first, rtol=1e-6)  # gradients accumulate
    bn.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(bn.weight.grad, 0)
    bn.zero_grad()
    assert bn.weight.grad is None


def test_double_casts_parameters_and_float_buffers_only() -> None:
    net = Net().double()
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert net.norm.running_mean.dtype == np.float64
    assert net.norm.num_batches_tracked.dtype == np.int64
    assert net.steps.dtype == np.int64


def test_assignment_rules() -> None:
    net = Net()
    with pytest.raises(TypeError, match="parameter 'scale'"):
        net.scale = np.ones(3)
    with pytest.raises(TypeError, match="buffer 'steps'"):
        net.steps = 3
    net.head = None
    assert "head.weight" not in dict(net.named_parameters())
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = net.missing
    with pytest.raises(TypeError, match="floating-point"):
        nn.Parameter(np.arange(3))


def test_repr_shows_the_tree() -> None:
    text = repr(Net())
    assert "(norm): BatchNorm1d(3, eps=1e-05, momentum=0.1" in text
    assert "(head): LayerNorm((3,), eps=1e-05, elementwise_affine=True)" in text


def test_parameter_accumulate_rejects_wrong_shape_and_respects_requires_grad() -> None:
    p = nn.Parameter(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="does not match"):
        p.accumulate_grad(np.zeros(4, np.float32))
    p.requires_grad = False
    p.accumulate_grad(np.ones(3, np.float32))
    assert p.grad is None
