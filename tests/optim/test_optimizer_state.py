"""Optimizer state dicts: resuming from one equals never stopping; a bad one changes nothing."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from normlab import nn, optim
from normlab.nn import Parameter
from normlab.optim import OptimizerStateError


def _params(seed: int = 0) -> list[Parameter]:
    rng = np.random.default_rng(seed)
    return [Parameter(rng.normal(size=(3, 2))), Parameter(rng.normal(size=(2,)))]


def _train(opt: optim.Optimizer, params: list[Parameter], steps: range) -> None:
    for step in steps:
        rng = np.random.default_rng(step)  # the gradient of step k is the same in every run
        for p in params:
            p.grad = 0.3 * p.data + rng.normal(size=p.shape)
        opt.step()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        ("AdaGrad", {"lr": 0.1}),
        ("RMSProp", {"lr": 0.01, "centered": True, "momentum": 0.5}),
        ("Adam", {"lr": 0.01, "amsgrad": True}),
        ("AdamW", {"lr": 0.01}),
    ],
)
def test_resume_from_state_dict_equals_uninterrupted(name: str, kwargs: dict) -> None:
    straight = _params()
    opt = getattr(optim, name)(straight, **kwargs)
    _train(opt, straight, range(10))

    first = _params()
    opt1 = getattr(optim, name)(first, **kwargs)
    _train(opt1, first, range(5))
    saved_params = [p.data.copy() for p in first]
    saved_state = copy.deepcopy(opt1.state_dict())

    resumed = [Parameter(v) for v in saved_params]
    opt2 = getattr(optim, name)(resumed, lr=123.0)  # hyper-parameters come from the state dict
    opt2.load_state_dict(saved_state)
    assert opt2.param_groups[0]["lr"] == kwargs["lr"]
    _train(opt2, resumed, range(5, 10))
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_is_a_copy_keyed_by_index() -> None:
    params = _params()
    opt = optim.Adam(params, lr=0.01)
    _train(opt, params, range(2))
    sd = opt.state_dict()
    assert set(sd["state"]) == {0, 1}
    assert sd["param_groups"][0]["params"] == [0, 1]
    assert sd["state"][0]["step"] == 2
    sd["state"][0]["exp_avg"][...] = 99.0
    assert not np.any(opt.state[params[0]]["exp_avg"] == 99.0)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda sd: sd["state"][0].__setitem__("exp_avg", np.zeros((5, 5))),
        lambda sd: sd["state"][1].__setitem__("bogus", np.zeros(2)),
        lambda sd: sd["state"].__setitem__(7, {"step": 1}),
        lambda sd: sd["param_groups"].append({"params": [], "lr": 0.1}),
        lambda sd: sd["param_groups"][0].__setitem__("params", [0]),
        lambda sd: sd["param_groups"][0].__setitem__("lr", -1.0),
        lambda sd: sd["param_groups"][0].pop("betas"),
        lambda sd: sd["state"][0].__setitem__("step", -3),
        lambda sd: sd.pop("state"),
    ],
    ids=[
        "wrong-shape",
        "unknown-entry",
        "unknown-index",
        "extra-group",
        "group-size",
        "negative-lr",
        "missing-hyper",
        "negative-step",
        "no-state",
    ],
)
def test_bad_state_dict_raises_and_changes_nothing(corrupt) -> None:
    params = _params()
    opt = optim.Adam(params, lr=0.01)
    _train(opt, params, range(3))
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(before)
    corrupt(bad)
    with pytest.raises(OptimizerStateError, match="nothing was changed"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for i in before["state"]:
        for k, v in before["state"][i].items():
            np.testing.assert_array_equal(after["state"][i][k], v)


def test_param_groups_no_decay_splits_norm_parameters_and_biases() -> None:
    model = nn.Sequential(
        nn.Linear(4, 6, rng=0),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 2, bias=False, rng=1),
        nn.LayerNorm(2),
    )
    decay, no_decay = optim.param_groups_no_decay(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    assert ids == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[4].weight),
        id(model[4].bias),
    }
    opt = optim.SGD(optim.param_groups_no_decay(model, 0.1), lr=1.0)
    # with a zero gradient only the decayed weights shrink
    before = {k: v.copy() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = np.zeros_like(p.data)
    opt.step()
    after = model.state_dict()
    np.testing.assert_allclose(after["0.weight"], before["0.weight"] * 0.9, rtol=1e-6)
    np.testing.assert_array_equal(after["1.weight"], before["1.weight"])
    np.testing.assert_array_equal(after["0.bias"], before["0.bias"])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: optim.SGD(p, lr=-0.1), "lr"),
        (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "Nesterov"),
        (lambda p: optim.Adam(p, betas=(0.9, 1.0)), "beta2"),
        (lambda p: optim.Adam([], lr=0.1), "empty"),
        (lambda p: optim.SGD([p[0], p[0]], lr=0.1), "more than once"),
        (lambda p: optim.SGD([np.zeros(2)], lr=0.1), "not a normlab Parameter"),
        (lambda p: optim.SGD(nn.Linear(2, 2), lr=0.1), r"model.parameters\(\)"),
    ],
)
def test_invalid_arguments(build, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        build(_params())
