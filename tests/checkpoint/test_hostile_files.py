"""Files crafted to get past the checksum (issue 10, items 1 and 2): every one raises CheckpointError, never
another exception, and a failed load_checkpoint leaves the model and the optimizer exactly as they were."""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from checkpoint.rewrite import raw_file, read_parts, rewrite, write_parts
from helpers.training import assert_same_optimizer_state, assert_same_state, blobs, bn_mlp
from normlab import nn, optim


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A training checkpoint (model, Adam, extra with an array, a loader state) and its bytes."""
    from normlab.data import DataLoader

    x, y = blobs(64)
    model = bn_mlp(seed=0)
    opt = optim.Adam(model.parameters(), lr=0.01)
    nl.fit(model, x, y, optimizer=opt, epochs=1, batch_size=16, verbose=0, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.safetensors"
    nl.save_checkpoint(
        path,
        model,
        opt,
        epoch=3,
        loader=DataLoader(x, y, 8),
        extra={"best": np.arange(3.0), "note": "kept"},
    )
    return path.read_bytes()


def _target():
    """A trained model and optimizer whose state differs from the file's, and a deep copy of both."""
    x, y = blobs(64, seed=1)
    model = bn_mlp(seed=1)
    opt = optim.Adam(model.parameters(), lr=0.5)
    nl.fit(model, x, y, optimizer=opt, epochs=1, batch_size=32, verbose=0, seed=1)
    twin = bn_mlp(seed=7)
    twin.load_state_dict(model.state_dict())
    twin_opt = optim.Adam(twin.parameters())
    twin_opt.load_state_dict(opt.state_dict())
    return model, opt, (twin, twin_opt, model[3].generator.bit_generator.state)


def _assert_unchanged(model, opt, snapshot) -> None:
    twin, twin_opt, generator_state = snapshot
    assert_same_state(model, twin)
    assert_same_optimizer_state(opt, twin_opt)
    assert model[3].generator.bit_generator.state == generator_state


def _set(key, value):
    def edit(tensors, meta):
        meta[key] = value

    return edit


def _drop_tensor(name):
    def edit(tensors, meta):
        del tensors[name]

    return edit


def _extra_items(tensors, meta):
    meta["extra"] = {"__items__": [[[1], 2]]}  # an unhashable key


SEMANTIC = {
    "epoch-str": (_set("epoch", "abc"), "epoch must be an int >= 0, got 'abc'"),
    "epoch-list": (_set("epoch", [1]), r"epoch must be an int >= 0, got \[1\]"),
    "epoch-negative": (_set("epoch", -3), "epoch must be an int >= 0, got -3"),
    "epoch-float": (_set("epoch", 1.5), "epoch must be an int >= 0, got 1.5"),
    "epoch-bool": (_set("epoch", True), "epoch must be an int >= 0, got True"),
    "epoch-missing": (_set("epoch", None), "epoch must be an int >= 0, got None"),
    "extra-missing-tensor": (_drop_tensor("extra/best"), "'extra/best' refers to tensor"),
    "loader-missing-tensor": (
        _set("loader", {"__tensor__": "loader/gone"}),
        "'loader' refers to tensor 'loader/gone'",
    ),
    "extra-bad-items": (_extra_items, "a mapping key must be a scalar"),
    "kind": (_set("kind", "weights"), "unknown checkpoint kind 'weights'"),
    "rng-not-a-dict": (_set("rng", []), "malformed checkpoint metadata"),
}


@pytest.mark.parametrize("name", list(SEMANTIC))
def test_checksum_consistent_bad_metadata_raises_and_changes_nothing(saved, tmp_path, name) -> None:
    edit, message = SEMANTIC[name]
    bad = rewrite(saved, edit, tmp_path / "bad.safetensors")
    model, opt, snapshot = _target()
    with pytest.raises(nl.CheckpointError, match=message):
        nl.load_checkpoint(bad, model, opt)
    _assert_unchanged(model, opt, snapshot)


def test_the_unmutated_rewrite_loads(saved, tmp_path) -> None:
    """The rewriting helper itself produces loadable files (so the refusals above are the edits' doing)."""
    path = rewrite(saved, lambda tensors, meta: None, tmp_path / "same.safetensors")
    model, opt, _ = _target()
    restored = nl.load_checkpoint(path, model, opt)
    assert restored.epoch == 3 and restored.extra["note"] == "kept"
    np.testing.assert_array_equal(restored.extra["best"], np.arange(3.0))
    tensors, _ = read_parts(saved)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, tensors[f"model/{key}"])


def test_a_model_file_loads_with_epoch_zero(tmp_path) -> None:
    path = nl.save(bn_mlp(seed=4), tmp_path / "m.safetensors")
    model = bn_mlp(seed=5)
    assert nl.load_checkpoint(path, model).epoch == 0
    assert_same_state(model, nl.load(path))


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_header_is_a_checkpoint_error(tmp_path, depth) -> None:
    path = tmp_path / "nested.safetensors"
    path.write_bytes(raw_file(b'{"__metadata__": ' + _nested(depth) + b"}"))
    with pytest.raises(nl.CheckpointError, match="nested more than 64 levels"):
        nl.load(path)


def test_deeply_nested_metadata_is_a_checkpoint_error(saved, tmp_path) -> None:
    tensors, _ = read_parts(saved)
    text = (
        '{"format": "normlab.checkpoint", "format_version": 1, "extra": '
        + _nested(100_000).decode()
        + "}"
    )
    from safetensors.numpy import save

    path = tmp_path / "nested-meta.safetensors"
    path.write_bytes(save(dict(tensors), metadata={"normlab": text}))
    model, opt, snapshot = _target()
    with pytest.raises(nl.CheckpointError, match="nested more than 64 levels"):
        nl.load_checkpoint(path, model, opt)
    _assert_unchanged(model, opt, snapshot)


def test_an_integer_too_long_to_parse_is_a_checkpoint_error(saved, tmp_path) -> None:
    tensors, _ = read_parts(saved)
    text = '{"format": "normlab.checkpoint", "epoch": ' + "9" * 5000 + "}"
    from safetensors.numpy import save

    path = tmp_path / "long-int.safetensors"
    path.write_bytes(save(dict(tensors), metadata={"normlab": text}))
    with pytest.raises(nl.CheckpointError, match="corrupt normlab metadata"):
        nl.load(path)


def test_save_refuses_what_load_would_refuse(tmp_path) -> None:
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ValueError, match="nested more than 64 levels"):
        nl.save_checkpoint(tmp_path / "deep.safetensors", bn_mlp(), extra=deep)
    assert not list(tmp_path.iterdir())


def _grow_first_linear(size: int):
    def edit(tensors, meta):
        meta["model"]["config"]["config"]["layers"][0]["config"]["in_features"] = size

    return edit


@pytest.mark.parametrize("size", [10**13, 10**9, 2**62])
def test_a_config_asking_for_huge_layers_is_refused_before_building(tmp_path, size) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    data = nl.save(model, tmp_path / "small.safetensors").read_bytes()
    bad = rewrite(data, _grow_first_linear(size), tmp_path / "huge.safetensors")
    with pytest.raises(nl.CheckpointError, match=r"asks for about .* array elements"):
        nl.load(bad)


def test_a_config_that_does_not_fit_its_tensors_is_a_checkpoint_error(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    data = nl.save(model, tmp_path / "small.safetensors").read_bytes()
    bad = rewrite(data, _grow_first_linear(5), tmp_path / "other.safetensors")  # fits the budget
    with pytest.raises(nl.CheckpointError, match=r"'0.weight' has shape \(4, 3\), the model's"):
        nl.load(bad)


def test_real_architectures_stay_within_the_rebuild_budget(tmp_path) -> None:
    """The budget refuses no model normlab builds: a strided convnet, an MLP, a bias-free Linear."""
    from helpers.training import small_cnn

    models = [
        small_cnn(),
        bn_mlp(),
        nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU()),
        nn.Sequential(nn.Linear(784, 512), nn.LayerNorm(512), nn.Linear(512, 10, bias=False)),
    ]
    for i, model in enumerate(models):
        path = nl.save(model, tmp_path / f"{i}.safetensors")
        assert_same_state(nl.load(path), model)


def test_running_var_edited_to_nan_is_refused_by_load_checkpoint(saved, tmp_path) -> None:
    def poison(tensors, meta):
        var = tensors["model/1.running_var"].copy()
        var[[2, 5]] = [np.nan, -1.0]
        tensors["model/1.running_var"] = var

    bad = rewrite(saved, poison, tmp_path / "nan-var.safetensors")
    model, opt, snapshot = _target()
    with pytest.raises(
        nl.CheckpointError,
        match=r"'1.running_var': BatchNorm1d\(16\): running_var must be finite and >= 0, "
        r"got nan at channel 2, -1.0 at channel 5",
    ):
        nl.load_checkpoint(bad, model, opt)
    _assert_unchanged(model, opt, snapshot)
    with pytest.raises(nl.CheckpointError, match="running_var must be finite"):
        nl.load(bad)


def test_writing_parts_without_resealing_is_caught_by_the_checksum(saved, tmp_path) -> None:
    tensors, meta = read_parts(saved)
    meta["epoch"] = 4
    path = tmp_path / "unsealed.safetensors"
    path.write_bytes(write_parts(dict(tensors), meta, reseal=False))
    with pytest.raises(nl.CheckpointError, match="SHA-256"):
        nl.load(path)


@pytest.mark.parametrize("value", [1.0715086071862673e301, float("inf"), float("nan"), -(10**40)])
def test_huge_or_odd_numbers_in_a_config_are_checkpoint_errors(tmp_path, value) -> None:
    """Found by the fuzzer: a float near the top of the range overflowed the size estimate itself."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    data = nl.save(model, tmp_path / "small.safetensors").read_bytes()

    def edit(tensors, meta):
        meta["model"]["config"]["config"]["extra"] = 16777216
        meta["model"]["config"]["config"]["0"] = value

    bad = rewrite(data, edit, tmp_path / "odd.safetensors")
    with pytest.raises(nl.CheckpointError):
        nl.load(bad)
