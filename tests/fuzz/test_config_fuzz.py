"""Property-based fuzzing of training configs (issue 10, item 9).

Generators, applied to two valid configs (the MLP form and the explicit-layers form):

* **unknown keys**: a typo of a valid key (a character dropped, doubled, swapped, changed or its case
  flipped) or a random identifier, added to a random table (``model``, a ``model.layers[i]`` table,
  ``optimizer``, ``training``, ``data``);
* **wrong values**: an existing key of a random table set to a random JSON/TOML value (null, bools, small
  and huge ints, floats with NaN/inf, strings, lists, tables).

Properties: an unknown key always raises :class:`ConfigError` naming ``table.key``; a wrong value either
builds (``parse_config``, ``build_model``, ``build_optimizer``) or raises ConfigError naming the key (or the
layer, for a layer's constructor argument), never a raw TypeError/KeyError/AttributeError.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normlab.config import (
    DATA_KEYS,
    MLP_KEYS,
    TRAINING_KEYS,
    ConfigError,
    build_model,
    build_optimizer,
    parse_config,
)

# 150 examples per generator in CI; NORMLAB_FUZZ_EXAMPLES=5000 for a longer hunt
FUZZ = settings(
    max_examples=int(os.environ.get("NORMLAB_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

MLP = {
    "model": {"hidden": [8], "normalizer": "batchnorm", "activation": "relu", "dropout": 0.1},
    "optimizer": {"name": "SGD", "lr": 0.05, "momentum": 0.9},
    "training": {"epochs": 2, "batch_size": 16, "seed": 0, "checkpoint_every": 1},
    "data": {"dataset": "iris", "split": "sample"},
}
LAYERS = {
    "model": {
        "layers": [
            {"class": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3},
            {"class": "BatchNorm2d", "num_features": 2},
            {"class": "ReLU"},
            {"class": "Flatten"},
            {"class": "Linear", "in_features": 1352, "out_features": 10, "bias": True},
        ]
    },
    "optimizer": {"name": "Adam", "lr": 0.001, "betas": [0.9, 0.99]},
    "training": {"epochs": 1},
    "data": {"dataset": "mnist"},
}
BASES = st.sampled_from([MLP, LAYERS])


def _tables(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name as errors spell it, table) for every table a key can be added to."""
    found = [(name, config[name]) for name in ("optimizer", "training", "data") if name in config]
    if "layers" in config["model"]:
        found += [(f"model.layers[{i}]", t) for i, t in enumerate(config["model"]["layers"])]
    else:
        found.append(("model", config["model"]))
    return found


def _valid_keys(table: str, config: dict[str, Any]) -> set[str]:
    if table == "training":
        return set(TRAINING_KEYS)
    if table == "data":
        return set(DATA_KEYS)
    if table == "model":
        return {*MLP_KEYS, "layers"}
    return set()  # optimizer and layers: rejected keys are filtered by the constructor check below


@st.composite
def typos(draw: Any, word: str) -> str:
    i = draw(st.integers(0, len(word) - 1))
    kind = draw(st.sampled_from(["drop", "double", "swap", "change", "case", "append"]))
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "change":
        return word[:i] + draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_")) + word[i + 1 :]
    if kind == "case":
        return word.swapcase()
    return word + draw(st.sampled_from(["s", "_", "2", "e"]))


IDENTIFIERS = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)

# every key any table accepts: a "typo" that lands on one of these is not unknown
_ACCEPTED_SOMEWHERE = {
    *MLP_KEYS, *TRAINING_KEYS, *DATA_KEYS, "layers", "class", "name", "lr", "momentum",
    "betas", "eps", "weight_decay", "amsgrad", "dampening", "nesterov", "in_features",
    "out_features", "bias", "dtype", "in_channels", "out_channels", "kernel_size", "stride",
    "padding", "dilation", "num_features", "affine", "track_running_stats", "running_var",
    "start_dim", "end_dim",
}  # fmt: skip


@FUZZ
@given(st.data())
def test_unknown_keys_are_config_errors_naming_the_key(data: Any) -> None:
    config = copy.deepcopy(data.draw(BASES))
    table_name, table = data.draw(st.sampled_from(_tables(config)))
    existing = sorted(table) or ["x"]
    key = data.draw(
        st.one_of(st.sampled_from(existing).flatmap(typos), IDENTIFIERS).filter(
            lambda k: k and k not in _ACCEPTED_SOMEWHERE and k not in table
        )
    )
    table[key] = data.draw(st.sampled_from([1, "x", 0.5, True, [1]]))
    try:
        parse_config(config, "fuzz.toml")
    except ConfigError as e:
        assert f"{table_name}.{key}" in str(e), str(e)
    else:
        raise AssertionError(f"unknown key {table_name}.{key} was accepted")


VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 40),
        st.sampled_from([0, -1, 10**30, 2**63]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(["Adam", "relu", "batchnorm", "mnist", "float64", "sample"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=2)
    ),
    max_leaves=5,
)


def _build(config: dict[str, Any]) -> None:
    cfg = parse_config(config, "fuzz.toml")
    model = build_model(cfg, 4 if cfg.data.get("dataset") == "iris" else 784, 10)
    build_optimizer(cfg, model)


@FUZZ
@given(st.data())
def test_wrong_values_build_or_raise_config_errors_naming_the_key(data: Any) -> None:
    config = copy.deepcopy(data.draw(BASES))
    table_name, table = data.draw(st.sampled_from(_tables(config)))
    keys = sorted(k for k in table if k != "layers")
    if not keys:
        return
    key = data.draw(st.sampled_from(keys))
    table[key] = data.draw(VALUES)
    try:
        _build(config)
    except ConfigError as e:
        named = table_name if table_name.startswith("model.layers") else key
        assert named in str(e), str(e)
