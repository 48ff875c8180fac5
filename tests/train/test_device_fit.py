"""Optimizers, fit/evaluate/predict and checkpoints with a model on a second device.

array-api-strict's ``device1`` stands in for a GPU (it refuses to mix devices and to become a NumPy array);
every result is compared with the same run on NumPy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import normlab as nl
from helpers.devices import CPU, DEVICE1, xs
from helpers.devices import host_copy as _host
from helpers.devices import on_device1 as _on_device1
from normlab import kernels, nn, optim
from normlab.data import DataLoader
from normlab.train import evaluate as nl_evaluate
from normlab.train import fit as nl_fit
from normlab.train import predict as nl_predict


@pytest.fixture(autouse=True)
def reference_kernels():
    kernels.use("reference")
    yield
    kernels.use()


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


# ------------------------------------------------------------------------------------ fit / evaluate / predict
def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, rng=np.random.default_rng(4)),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 3, rng=np.random.default_rng(5)),
    ).to(np.float64)


def _data(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    return rng.normal(size=shape), rng.integers(0, 3, size=shape[0])


@pytest.mark.parametrize(
    ("make", "shape"), [(_mlp, (20, 4)), (_cnn, (12, 1, 4, 4))], ids=["mlp-bn", "cnn-bn"]
)
def test_fit_on_device1_follows_the_numpy_run_step_for_step(make, shape) -> None:
    x, y = _data(shape)
    reference, model = make(), _on_device1(make())
    runs = []
    for m in (reference, model):
        opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        runs.append(
            nl_fit(
                m,
                x,
                y,
                optimizer=opt,
                epochs=2,
                batch_size=8,
                seed=0,
                verbose=0,
                validation_data=(x[:6], y[:6]),
            )
        )
    history_ref, history = runs
    assert len(history.iterations) == 2 * -(-shape[0] // 8)
    for step_ref, step in zip(history_ref.iterations, history.iterations, strict=True):
        assert type(step["loss"]) is float and type(step["accuracy"]) is float
        assert step["loss"] == pytest.approx(step_ref["loss"], rel=1e-10, abs=1e-12)
        assert step["accuracy"] == step_ref["accuracy"]
    for epoch_ref, epoch in zip(history_ref.epochs, history.epochs, strict=True):
        assert epoch["val_loss"] == pytest.approx(epoch_ref["val_loss"], rel=1e-10, abs=1e-12)
    for (key, a_ref), (key2, a) in zip(
        reference.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert key == key2 and a.device == DEVICE1
        np.testing.assert_allclose(_host(a), a_ref, rtol=1e-10, atol=1e-12, err_msg=key)
    assert nl_evaluate(model, x, y, batch_size=7) == pytest.approx(
        nl_evaluate(reference, x, y, batch_size=7), rel=1e-10, abs=1e-12
    )
    out = nl_predict(model, x, batch_size=5)
    assert type(out) is np.ndarray
    np.testing.assert_allclose(out, nl_predict(reference, x, batch_size=5), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("accumulation", ["ghost", "exact"])
def test_fit_with_accumulation_on_device1_follows_the_numpy_run(accumulation: str) -> None:
    x, y = _data((16, 4))
    losses, states = [], []
    for m in (_mlp(), _on_device1(_mlp())):
        opt = optim.Adam(m.parameters(), lr=0.01)
        history = nl_fit(
            m,
            x,
            y,
            optimizer=opt,
            batch_size=4,
            accumulate=2,
            accumulation=accumulation,
            seed=1,
            verbose=0,
        )
        losses.append([s["loss"] for s in history.iterations])
        states.append({k: _host(v) for k, v in m.state_dict().items()})
    assert len(losses[0]) == 2
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-10)
    for key, value in states[1].items():
        np.testing.assert_allclose(value, states[0][key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_fit_names_both_devices_when_the_data_live_elsewhere() -> None:
    model = _on_device1(_mlp())
    x, y = _data((8, 4))
    batches = [(xs.asarray(x, device=CPU), xs.asarray(y, device=CPU))]
    before = {k: _host(v) for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"Linear\(.*the input is a array_api_strict array on "
        r".*CPU_DEVICE.*parameters are a array_api_strict array on .*device1",
    ):
        nl_fit(model, batches, optimizer=optim.SGD(model.parameters(), lr=0.1), verbose=0)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(_host(v), before[k])


# ------------------------------------------------------------------------------------ checkpoints
def _trained_on_device1() -> tuple[nn.Module, optim.Optimizer]:
    model = _on_device1(_cnn())
    opt = optim.Adam(model.parameters(), lr=0.01)
    x, y = _data((8, 1, 4, 4))
    nl_fit(model, x, y, optimizer=opt, epochs=1, batch_size=4, seed=0, verbose=0)
    return model, opt


def _same_state(a: nn.Module, b: nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        np.testing.assert_array_equal(_host(state_a[key]), _host(state_b[key]), err_msg=key)


def test_a_checkpoint_saved_from_device1_loads_into_a_numpy_model_and_back(tmp_path) -> None:
    model, opt = _trained_on_device1()
    path = nl.save_checkpoint(tmp_path / "run.nlck", model, opt, epoch=1)

    on_numpy = _cnn()
    opt_numpy = optim.Adam(on_numpy.parameters(), lr=0.01)
    assert nl.load_checkpoint(path, on_numpy, opt_numpy).epoch == 1
    assert all(type(a) is np.ndarray for a in on_numpy.state_dict().values())
    _same_state(on_numpy, model)
    saved = opt.state_dict()["state"]
    for i, entry in opt_numpy.state_dict()["state"].items():
        for key, value in entry.items():
            if key != "step":
                assert type(value) is np.ndarray
                np.testing.assert_array_equal(value, _host(saved[i][key]))

    # and from NumPy onto device1: the values land on the model's device
    path2 = nl.save_checkpoint(tmp_path / "back.nlck", on_numpy, opt_numpy, epoch=2)
    on_device = _on_device1(_cnn())
    opt_device = optim.Adam(on_device.parameters(), lr=0.01)
    nl.load_checkpoint(path2, on_device, opt_device)
    assert all(a.device == DEVICE1 for a in on_device.state_dict().values())
    _same_state(on_device, model)
    for entry in opt_device.state_dict()["state"].values():
        assert all(v.device == DEVICE1 for k, v in entry.items() if k != "step")


def test_a_model_saved_from_device1_rebuilds_on_numpy_and_loads_onto_device1(tmp_path) -> None:
    model, _ = _trained_on_device1()
    path = nl.save(model, tmp_path / "model.nlck")
    rebuilt = nl.load(path)
    _same_state(rebuilt, model)
    target = _on_device1(_cnn())
    nl.load(path, target)
    assert all(a.device == DEVICE1 for a in target.state_dict().values())
    _same_state(target, model)
    x = np.random.default_rng(9).normal(size=(3, 1, 4, 4))
    model.eval()
    np.testing.assert_array_equal(nl_predict(target, x), nl_predict(rebuilt, x))


def test_load_state_dict_of_device_arrays_keeps_the_numpy_model_numpy() -> None:
    model, _ = _trained_on_device1()
    state = model.state_dict()
    assert all(a.device == DEVICE1 for a in state.values())
    on_numpy = _cnn()
    on_numpy.load_state_dict(state)
    assert all(type(a) is np.ndarray for a in on_numpy.state_dict().values())
    _same_state(on_numpy, model)
    bad = dict(state)
    bad["1.running_var"] = bad["1.running_var"] - 10.0
    before = {k: _host(v) for k, v in model.state_dict().items()}
    with pytest.raises(nn.StateDictError, match=r"running_var must be finite and >= 0"):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(_host(v), before[k])


# ------------------------------------------------------------------------------------ DataLoader(device=)
def test_a_loader_hands_the_same_batches_over_on_the_device() -> None:
    x, y = _data((10, 4))
    host = list(DataLoader(x, y, batch_size=4, seed=3))
    moved = list(DataLoader(x, y, batch_size=4, seed=3, device=DEVICE1))
    assert len(moved) == len(host) == 3
    for (xb_ref, yb_ref), (xb, yb) in zip(host, moved, strict=True):
        assert xb.device == DEVICE1 and yb.device == DEVICE1
        np.testing.assert_array_equal(_host(xb), xb_ref)
        np.testing.assert_array_equal(_host(yb), yb_ref)
    assert all(type(b) is np.ndarray for b in next(iter(DataLoader(x, y, device="cpu"))))


def test_fit_on_a_device_loader_equals_fit_on_arrays() -> None:
    x, y = _data((12, 4))
    model, reference = _on_device1(_mlp()), _on_device1(_mlp())
    loader = DataLoader(x, y, batch_size=4, shuffle=False, device=DEVICE1)
    h = nl_fit(model, loader, optimizer=optim.SGD(model.parameters(), lr=0.1), verbose=0)
    h_ref = nl_fit(
        reference,
        x,
        y,
        optimizer=optim.SGD(reference.parameters(), lr=0.1),
        batch_size=4,
        shuffle=False,
        verbose=0,
    )
    assert [s["loss"] for s in h.iterations] == [s["loss"] for s in h_ref.iterations]
    np.testing.assert_array_equal(nl_predict(model, loader), nl_predict(reference, x, batch_size=4))


def test_a_loader_refuses_a_device_it_cannot_reach(monkeypatch) -> None:
    x = np.zeros((4, 2))
    with pytest.raises(
        TypeError, match=r"DataLoader: device must be 'cpu', 'cuda', 'cuda:N' or a device"
    ):
        DataLoader(x, device=3.5)
    with pytest.raises(ValueError, match=r"DataLoader: device='cuda:x'.*expected 'cpu', 'cuda'"):
        DataLoader(x, device="cuda:x")
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(RuntimeError, match=r"DataLoader: device='cuda'.*CuPy.*normlab\[gpu\]"):
        DataLoader(x, device="cuda")
