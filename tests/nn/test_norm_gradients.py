"""Float64 numerical gradient checks of every normalization layer, for dx and every parameter, in training
and in eval mode, on inputs with a non-zero mean (see ``helpers/gradcheck.py`` for the method)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.gradcheck import DEFAULT_THRESHOLD, check_module_gradients, module_gradient_errors
from helpers.norm_cases import CASES, NormCase, randomize
from normlab import nn

# one case per layer configuration (float64 only; the parity cases differ in dtype/layout as well)
GRAD_CASES = list({(c.layer, c.args, repr(c.kwargs), c.shape): c for c in CASES}.values())


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.id)
def test_backward_matches_finite_differences(case: NormCase, mode: str) -> None:
    rng = np.random.default_rng(7)
    module = randomize(case.build("float64"), rng)
    module.train(mode == "train")
    x = rng.normal(3.0, 2.0, size=case.shape)
    errors = check_module_gradients(module, x)
    expected = {"input"} | {name for name, _ in module.named_parameters()}
    assert set(errors) == expected


class _BatchNormWithoutStatisticsTerms(nn.BatchNorm1d):
    """A plausible bug: a backward that treats the batch statistics as constants in training."""

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        cache = self._cache
        dx = super().backward(grad_output)
        w = 1.0 if cache.weight is None else cache.weight
        return grad_output * w * cache.rstd + 0 * dx


def test_gradient_check_catches_a_missing_term() -> None:
    """The check is only worth something if it fails on a wrong backward."""
    rng = np.random.default_rng(0)
    module = randomize(_BatchNormWithoutStatisticsTerms(4, dtype=np.float64), rng)
    errors = module_gradient_errors(module, rng.normal(3.0, 2.0, size=(6, 4)))
    assert errors["input"] > 1e3 * DEFAULT_THRESHOLD
    # the parameter gradients of that backward are right: only dx is wrong, and only dx is flagged
    assert errors["weight"] < DEFAULT_THRESHOLD


def test_gradient_check_refuses_float32() -> None:
    with pytest.raises(TypeError, match="float64"):
        module_gradient_errors(nn.BatchNorm1d(3), np.ones((4, 3), np.float32))
