"""Optimizers, fit/evaluate/predict and checkpoints with a model on a second device.

array-api-strict's ``device1`` stands in for a GPU (it refuses to mix devices and to become a NumPy array);
every result is compared with the same run on NumPy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from normlab import kernels, nn, optim

xs = pytest.importorskip("array_api_strict", reason="array-api-strict is a test dependency")

CPU, DEVICE1 = xs.Device("CPU_DEVICE"), xs.Device("device1")


@pytest.fixture(autouse=True)
def reference_kernels():
    kernels.use("reference")
    yield
    kernels.use()


def _host(a: Any) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else np.asarray(a.to_device(CPU))


def _on_device1(model: nn.Module) -> nn.Module:
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                p.data = xs.asarray(p.data, device=DEVICE1)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = xs.asarray(b, device=DEVICE1)
    return model


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, 6, rng=np.random.default_rng(1)),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 3, rng=np.random.default_rng(2)),
    ).to(np.float64)


OPTIMIZERS: dict[str, Callable[[Any], optim.Optimizer]] = {
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "sgd-momentum-decay": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov": lambda p: optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-3),
    "adam-amsgrad": lambda p: optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw": lambda p: optim.AdamW(p, lr=0.01),
    "rmsprop": lambda p: optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda p: optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1),
}


def _steps(model: nn.Module, opt: optim.Optimizer, move: Callable[[np.ndarray], Any]) -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        x, dy = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
        opt.zero_grad()
        model(move(x))
        model.backward(move(dy))
        opt.step()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_an_optimizer_steps_parameters_on_device1_as_on_numpy(name: str) -> None:
    reference, model = _mlp(), _on_device1(_mlp())
    opt_ref, opt = OPTIMIZERS[name](reference.parameters()), OPTIMIZERS[name](model.parameters())
    _steps(reference, opt_ref, lambda a: a)
    _steps(model, opt, lambda a: xs.asarray(a, device=DEVICE1))
    for p_ref, p in zip(reference.parameters(), model.parameters(), strict=True):
        assert p.data.device == DEVICE1
        np.testing.assert_allclose(_host(p.data), p_ref.data, rtol=1e-12, atol=1e-14)
    state_ref, state = opt_ref.state_dict()["state"], opt.state_dict()["state"]
    for i, entry in state.items():
        for key, value in entry.items():
            if key == "step":
                assert value == state_ref[i][key]
                continue
            assert value.device == DEVICE1
            np.testing.assert_allclose(_host(value), state_ref[i][key], rtol=1e-12, atol=1e-14)


def test_optimizer_state_saved_on_one_device_loads_on_the_other() -> None:
    model = _on_device1(_mlp())
    opt = optim.Adam(model.parameters(), lr=0.01)
    _steps(model, opt, lambda a: xs.asarray(a, device=DEVICE1))
    saved = opt.state_dict()
    on_numpy = optim.Adam(_mlp().parameters(), lr=0.01)
    on_numpy.load_state_dict(saved)
    for i, entry in on_numpy.state_dict()["state"].items():
        for key, value in entry.items():
            if key != "step":
                assert type(value) is np.ndarray
                np.testing.assert_array_equal(value, _host(saved["state"][i][key]))
    back = optim.Adam(_on_device1(_mlp()).parameters(), lr=0.01)
    back.load_state_dict(on_numpy.state_dict())
    for i, entry in back.state_dict()["state"].items():
        for key, value in entry.items():
            if key != "step":
                assert value.device == DEVICE1
                np.testing.assert_array_equal(_host(value), _host(saved["state"][i][key]))
