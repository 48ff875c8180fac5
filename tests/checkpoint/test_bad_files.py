"""Corrupt, truncated, foreign, pickle and mismatched files raise CheckpointError and change nothing; a save
interrupted midway leaves the previous checkpoint intact."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import normlab as nl
import normlab.checkpoint
from helpers.training import assert_same_optimizer_state, assert_same_state, blobs, bn_mlp
from normlab import nn, optim


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a trained model and optimizer, plus fresh objects to load into, and their snapshot."""
    x, y = blobs(64)
    model = bn_mlp(seed=0)
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.StepLR(opt, 2)
    nl.fit(
        model,
        x,
        y,
        optimizer=opt,
        epochs=2,
        batch_size=16,
        verbose=0,
        seed=0,
        callbacks=[nl.LRSchedulerCallback(sched)],
    )
    path = nl.save_checkpoint(tmp_path / "ckpt.safetensors", model, opt, epoch=2, scheduler=sched)

    target = bn_mlp(seed=1)
    target_opt = optim.Adam(target.parameters(), lr=0.5)
    nl.fit(
        target, x, y, optimizer=target_opt, epochs=1, batch_size=32, verbose=0, seed=1
    )  # non-trivial state
    return {
        "path": path,
        "bytes": path.read_bytes(),
        "target": target,
        "target_opt": target_opt,
        "reference": bn_mlp(seed=1),
        "reference_opt": None,
    }


def _snapshot(model, opt):
    clone = bn_mlp(seed=42)
    clone.load_state_dict(model.state_dict())
    clone_opt = optim.Adam(clone.parameters())
    clone_opt.load_state_dict(opt.state_dict())
    return clone, clone_opt, model[3].generator.bit_generator.state


def _assert_unchanged(model, opt, snapshot) -> None:
    clone, clone_opt, gen_state = snapshot
    assert_same_state(model, clone)
    assert_same_optimizer_state(opt, clone_opt)
    assert model[3].generator.bit_generator.state == gen_state


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


CORRUPTIONS = {
    "truncated-half": (lambda b: b[: len(b) // 2], "truncated"),
    "truncated-tiny": (lambda b: b[:5], "truncated"),
    "empty": (lambda b: b"", "truncated"),
    "flipped-tensor-byte": (lambda b: _flip(b, len(b) - 3), "do not match their SHA-256"),
    "edited-epoch": (
        lambda b: b.replace(b'\\"epoch\\": 2', b'\\"epoch\\": 9'),
        "do not match their SHA-256",
    ),
    "garbage-header": (lambda b: b[:8] + b"\xff" * (len(b) - 8), "not JSON"),
    "random-bytes": (lambda b: np.random.default_rng(0).bytes(2000), "not a safetensors file"),
    "pickle": (lambda b: pickle.dumps({"0.weight": np.zeros(3)}), "pickle"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_files_raise_and_change_nothing(saved, tmp_path, name: str) -> None:
    corrupt, message = CORRUPTIONS[name]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(corrupt(saved["bytes"]))
    model, opt = saved["target"], saved["target_opt"]
    snapshot = _snapshot(model, opt)
    with pytest.raises(nl.CheckpointError, match=message):
        nl.load_checkpoint(bad, model, opt)
    with pytest.raises(nl.CheckpointError, match=message):
        nl.load(bad)
    _assert_unchanged(model, opt, snapshot)


def test_foreign_files(tmp_path) -> None:
    pt = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), pt)
    with pytest.raises(nl.CheckpointError, match=r"zip archive .*torch\.save"):
        nl.load(pt)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(nl.CheckpointError, match=r"NumPy \.npy"):
        nl.load(npy)
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"weight": np.zeros(3, np.float32)}, plain)
    with pytest.raises(nl.CheckpointError, match="without normlab metadata"):
        nl.load(plain)
    with pytest.raises(nl.CheckpointError, match="no such file"):
        nl.load(tmp_path / "missing.safetensors")


def test_newer_format_version_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(normlab.checkpoint, "FORMAT_VERSION", 2)
    path = nl.save(bn_mlp(), tmp_path / "future.safetensors")
    monkeypatch.setattr(normlab.checkpoint, "FORMAT_VERSION", 1)
    with pytest.raises(
        nl.CheckpointError, match=r"format version 2.*reads format versions up to 1"
    ):
        nl.load(path)


MISMATCHES = {
    "other-architecture": (
        lambda: (
            nn.Sequential(
                nn.Linear(6, 8, bias=False),
                nn.BatchNorm1d(8),
                nn.ReLU(),
                nn.Dropout(),
                nn.Linear(8, 3),
            ),
            None,
        ),
        r"'0.weight' has shape \(16, 6\), the model's \(8, 6\)",
    ),
    "missing-layer": (
        lambda: (
            nn.Sequential(
                nn.Linear(6, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout()
            ),
            None,
        ),
        "unexpected 4.bias, 4.weight",
    ),
    "optimizer-class": (lambda: (bn_mlp(), "sgd"), "holds Adam state, not SGD state"),
    "optimizer-groups": (
        lambda: (bn_mlp(), "two-groups"),
        r"the saved state has 1 parameter group\(s\), this optimizer 2 \(nothing was changed\)$",
    ),
    "no-dropout": (
        lambda: (
            nn.Sequential(
                nn.Linear(6, 16, bias=False),
                nn.BatchNorm1d(16),
                nn.ReLU(),
                nn.ReLU(),
                nn.Linear(16, 3),
            ),
            None,
        ),
        "generator states for",
    ),
}


@pytest.mark.parametrize("name", list(MISMATCHES))
def test_mismatched_objects_raise_and_change_nothing(saved, name: str) -> None:
    build, message = MISMATCHES[name]
    model, opt_kind = build()
    if opt_kind == "sgd":
        opt = optim.SGD(model.parameters(), lr=0.1)
    elif opt_kind == "two-groups":
        opt = optim.Adam(optim.param_groups_no_decay(model, 0.1))
    else:
        opt = None
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt_before = None if opt is None else opt.state_dict()
    with pytest.raises(nl.CheckpointError, match=message):
        nl.load_checkpoint(saved["path"], model, opt)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    if opt is not None:
        assert opt.state_dict() == opt_before


def test_missing_parts(saved, tmp_path) -> None:
    model_only = nl.save(bn_mlp(), tmp_path / "model.safetensors")
    model, opt = saved["target"], saved["target_opt"]
    snapshot = _snapshot(model, opt)
    with pytest.raises(nl.CheckpointError, match="holds no optimizer state"):
        nl.load_checkpoint(model_only, model, opt)
    with pytest.raises(nl.CheckpointError, match="holds no LR scheduler state"):
        nl.load_checkpoint(
            model_only, model, scheduler=optim.StepLR(optim.SGD(bn_mlp().parameters()), 3)
        )
    with pytest.raises(nl.CheckpointError, match="holds StepLR state, not CosineAnnealingLR"):
        nl.load_checkpoint(
            saved["path"],
            model,
            opt,
            scheduler=optim.CosineAnnealingLR(optim.SGD(model.parameters()), 5),
        )
    _assert_unchanged(model, opt, snapshot)


def test_a_loader_refusing_its_state_rolls_everything_back(saved, tmp_path) -> None:
    from normlab.data import DataLoader

    x, y = blobs(32)
    source = bn_mlp(seed=3)
    path = nl.save_checkpoint(
        tmp_path / "l.safetensors",
        source,
        optim.Adam(source.parameters()),
        loader=DataLoader(x, y, 8),
    )
    model, opt = saved["target"], saved["target_opt"]
    snapshot = _snapshot(model, opt)
    with pytest.raises(
        nl.CheckpointError, match=r"restoring failed .*saved from a different loader"
    ):
        nl.load_checkpoint(path, model, opt, loader=DataLoader(x, y, 4))
    _assert_unchanged(model, opt, snapshot)  # the model had been restored before the loader refused


@pytest.mark.parametrize("where", ["midway-write", "rename"])
def test_interrupted_save_leaves_the_previous_checkpoint_intact(
    saved, monkeypatch, where: str
) -> None:
    path, original = saved["path"], saved["bytes"]

    def half_then_crash(file, data):
        file.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    def crash(*args, **kwargs):
        raise OSError("power cut (simulated)")

    if where == "midway-write":
        monkeypatch.setattr(normlab.checkpoint, "_write_bytes", half_then_crash)
    else:
        monkeypatch.setattr(os, "replace", crash)
    other = bn_mlp(seed=9)
    with pytest.raises(OSError, match="simulated"):
        nl.save_checkpoint(path, other, optim.Adam(other.parameters()), epoch=5)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "ckpt.safetensors"
    ]  # no temporary file left
    restored = bn_mlp(seed=2)
    assert nl.load_checkpoint(path, restored, optim.Adam(restored.parameters())).epoch == 2


def test_save_replaces_atomically_and_reports_bad_values(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    nl.save(bn_mlp(seed=0), path)
    second = bn_mlp(seed=1)
    nl.save(second, path)
    assert_same_state(nl.load(path), second)
    with pytest.raises(TypeError, match="cannot store a object"):
        nl.save_checkpoint(path, second, extra={"bad": object()})
    assert_same_state(nl.load(path), second)
