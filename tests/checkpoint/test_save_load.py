"""save -> load gives identical eval predictions; architecture, buffers, dtypes and metadata survive."""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from helpers.training import assert_same_state, blobs, bn_mlp, small_cnn
from normlab import nn, optim


def _trained_cnn() -> tuple[nn.Module, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 1.0, size=(48, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=48)
    model = small_cnn()
    nl.fit(
        model,
        x,
        y,
        optimizer=optim.Adam(model.parameters(), lr=0.01),
        epochs=2,
        batch_size=16,
        seed=0,
        verbose=0,
    )
    return model, x


def test_save_load_gives_identical_eval_predictions(tmp_path) -> None:
    model, x = _trained_cnn()
    assert int(model[1].num_batches_tracked) == 6 and not np.allclose(model[1].running_var, 1.0)
    path = nl.save(model, tmp_path / "cnn.safetensors")
    loaded = nl.load(path)
    assert repr(loaded) == repr(model)
    assert not loaded.training  # ready for inference
    assert_same_state(loaded, model)  # parameters and running statistics, bit for bit
    np.testing.assert_array_equal(nl.predict(loaded, x), nl.predict(model, x))


def test_float64_model_stays_float64(tmp_path) -> None:
    model = bn_mlp(dtype=np.float64)
    x, _ = blobs(20)
    model(x.astype(np.float64))  # move the running statistics
    loaded = nl.load(nl.save(model, tmp_path / "m.safetensors"))
    assert all(
        v.dtype == np.float64 for k, v in loaded.state_dict().items() if "num_batches" not in k
    )
    assert_same_state(loaded, model)


def test_load_into_a_given_model_keeps_its_mode(tmp_path) -> None:
    model, _ = _trained_cnn()
    nl.save(model, tmp_path / "cnn.safetensors")
    target = small_cnn(seed=99).train()
    assert nl.load(tmp_path / "cnn.safetensors", target) is target
    assert target.training
    assert_same_state(target, model)


def test_models_of_unregistered_classes(tmp_path) -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(3, 3, rng=0)

        def forward(self, x):
            return x + self.inner(x)

    model = Residual()
    path = nl.save(model, tmp_path / "r.safetensors")
    assert nl.read_metadata(path)["model"]["config"] is None
    with pytest.raises(nl.CheckpointError, match="holds no architecture"):
        nl.load(path)
    other = Residual()
    other.inner.weight.data[...] = 0
    nl.load(path, other)
    assert_same_state(other, model)


def test_metadata(tmp_path) -> None:
    model = bn_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = nl.save_checkpoint(
        tmp_path / "c.safetensors", model, opt, epoch=7, extra={"note": "hi", "arr": np.arange(3)}
    )
    meta = nl.read_metadata(path)
    assert meta["format"] == "normlab.checkpoint" and meta["format_version"] == 1
    assert meta["normlab_version"] == nl.__version__
    assert meta["kind"] == "training" and meta["epoch"] == 7
    assert meta["model"]["config"]["class"] == "Sequential"
    assert list(meta["rng"]["dropout"]) == ["3"]
    ckpt = nl.load_checkpoint(path, bn_mlp(seed=5))
    assert ckpt.epoch == 7 and ckpt.extra["note"] == "hi"
    np.testing.assert_array_equal(ckpt.extra["arr"], np.arange(3))
    # the file is plain safetensors: any reader sees parameters and buffers under model/
    from safetensors.numpy import load_file

    tensors = load_file(path)
    assert {
        "model/0.weight",
        "model/1.running_mean",
        "model/1.running_var",
        "model/1.num_batches_tracked",
    } <= set(tensors)
