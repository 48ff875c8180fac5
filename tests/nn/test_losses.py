"""Losses against ``torch.nn.functional`` (value and gradient) and against finite differences (float64),
from a table of cases; bad labels and shapes get clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.gradcheck import DEFAULT_THRESHOLD, numerical_gradient, relative_error
from normlab import nn

CE_CASES = [
    {"reduction": "mean", "label_smoothing": 0.0},
    {"reduction": "sum", "label_smoothing": 0.0},
    {"reduction": "none", "label_smoothing": 0.0},
    {"reduction": "mean", "label_smoothing": 0.1},
    {"reduction": "sum", "label_smoothing": 0.25},
    {"reduction": "none", "label_smoothing": 1.0},
]
MSE_CASES = [{"reduction": r} for r in ("mean", "sum", "none")]


def _ce_inputs(dtype: str = "float64"):
    rng = np.random.default_rng(0)
    logits = rng.normal(2.0, 3.0, size=(7, 5)).astype(dtype)
    target = rng.integers(0, 5, size=7)
    return logits, target


def _upstream(loss_value, rng: np.random.Generator):
    """Gradient of a random linear function of the loss: a scalar, or one value per item for 'none'."""
    return rng.normal() if np.ndim(loss_value) == 0 else rng.normal(size=np.shape(loss_value))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kwargs", CE_CASES, ids=str)
def test_cross_entropy_matches_torch(kwargs: dict, dtype: str) -> None:
    logits, target = _ce_inputs(dtype)
    loss = nn.CrossEntropyLoss(**kwargs)
    value = loss(logits, target)
    upstream = _upstream(value, np.random.default_rng(1))
    grad = loss.backward(upstream)

    t_logits = torch.tensor(logits, requires_grad=True)
    t_value = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(target), **kwargs)
    t_value.backward(torch.as_tensor(upstream, dtype=t_value.dtype))
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(value, t_value.detach().numpy(), **tol)
    np.testing.assert_allclose(grad, t_logits.grad.numpy(), **tol)
    assert grad.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kwargs", MSE_CASES, ids=str)
def test_mse_matches_torch(kwargs: dict, dtype: str) -> None:
    rng = np.random.default_rng(2)
    pred, target = (
        rng.normal(size=(2, 4, 3)).astype(dtype),
        rng.normal(size=(2, 4, 3)).astype(dtype),
    )
    loss = nn.MSELoss(**kwargs)
    value = loss(pred, target)
    upstream = _upstream(value, rng)
    grad = loss.backward(upstream)
    t_pred = torch.tensor(pred, requires_grad=True)
    t_value = torch.nn.functional.mse_loss(t_pred, torch.from_numpy(target), **kwargs)
    t_value.backward(torch.as_tensor(upstream, dtype=t_value.dtype))
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(value, t_value.detach().numpy(), **tol)
    np.testing.assert_allclose(grad, t_pred.grad.numpy(), **tol)


@pytest.mark.parametrize(
    ("make", "inputs"),
    [(lambda kw: nn.CrossEntropyLoss(**kw), _ce_inputs)] * len(CE_CASES),
    ids=[str(c) for c in CE_CASES],
)
def test_cross_entropy_gradient_matches_finite_differences(make, inputs, request) -> None:
    kwargs = CE_CASES[request.node.callspec.indices["make"]]
    logits, target = inputs()
    loss = make(kwargs)
    upstream = _upstream(loss(logits, target), np.random.default_rng(3))
    analytic = loss.backward(upstream)
    numeric = numerical_gradient(lambda: float(np.sum(upstream * loss(logits, target))), logits)
    assert relative_error(analytic, numeric) < DEFAULT_THRESHOLD


@pytest.mark.parametrize("kwargs", MSE_CASES, ids=str)
def test_mse_gradient_matches_finite_differences(kwargs: dict) -> None:
    rng = np.random.default_rng(4)
    pred, target = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    loss = nn.MSELoss(**kwargs)
    upstream = _upstream(loss(pred, target), rng)
    analytic = loss.backward(upstream)
    numeric = numerical_gradient(lambda: float(np.sum(upstream * loss(pred, target))), pred)
    assert relative_error(analytic, numeric) < DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (
            np.array([0, 1, 5]),
            ValueError,
            r"CrossEntropyLoss: labels must lie in \[0, 5\).*\[0, 5\]",
        ),
        (np.array([0, -1, 2]), ValueError, r"labels must lie in \[0, 5\).*\[-1, 2\]"),
        (
            np.array([0.0, 1.0, 2.0]),
            TypeError,
            r"CrossEntropyLoss: expected integer class labels.*float64",
        ),
        (np.array([[0], [1], [2]]), ValueError, r"expected labels of shape \(3,\).*got \(3, 1\)"),
        (np.array([0, 1]), ValueError, r"expected labels of shape \(3,\) for 3 samples"),
    ],
)
def test_cross_entropy_rejects_bad_labels(target, error, message: str) -> None:
    logits = np.zeros((3, 5))
    with pytest.raises(error, match=message):
        nn.CrossEntropyLoss()(logits, target)


def test_loss_argument_and_shape_errors() -> None:
    with pytest.raises(ValueError, match="CrossEntropyLoss: expected logits of shape \\(N, C\\)"):
        nn.CrossEntropyLoss()(np.zeros(5), np.array([1]))
    with pytest.raises(TypeError, match="CrossEntropyLoss: expected a floating-point logits"):
        nn.CrossEntropyLoss()(np.zeros((2, 3), dtype=np.int64), np.array([0, 1]))
    with pytest.raises(ValueError, match="MSELoss: prediction and target must have the same shape"):
        nn.MSELoss()(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="empty batch"):
        nn.CrossEntropyLoss()(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    loss = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError, match="forward pass first"):
        loss.backward()
    loss(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"expected an upstream gradient of shape \(\)"):
        loss.backward(np.ones(2))
