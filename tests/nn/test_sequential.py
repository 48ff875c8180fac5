"""Sequential: forward and backward through every child, PyTorch's state-dict keys, indexing, and the
architecture config every layer round-trips through."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from normlab import nn


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False, rng=0),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.1, seed=1),
        nn.Linear(4 * 3 * 3, 8, rng=2),
        nn.LayerNorm(8),
        nn.GELU("tanh"),
        nn.Linear(8, 3, rng=3),
    )


def test_state_dict_keys_are_pytorchs() -> None:
    ours = _model()
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(36, 8),
        torch.nn.LayerNorm(8),
        torch.nn.GELU("tanh"),
        torch.nn.Linear(8, 3),
    )
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key].shape == tuple(value.shape), key


def test_backward_goes_through_children_in_reverse() -> None:
    calls: list[str] = []

    class Recorder(nn.ReLU):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def backward(self, grad_output: np.ndarray) -> np.ndarray:
            calls.append(self.name)
            return super().backward(grad_output)

    model = nn.Sequential(Recorder("a"), Recorder("b"), Recorder("c"))
    x = np.array([[1.0, -1.0]])
    dx = model.backward(np.ones_like(model(x)))
    assert calls == ["c", "b", "a"]
    np.testing.assert_array_equal(dx, [[1.0, 0.0]])


def test_indexing_len_iteration_append() -> None:
    model = _model()
    assert len(model) == 10
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[-1], nn.Linear)
    head = model[:3]
    assert isinstance(head, nn.Sequential) and len(head) == 3 and head[1] is model[1]
    assert [type(m).__name__ for m in model][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    model.append(nn.Softmax())
    assert len(model) == 11 and "10" in dict(model.named_children())
    with pytest.raises(IndexError):
        model[11]
    with pytest.raises(TypeError, match="item 1 is a int, not a Module"):
        nn.Sequential(nn.ReLU(), 3)


def test_architecture_config_round_trips_through_json() -> None:
    model = _model().double()
    spec = json.loads(json.dumps(nn.module_spec(model)))
    rebuilt = nn.build_module(spec)
    assert repr(rebuilt) == repr(model)
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    assert all(v.dtype == model.state_dict()[k].dtype for k, v in rebuilt.state_dict().items())
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    x = np.random.default_rng(0).normal(size=(2, 1, 6, 6))
    np.testing.assert_array_equal(rebuilt(x), model(x))


@pytest.mark.parametrize(
    "layer",
    [
        nn.BatchNorm1d(3, eps=1e-3, momentum=None, running_var="biased"),
        nn.BatchNorm3d(2, affine=False, track_running_stats=False),
        nn.InstanceNorm2d(3, affine=True),
        nn.LayerNorm((2, 3), bias=False),
        nn.GroupNorm(2, 4, eps=1e-4),
        nn.RMSNorm(5, eps=1e-6, elementwise_affine=False),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.AvgPool2d(2, count_include_pad=False),
        nn.Softmax(dim=1),
        nn.Sigmoid(),
        nn.Tanh(),
        nn.Flatten(2),
        nn.Conv2d(2, 3, (3, 1), stride=(2, 1), dilation=(1, 2), bias=False),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_layer_rebuilds_from_its_config(layer: nn.Module) -> None:
    rebuilt = nn.build_module(json.loads(json.dumps(nn.module_spec(layer))))
    assert type(rebuilt) is type(layer)
    assert rebuilt.get_config() == layer.get_config()
    assert repr(rebuilt) == repr(layer)


def test_unregistered_or_malformed_specs() -> None:
    class Custom(nn.Module):
        pass

    with pytest.raises(TypeError, match="Custom is not a registered layer"):
        nn.module_spec(nn.Sequential(Custom()))
    with pytest.raises(ValueError, match="unknown layer class 'Evil'"):
        nn.build_module({"class": "Evil", "config": {}})
    with pytest.raises(ValueError, match="cannot build Linear"):
        nn.build_module({"class": "Linear", "config": {"in_features": -1, "out_features": 2}})
