"""load_state_dict refuses running statistics no normalization can use (issue 10, item 6): a NaN, infinite or
negative running variance (eval would output the bias whatever the input) or a non-finite running mean,
naming the layer, the key and the channels, with the model left exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.training import assert_same_state
from normlab import nn


def _model(norm: nn.Module) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 4, rng=np.random.default_rng(0)), norm)
    state = model.state_dict()
    state["1.running_mean"] = np.array([0.5, -1.0, 2.0, 0.0], dtype=state["1.running_mean"].dtype)
    state["1.running_var"] = np.array([1.5, 0.25, 3.0, 1.0], dtype=state["1.running_var"].dtype)
    model.load_state_dict(state)
    return model


LAYERS = {
    "BatchNorm1d": lambda: nn.BatchNorm1d(4),
    "BatchNorm1d-float64": lambda: nn.BatchNorm1d(4, dtype=np.float64),
    "InstanceNorm1d": lambda: nn.InstanceNorm1d(4, track_running_stats=True),
}
BAD = {
    "nan-var": ("running_var", [1.0, np.nan, 1.0, 1.0], r"running_var must be finite and >= 0, got nan at channel 1$"),
    "negative-var": ("running_var", [1.0, 1.0, -0.5, -2.0], r"running_var must be finite and >= 0, got -0.5 at channel 2, -2.0 at channel 3$"),
    "inf-var": ("running_var", [np.inf, 1.0, 1.0, 1.0], r"running_var must be finite and >= 0, got inf at channel 0$"),
    "nan-mean": ("running_mean", [0.0, 0.0, 0.0, np.nan], r"running_mean must be finite, got nan at channel 3$"),
}  # fmt: skip


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("bad", list(BAD))
def test_impossible_running_statistics_are_refused(layer: str, bad: str) -> None:
    model = _model(LAYERS[layer]())
    before = nn.Sequential(nn.Linear(3, 4), LAYERS[layer]())
    before.load_state_dict(model.state_dict())
    key, values, message = BAD[bad]
    state = model.state_dict()
    state[f"1.{key}"] = np.array(values)
    label = layer.split("-")[0]
    with pytest.raises(nn.StateDictError, match=rf"'1\.{key}': {label}\(4\): {message}"):
        model.load_state_dict(state)
    assert_same_state(model, before)


def test_a_value_that_overflows_the_layers_dtype_is_refused() -> None:
    """1e300 is a finite float64 but becomes inf in a float32 layer: checked after the cast."""
    model = _model(nn.BatchNorm1d(4))
    state = model.state_dict()
    state["1.running_var"] = np.array([1.0, 1e300, 1.0, 1.0])
    with np.errstate(over="ignore"), pytest.raises(nn.StateDictError, match="got inf at channel 1"):
        model.load_state_dict(state)


def test_many_bad_channels_are_summarised() -> None:
    model = nn.BatchNorm1d(20)
    state = model.state_dict()
    state["running_var"] = -np.ones(20)
    with pytest.raises(nn.StateDictError, match=r"-1.0 at channel 7 and 12 more$"):
        model.load_state_dict(state)


def test_valid_edge_values_load_and_eval_uses_them() -> None:
    """A zero variance is legitimate (eps keeps the division finite); eval then normalizes with it."""
    model = nn.BatchNorm1d(2, affine=False, dtype=np.float64)
    state = model.state_dict()
    state["running_mean"] = np.array([1.0, -1.0])
    state["running_var"] = np.array([0.0, 4.0])
    model.load_state_dict(state)
    model.eval()
    x = np.array([[2.0, 3.0]])
    np.testing.assert_allclose(model(x), [[1.0 / np.sqrt(1e-5), 4.0 / np.sqrt(4.0 + 1e-5)]])


def test_layers_without_running_statistics_are_unaffected() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False), nn.LayerNorm(3))
    state = model.state_dict()
    state["1.weight"] = np.array([np.nan, -1.0, 2.0], dtype=np.float32)  # a weight may be anything
    model.load_state_dict(state)
    assert np.isnan(model[1].weight.data[0])
