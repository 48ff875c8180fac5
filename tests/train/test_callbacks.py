"""Callbacks: early stopping (with best weights restored), checkpoints every N epochs, LR schedules."""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from helpers.training import blobs, bn_mlp
from normlab import optim


class Scripted(nl.Callback):
    """Sets ``logs[key]`` to scripted values (runs before EarlyStopping) and records the weights."""

    priority = 0

    def __init__(self, values: list[float], key: str = "val_loss") -> None:
        self.values, self.key = values, key
        self.weights: list[np.ndarray] = []

    def on_epoch_end(self, run, epoch, logs) -> None:
        logs[self.key] = self.values[epoch]
        self.weights.append(run.model.state_dict()["0.weight"].copy())


def _fit(callbacks, epochs: int = 6, **kwargs) -> tuple[nl.History, object]:
    x, y = blobs(64)
    model = bn_mlp()
    opt = kwargs.pop("optimizer", None) or optim.SGD(model.parameters(), lr=0.05)
    history = nl.fit(
        model,
        x,
        y,
        optimizer=opt,
        epochs=epochs,
        batch_size=32,
        verbose=0,
        callbacks=callbacks,
        seed=0,
        **kwargs,
    )
    return history, model


def test_early_stopping_patience_and_best_weights() -> None:
    script = Scripted([3.0, 2.0, 2.5, 2.4, 2.6, 1.0])
    stop = nl.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history, model = _fit([stop, script])
    assert len(history.epochs) == 4  # best at epoch 1, then 2 epochs without improvement
    assert stop.best == 2.0 and stop.best_epoch == 1 and stop.stopped_epoch == 3
    np.testing.assert_array_equal(model.state_dict()["0.weight"], script.weights[1])


def test_early_stopping_min_delta_and_max_mode() -> None:
    script = Scripted([1.0, 0.999, 0.998, 0.5, 0.4, 0.3])
    history, _ = _fit([nl.EarlyStopping(patience=2, min_delta=0.01), script])
    assert len(history.epochs) == 3  # improvements of 0.001 do not count
    script = Scripted([0.5, 0.6, 0.59, 0.58, 0.9, 0.95], key="val_accuracy")
    stop = nl.EarlyStopping(
        monitor="val_accuracy", patience=1
    )  # "acc" in the name: higher is better
    history, _ = _fit([stop, script])
    assert len(history.epochs) == 3 and stop.best == 0.6
    with pytest.raises(ValueError, match="'val_loss' is not among the epoch's values"):
        _fit([nl.EarlyStopping()])


def test_model_checkpoint_every_n_epochs(tmp_path) -> None:
    ckpt = nl.ModelCheckpoint(tmp_path / "run-{epoch}.safetensors", every=2)
    _fit([ckpt], epochs=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-2.safetensors", "run-4.safetensors"]
    meta = nl.read_metadata(tmp_path / "run-4.safetensors")
    assert meta["epoch"] == 4 and meta["optimizer"]["class"] == "SGD"
    assert (
        len(nl.load_checkpoint(tmp_path / "run-2.safetensors", bn_mlp()).extra["history"]["epochs"])
        == 2
    )


@pytest.mark.parametrize("interval", ["epoch", "iteration"])
def test_lr_scheduler_callback(interval: str) -> None:
    x, y = blobs(64)
    model = bn_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    history = nl.fit(
        model,
        x,
        y,
        optimizer=opt,
        epochs=3,
        batch_size=32,
        verbose=0,
        callbacks=[nl.LRSchedulerCallback(sched, interval)],
    )
    steps_before = [i // 2 if interval == "epoch" else i for i in range(6)]  # 2 batches per epoch
    assert [r["lr"] for r in history.iterations] == pytest.approx(
        [0.1 * 0.5**k for k in steps_before]
    )
    assert history["lr"] == [
        r["lr"] for r in history.iterations[1::2]
    ]  # the lr of each epoch's last step
    assert opt.param_groups[0]["lr"] == pytest.approx(
        0.1 * 0.5 ** (3 if interval == "epoch" else 6)
    )
