"""Property-based fuzzing of checkpoint loading (issue 10).

Two generators mutate one valid small training checkpoint:

* **bytes**: bit flips, truncations, spliced random bytes, a rewritten header-size field, and edits of the
  header's JSON text (a slice replaced by JSON punctuation or nesting);
* **semantics**: the metadata is decoded, one value anywhere in it (found by walking the JSON tree) is
  replaced by a random JSON value, deleted, or given a sibling, or a tensor is dropped, reshaped, recast or
  filled with NaN/negative values; then the SHA-256 is recomputed as ``save`` does, so the mutation gets past
  the checksum and reaches the decoder.

Property: ``load_checkpoint`` either succeeds, and then the model holds exactly the file's model tensors and
the epoch is a non-negative int, or raises :class:`CheckpointError`, and then the model and the optimizer are
byte-identical to before.  ``load`` (rebuilding the architecture) succeeds with the file's tensors or raises
CheckpointError.  No other exception, ever.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normlab as nl
from checkpoint.rewrite import read_parts, write_parts
from normlab import nn, optim

# 120 examples per generator in CI; NORMLAB_FUZZ_EXAMPLES=5000 for a longer hunt
FUZZ = settings(
    max_examples=int(os.environ.get("NORMLAB_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _model(seed: int) -> nn.Sequential:
    gen = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Linear(3, 4, bias=False, rng=gen),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.Dropout(0.2, seed=gen),
        nn.Linear(4, 2, rng=gen),
    )


def _stepped(model: nn.Module, seed: int) -> optim.Adam:
    """An Adam with state (two steps on fixed pseudo-gradients)."""
    opt = optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        for p in model.parameters():
            p.grad = rng.normal(size=p.shape).astype(p.dtype)
        opt.step()
    return opt


class _World:
    """The valid file and a target whose exact state is restored before every example."""

    def __init__(self) -> None:
        source = _model(0)
        source_opt = _stepped(source, 0)
        self.dir = Path(tempfile.mkdtemp(prefix="normlab-fuzz-"))
        path = nl.save_checkpoint(
            self.dir / "valid.safetensors",
            source,
            source_opt,
            epoch=2,
            extra={"best": np.arange(3.0), "tag": ("a", 1)},
        )
        self.valid = path.read_bytes()
        self.target = _model(1)
        self.target_opt = _stepped(self.target, 1)
        self.model_state = self.target.state_dict()
        self.opt_state = copy.deepcopy(self.target_opt.state_dict())
        self.generator = self.target[3].generator.bit_generator.state

    def reset(self) -> None:
        self.target.load_state_dict(self.model_state)
        self.target_opt.load_state_dict(copy.deepcopy(self.opt_state))
        self.target[3].generator.bit_generator.state = self.generator

    def assert_unchanged(self) -> None:
        state = self.target.state_dict()
        assert list(state) == list(self.model_state)
        for key, value in state.items():
            assert value.dtype == self.model_state[key].dtype
            assert value.tobytes() == self.model_state[key].tobytes(), key
        now = self.target_opt.state_dict()
        assert now["param_groups"] == self.opt_state["param_groups"]
        assert set(now["state"]) == set(self.opt_state["state"])
        for i, entry in now["state"].items():
            for k, v in entry.items():
                assert (
                    np.asarray(v).tobytes() == np.asarray(self.opt_state["state"][i][k]).tobytes()
                )
        assert self.target[3].generator.bit_generator.state == self.generator

    def check(self, data: bytes) -> None:
        """The property, for one mutated file."""
        path = self.dir / "mutated.safetensors"
        path.write_bytes(data)
        self.reset()
        try:
            result = nl.load_checkpoint(path, self.target, self.target_opt)
        except nl.CheckpointError:
            self.assert_unchanged()
        else:
            tensors, _ = read_parts(data)
            assert isinstance(result.epoch, int) and not isinstance(result.epoch, bool)
            assert result.epoch >= 0
            for key, value in self.target.state_dict().items():
                expected = _saved(tensors, key).astype(value.dtype)
                np.testing.assert_array_equal(value, expected, err_msg=key)
        try:
            rebuilt = nl.load(path)
        except nl.CheckpointError:
            return
        tensors, _ = read_parts(data)
        for key, value in rebuilt.state_dict().items():
            np.testing.assert_array_equal(value, _saved(tensors, key), err_msg=key)


def _saved(tensors: dict[str, np.ndarray], key: str) -> np.ndarray:
    """The file's value for a state key; a missing batch count loads as 0 (PyTorch < 0.4.1 states)."""
    if f"model/{key}" not in tensors and key.endswith("num_batches_tracked"):
        return np.array(0)
    return np.asarray(tensors[f"model/{key}"])


@pytest.fixture(scope="module")
def world() -> _World:
    return _World()


# --------------------------------------------------------------------------------------- bytes
def _header_span(data: bytes) -> tuple[int, int]:
    return 8, 8 + int.from_bytes(data[:8], "little")


@st.composite
def byte_mutations(draw: Any, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "size", "json"]))
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "splice":
        i = draw(st.integers(0, len(data)))
        j = draw(st.integers(i, min(len(data), i + 64)))
        return data[:i] + draw(st.binary(max_size=64)) + data[j:]
    if kind == "size":
        size = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, len(data) + 16)))
        return size.to_bytes(8, "little") + data[8:]
    start, end = _header_span(data)
    i = draw(st.integers(start, end))
    j = draw(st.integers(i, min(end, i + 32)))
    token = draw(
        st.one_of(
            st.sampled_from(['"', "[", "]", "{", "}", ",", ":", "null", "1e999", "-1", '\\"']),
            st.integers(1, 200).map(lambda n: "[" * n),
        )
    ).encode()
    mutated = data[start:i] + token + data[j:end]
    return len(mutated).to_bytes(8, "little") + mutated + data[end:]


@FUZZ
@given(st.data())
def test_byte_mutations_load_exactly_or_raise_checkpoint_error(world: _World, data: Any) -> None:
    world.check(data.draw(byte_mutations(world.valid)))


# --------------------------------------------------------------------------------------- semantics
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([0, 1, 2, 3, 4, 10**13, -3]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=6),
        st.sampled_from(["Linear", "BatchNorm1d", "Sequential", "model/0.weight", "abc"]),
        st.just({"__tensor__": "model/0.weight"}),
        st.just({"__tensor__": "nowhere"}),
        st.just({"__tuple__": 3}),
        st.just({"__items__": [[[1], 2]]}),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
).map(copy.deepcopy)  # a fresh object per draw: mutations must not edit the st.just examples


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON tree, as key/index paths."""
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def _mutate_meta(draw: Any, meta: dict) -> None:
    path = draw(st.sampled_from([p for p in _paths(meta) if p and p[0] != "sha256"]))
    parent = meta
    for step in path[:-1]:
        parent = parent[step]
    action = draw(st.sampled_from(["replace", "replace", "delete", "sibling"]))
    if action == "replace":
        parent[path[-1]] = draw(JSON_VALUES)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=6))] = draw(JSON_VALUES)
    else:
        parent.append(draw(JSON_VALUES))


def _mutate_tensors(draw: Any, tensors: dict[str, np.ndarray]) -> None:
    key = draw(st.sampled_from(sorted(tensors)))
    value = tensors[key]
    action = draw(st.sampled_from(["drop", "reshape", "recast", "poison", "rename"]))
    if action == "drop":
        del tensors[key]
    elif action == "reshape":
        tensors[key] = value.reshape(-1)[: draw(st.integers(0, value.size))].copy()
    elif action == "recast":
        dtype = draw(st.sampled_from([np.float16, np.float64, np.int64, np.uint8, np.bool_]))
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf to int: whatever it gives
            tensors[key] = value.astype(dtype)
    elif action == "poison" and value.size and value.dtype.kind == "f":
        poisoned = value.copy()
        bad = draw(st.sampled_from([np.nan, np.inf, -1.0, 1e30]))
        with np.errstate(over="ignore"):  # 1e30 is inf in float16
            poisoned.reshape(-1)[draw(st.integers(0, value.size - 1))] = bad
        tensors[key] = poisoned
    else:
        tensors[key + "x"] = tensors.pop(key)


@st.composite
def semantic_mutations(draw: Any, data: bytes) -> bytes:
    tensors, meta = read_parts(data)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            _mutate_meta(draw, meta)
        else:
            _mutate_tensors(draw, tensors)
    return write_parts(tensors, meta)  # resealed: the checksum matches


@FUZZ
@given(st.data())
def test_checksum_consistent_mutations_load_exactly_or_raise_checkpoint_error(
    world: _World, data: Any
) -> None:
    world.check(data.draw(semantic_mutations(world.valid)))
