"""One training step (``train_step``), what callbacks see of it (``run.step``), stopping inside an epoch,
losses that stop being finite, the array batching through ``DataLoader``, and ModelCheckpoint's directory."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import normlab as nl
from helpers.training import blobs, bn_mlp
from normlab import nn, optim
from normlab.train import EpochBatches, train_step


class StepLog(nl.Callback):
    """Keeps a copy of every ``run.step`` and of the first layer's weight after that step."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.steps: list[nl.train.Step] = []
        self.weights: list[np.ndarray] = []
        self.stop_after = stop_after

    def on_batch_end(self, run, logs) -> None:
        self.steps.append(copy.deepcopy(run.step))
        self.weights.append(run.model[0].weight.data.copy())
        if self.stop_after is not None and len(self.steps) == self.stop_after:
            run.stop_training = True


class NanAt(nn.CrossEntropyLoss):
    """Cross-entropy whose value is NaN at the ``at``-th call (its gradient stays finite)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, prediction, target):
        self.calls += 1
        value = super().forward(prediction, target)
        return np.float64("nan") if self.calls == self.at else value


def test_train_step_is_forward_loss_backward_update() -> None:
    x, y = blobs(32)
    model = bn_mlp(dropout=0.0)
    twin = copy.deepcopy(model)
    opt, twin_opt = (optim.SGD(m.parameters(), lr=0.1) for m in (model, twin))
    loss_fn, twin_loss = nn.CrossEntropyLoss(), nn.CrossEntropyLoss()

    step = train_step(model, opt, loss_fn, x, y)

    out = twin(x)  # the same step written out by hand
    value = twin_loss(out, y)
    twin.backward(twin_loss.backward())
    twin_opt.step()
    assert step.loss == float(value) and step.loss_value == value
    np.testing.assert_array_equal(step.outputs, out)
    np.testing.assert_array_equal(step.targets, y)
    assert len(step) == 32
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def test_train_step_reports_a_sum_loss_per_sample_and_keeps_the_sum() -> None:
    x = np.arange(8.0).reshape(4, 2)
    y = np.ones((4, 1))
    model = nn.Linear(2, 1, dtype=np.float64, rng=np.random.default_rng(0))
    step = train_step(
        model, optim.SGD(model.parameters(), lr=0.0), nn.MSELoss(reduction="sum"), x, y
    )
    assert step.loss == pytest.approx(float(step.loss_value) / 4, rel=1e-15)


def test_callbacks_see_each_step_outputs_targets_and_loss() -> None:
    x, y = blobs(64)
    model = bn_mlp()
    log = StepLog()
    history = nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        batch_size=16,
        callbacks=[log],
        verbose=0,
        seed=0,
    )
    assert len(log.steps) == len(history.iterations) == 8
    for step, record in zip(log.steps, history.iterations, strict=True):
        assert step.loss == record["loss"]
        assert step.outputs.shape == (16, 3) and step.targets.shape == (16,)
        # the logged accuracy is computed from these very outputs
        assert record["accuracy"] == np.mean(np.argmax(step.outputs, axis=1) == step.targets)
    # each epoch's targets are the shuffled labels: together, every label once
    assert sorted(np.concatenate([s.targets for s in log.steps[:4]])) == sorted(y)


def test_stop_training_in_on_batch_end_ends_the_epoch_after_that_batch() -> None:
    x, y = blobs(64)
    model = bn_mlp()
    log = StepLog(stop_after=3)
    history = nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.1),
        epochs=4,
        batch_size=16,
        validation_data=(x, y),
        callbacks=[log],
        verbose=0,
        seed=0,
    )
    assert len(history.iterations) == 3
    assert len(history.epochs) == 1 and "val_loss" in history.epochs[0]  # the epoch's end still ran


def test_nonfinite_loss_raises_before_the_update_by_default() -> None:
    x, y = blobs(64)
    model = bn_mlp()
    log = StepLog()
    with pytest.raises(FloatingPointError, match="the loss became nan in epoch 1"):
        nl.fit(
            model,
            x,
            y,
            optimizer=optim.SGD(model.parameters(), lr=0.1),
            loss=NanAt(3),
            batch_size=16,
            callbacks=[log],
            verbose=0,
            seed=0,
        )
    assert len(log.steps) == 2
    np.testing.assert_array_equal(model[0].weight.data, log.weights[-1])  # step 3 made no update


def test_terminate_on_nan_stops_after_the_update_of_the_nonfinite_step() -> None:
    x, y = blobs(64)
    model = bn_mlp()
    log, stop = StepLog(), nl.TerminateOnNaN()
    history = nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.1),
        loss=NanAt(3),
        epochs=3,
        batch_size=16,
        callbacks=[log, stop],
        verbose=0,
        seed=0,
        nonfinite_loss="continue",
    )
    assert stop.stopped_at == 2 and len(history.iterations) == 3
    assert np.isnan(history.iterations[-1]["loss"]) and len(history.epochs) == 1
    assert not np.array_equal(log.weights[1], log.weights[2])  # step 3's update was made


def test_nonfinite_loss_continue_without_a_callback_trains_on() -> None:
    x, y = blobs(64)
    model = bn_mlp()
    history = nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.1),
        loss=NanAt(2),
        epochs=2,
        batch_size=16,
        verbose=0,
        seed=0,
        nonfinite_loss="continue",
    )
    assert len(history.iterations) == 8 and np.isnan(history.iterations[1]["loss"])


def test_nonfinite_loss_must_be_a_known_choice() -> None:
    x, y = blobs(16)
    model = bn_mlp()
    with pytest.raises(ValueError, match="nonfinite_loss must be one of"):
        nl.fit(model, x, y, optimizer=optim.SGD(model.parameters(), lr=0.1), nonfinite_loss="skip")


def test_array_batches_are_a_dataloader_seeded_per_epoch() -> None:
    x = np.arange(20.0).reshape(10, 2)
    y = np.arange(10)
    batches = EpochBatches(x, y, batch_size=4, shuffle=True, seed=7)
    assert len(batches) == 3
    for epoch in (0, 3):
        batches.set_epoch(epoch)
        order = np.random.default_rng([7, epoch, 0]).permutation(10)
        got = list(batches)
        assert [len(yb) for _, yb in got] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([yb for _, yb in got]), order)
        np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got]), x[order])
    assert [yb.tolist() for _, yb in EpochBatches(x, y, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_model_checkpoint_creates_its_directory(tmp_path) -> None:
    x, y = blobs(32)
    model = bn_mlp()
    target = tmp_path / "not" / "yet" / "there"
    ckpt = nl.ModelCheckpoint(target / "ckpt-{epoch}.safetensors")
    nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        callbacks=[ckpt],
        verbose=0,
        seed=0,
    )
    assert sorted(p.name for p in target.iterdir()) == ["ckpt-1.safetensors", "ckpt-2.safetensors"]
    assert nl.read_metadata(target / "ckpt-2.safetensors")["epoch"] == 2
