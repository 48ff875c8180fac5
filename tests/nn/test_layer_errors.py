"""Bad input to the network layers: errors name the layer and the expected vs received shape or dtype."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import nn, no_grad


def _x(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(dtype)


@pytest.mark.parametrize(
    ("layer", "x", "error", "message"),
    [
        (
            nn.Linear(5, 3),
            _x(4, 6),
            ValueError,
            r"Linear\(in_features=5.*expected input of shape \(N, 5\).*got shape \(4, 6\)",
        ),
        (nn.Linear(12, 3), _x(2, 3, 4), ValueError, r"flatten it first"),
        (
            nn.Linear(5, 3),
            _x(4, 5).astype(np.int64),
            TypeError,
            r"Linear\(.*expected a floating-point input.*int64",
        ),
        (
            nn.Conv2d(3, 4, 3),
            _x(2, 2, 5, 5),
            ValueError,
            r"Conv2d\(3, 4.*expected 4-D input \(N, 3, H, W\), got shape \(2, 2, 5, 5\)",
        ),
        (nn.Conv2d(3, 4, 3), _x(3, 5, 5), ValueError, r"Conv2d\(3, 4.*expected 4-D input"),
        (
            nn.Conv2d(1, 2, 5, padding=1),
            _x(1, 1, 2, 8),
            ValueError,
            r"Conv2d\(1, 2.*kernel extent 5 along H.*larger than the padded input \(2 \+ 2·1 = 4\)",
        ),
        (
            nn.Conv2d(1, 2, 3, dilation=3),
            _x(1, 1, 8, 6),
            ValueError,
            r"kernel extent 7 along W \(kernel 3, dilation 3\)",
        ),
        (
            nn.MaxPool2d(4),
            _x(1, 1, 3, 8),
            ValueError,
            r"MaxPool2d\(kernel_size=\(4, 4\).*kernel extent 4 along H",
        ),
        (
            nn.AvgPool2d(2),
            _x(2, 8),
            ValueError,
            r"AvgPool2d\(.*expected 4-D input \(N, C, H, W\), got shape \(2, 8\)",
        ),
        (
            nn.ReLU(),
            _x(2, 3).astype(np.int32),
            TypeError,
            r"ReLU\(\): expected a floating-point input",
        ),
        (nn.Softmax(dim=2), _x(2, 3), ValueError, r"Softmax\(dim=2\): dim 2 is out of range"),
        (
            nn.Flatten(2, 1),
            _x(2, 3, 4),
            ValueError,
            r"Flatten\(start_dim=2, end_dim=1\): cannot flatten",
        ),
    ],
)
def test_bad_input(layer: nn.Module, x: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        layer(x)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: nn.Linear(0, 3), "Linear: in_features must be a positive integer"),
        (lambda: nn.Conv2d(1, 2, 0), "Conv2d: kernel_size must be an int or a pair of ints >= 1"),
        (lambda: nn.Conv2d(1, 2, 3, padding=-1), "Conv2d: padding must be"),
        (lambda: nn.MaxPool2d(2, padding=2), "MaxPool2d: padding .* at most half the kernel size"),
        (lambda: nn.GELU("fast"), "GELU: approximate must be"),
    ],
)
def test_bad_constructor_arguments(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_backward_protocol_errors() -> None:
    layer = nn.Linear(3, 2, rng=0)
    with pytest.raises(RuntimeError, match=r"Linear\(.*backward needs a forward pass first"):
        layer.backward(np.ones((4, 2), np.float32))
    y = layer(_x(4, 3))
    with pytest.raises(
        ValueError, match=r"expected a gradient of shape \(4, 2\) \(the output's\), got \(2, 4\)"
    ):
        layer.backward(np.ones((2, 4), np.float32))
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="one backward"):
        layer.backward(np.ones_like(y))
    with no_grad():
        layer(_x(4, 3))
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.ones_like(y))


def test_gradients_accumulate_until_zero_grad() -> None:
    layer = nn.Linear(3, 2, rng=0)
    x = _x(4, 3)
    layer.backward(np.ones_like(layer(x)))
    first = layer.weight.grad.copy()
    layer.backward(np.ones_like(layer(x)))
    np.testing.assert_allclose(layer.weight.grad, 2 * first, rtol=1e-6)
    layer.zero_grad()
    assert layer.weight.grad is None
