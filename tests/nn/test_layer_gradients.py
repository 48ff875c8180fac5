"""Float64 numerical gradient checks (``helpers/gradcheck.py``) of every network layer, for the input and
every parameter, from the same table of cases as the PyTorch parity tests, in training and eval mode."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.gradcheck import DEFAULT_THRESHOLD, check_module_gradients, module_gradient_errors
from helpers.layer_cases import CASES, LayerCase
from normlab import nn


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_backward_matches_finite_differences(case: LayerCase, mode: str) -> None:
    if mode == "train" and case.random_in_training:
        pytest.skip("a fresh random mask per forward: checked with a fixed mask below")
    rng = np.random.default_rng(11)
    module = case.build("float64")
    module.train(mode == "train")
    x = rng.normal(0.5, 1.5, size=case.shape)
    errors = check_module_gradients(module, x)
    assert set(errors) == {"input"} | {name for name, _ in module.named_parameters()}


class _FixedMaskDropout(nn.Dropout):
    """Dropout that draws the same mask on every forward, so finite differences see one function."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.generator = np.random.default_rng(5)
        return super().forward(x)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.8])
def test_dropout_backward_in_training(p: float) -> None:
    module = nn.Sequential(
        nn.Linear(6, 7, rng=0, dtype=np.float64), _FixedMaskDropout(p), nn.Tanh()
    )
    check_module_gradients(module, np.random.default_rng(1).normal(size=(5, 6)))


class _LinearWithWrongWeightGradient(nn.Linear):
    """A plausible bug: dW computed from the output gradient without the input (x transposed missing)."""

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        dx = super().backward(grad_output)
        self.weight.grad = self.weight.grad * 1.01
        return dx


def test_gradient_check_catches_a_slightly_wrong_weight_gradient() -> None:
    module = _LinearWithWrongWeightGradient(4, 3, rng=0, dtype=np.float64)
    errors = module_gradient_errors(module, np.random.default_rng(0).normal(size=(5, 4)))
    assert errors["weight"] > 100 * DEFAULT_THRESHOLD
    assert errors["input"] < DEFAULT_THRESHOLD


def test_bias_before_batch_norm_gets_zero_gradient_in_training() -> None:
    """BN subtracts the batch mean, so a bias added before it cannot change the output: its gradient is 0
    (the reason the case table builds Linear/Conv without bias before BN)."""
    model = nn.Sequential(
        nn.Linear(4, 3, rng=0, dtype=np.float64), nn.BatchNorm1d(3, dtype=np.float64)
    )
    rng = np.random.default_rng(0)
    y = model(rng.normal(size=(6, 4)))
    model.backward(rng.normal(size=y.shape))
    np.testing.assert_allclose(model[0].bias.grad, 0.0, atol=1e-12)
    assert np.abs(model[0].weight.grad).max() > 1e-3
