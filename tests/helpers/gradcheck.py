"""The one numerical-gradient check every backward in normlab is tested with.

A vector-Jacobian product: pick a random upstream gradient ``g`` of the output's shape, define the scalar
``L = sum(g * f(x))`` and compare the analytic dL/d(input) and dL/d(parameter) returned by ``backward`` with
central differences of L, computed in float64.  The relative error is ``||a - n|| / (||a|| + ||n||)``: scale
free, and it fails when a whole term of the gradient is missing even if most entries agree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from normlab.nn import Module

DEFAULT_STEP = 1e-6
DEFAULT_THRESHOLD = 1e-7


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """``||a - n|| / (||a|| + ||n||)``, 0 when both are zero."""
    diff = float(np.linalg.norm(np.asarray(analytic, np.float64) - np.asarray(numeric, np.float64)))
    scale = float(np.linalg.norm(analytic) + np.linalg.norm(numeric))
    return 0.0 if scale == 0.0 else diff / scale


def numerical_gradient(
    loss: Callable[[], float], array: np.ndarray, h: float = DEFAULT_STEP
) -> np.ndarray:
    """dL/d(array) by central differences, perturbing ``array`` in place (restored afterwards)."""
    grad = np.zeros(array.shape, dtype=np.float64)
    flat_view = array.reshape(-1)  # a view: ``array`` must be contiguous
    assert np.shares_memory(flat_view, array), "numerical_gradient needs a contiguous array"
    for i in range(flat_view.size):
        original = flat_view[i]
        flat_view[i] = original + h
        plus = loss()
        flat_view[i] = original - h
        minus = loss()
        flat_view[i] = original
        grad.reshape(-1)[i] = (plus - minus) / (2 * h)
    return grad


def module_gradient_errors(
    module: Module, x: np.ndarray, *, seed: int = 0, h: float = DEFAULT_STEP
) -> dict[str, float]:
    """Relative errors of ``module.backward`` against central differences, for the input and every
    parameter, in the module's current mode.  Buffers (running statistics) are restored afterwards, so the
    numerical passes do not leave traces; in eval mode they are constants of the function being checked.
    """
    if x.dtype != np.float64 or any(p.dtype != np.float64 for p in module.parameters()):
        raise TypeError(
            "gradient checks run in float64: pass float64 input and call module.double()"
        )
    x = np.array(x, dtype=np.float64, copy=True)
    saved = {k: v.copy() for k, v in module.state_dict().items()}
    rng = np.random.default_rng(seed)

    module.zero_grad()
    y = module(x)
    upstream = rng.standard_normal(y.shape)
    dx = module.backward(upstream)
    analytic = {"input": dx} | {
        name: (np.zeros(p.shape) if p.grad is None else p.grad.copy())
        for name, p in module.named_parameters()
    }

    def loss() -> float:
        return float(np.sum(upstream * module(x)))

    numeric = {"input": numerical_gradient(loss, x, h)}
    for name, p in module.named_parameters():
        numeric[name] = numerical_gradient(loss, p.data, h)
    module.load_state_dict(saved)
    return {name: relative_error(analytic[name], numeric[name]) for name in analytic}


def check_module_gradients(
    module: Module,
    x: np.ndarray,
    *,
    seed: int = 0,
    h: float = DEFAULT_STEP,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, float]:
    """Assert every relative error of :func:`module_gradient_errors` is below ``threshold``."""
    errors = module_gradient_errors(module, x, seed=seed, h=h)
    bad = {k: v for k, v in errors.items() if not v < threshold}
    assert not bad, (
        f"{module!r}: gradient check failed (threshold {threshold:g}): {bad}; all: {errors}"
    )
    return errors
