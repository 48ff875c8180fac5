"""The lab's shared pieces: training through fit with measurements in callbacks, accuracy, the MLP builder."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.training import blobs
from normlab import nn, optim
from normlab.config import TrainConfig, build_model, mlp
from normlab.data import DataLoader
from normlab.lab.common import Measure, correct_predictions, model_accuracy, train_model


def test_measure_counts_steps_across_epochs_and_numbers_epochs_from_one() -> None:
    x, y = blobs(40)
    model = mlp([6, 8, 3], norm="bn", rng=np.random.default_rng(0))
    seen: list[tuple[str, int, int]] = []
    measure = Measure(
        lambda run, step: seen.append(("step", step, run.epoch)),
        lambda run, epoch: seen.append(("epoch", epoch, run.epoch)),
        before_epoch=lambda run, epoch: seen.append(("begin", epoch, run.epoch)),
    )
    loader = DataLoader(x, y, batch_size=16, seed=0)  # 3 batches an epoch
    history = train_model(
        model,
        loader,
        optimizer=optim.SGD(model.parameters(), lr=0.1),
        loss=nn.CrossEntropyLoss(),
        epochs=2,
        callbacks=[measure],
    )
    expected = [("begin", 1, 0), *[("step", s, 0) for s in (1, 2, 3)], ("epoch", 1, 0)]
    expected += [("begin", 2, 1), *[("step", s, 1) for s in (4, 5, 6)], ("epoch", 2, 1)]
    assert seen == expected and len(history.iterations) == 6


def test_train_model_is_the_plain_loop_over_the_loader() -> None:
    """The same updates as the loop the experiments wrote out before: forward, loss, backward, step."""
    x, y = blobs(48)
    models = [mlp([6, 8, 3], norm="bn", dropout=0.2, rng=np.random.default_rng(1)) for _ in "ab"]
    opts = [optim.Adam(m.parameters(), lr=0.01) for m in models]
    train_model(
        models[0],
        DataLoader(x, y, batch_size=16, seed=3),
        optimizer=opts[0],
        loss=nn.CrossEntropyLoss(),
        epochs=2,
    )
    loss_fn = nn.CrossEntropyLoss()
    models[1].requires_input_grad_(False)
    loader = DataLoader(x, y, batch_size=16, seed=3)
    for _ in range(2):
        for xb, yb in loader:
            opts[1].zero_grad()
            loss_fn(models[1](xb), yb)
            models[1].backward(loss_fn.backward())
            opts[1].step()
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def test_train_model_stops_after_the_first_diverged_step_when_asked() -> None:
    x, y = blobs(48)
    x = np.full_like(x, np.inf)  # a NaN loss at the first step
    for stop, steps in ((True, 1), (False, 6)):
        model = mlp([6, 8, 3], rng=np.random.default_rng(0))
        with np.errstate(invalid="ignore", over="ignore"):
            history = train_model(
                model,
                DataLoader(x, y, batch_size=16, seed=0),
                optimizer=optim.SGD(model.parameters(), lr=0.1),
                loss=nn.CrossEntropyLoss(),
                epochs=2,
                stop_when_diverged=stop,
            )
        assert len(history.iterations) == steps
        assert not np.isfinite(history.iterations[0]["loss"])


def test_model_accuracy_counts_in_eval_mode_and_restores_the_mode() -> None:
    x, y = blobs(30)
    model = mlp([6, 8, 3], norm="bn", rng=np.random.default_rng(0))
    model.train()
    expected = np.mean(np.argmax(model.eval()(x), axis=1) == y)
    model.train()
    assert model_accuracy(model, x, y, batch_size=7) == expected and model.training
    assert correct_predictions(np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 1, 2])) == 3


def test_the_config_builder_is_the_lab_builder() -> None:
    cfg = TrainConfig(
        model={"hidden": [8, 5], "normalizer": "layernorm", "activation": "tanh", "dropout": 0.1},
        training={"seed": 4},
    )
    a = build_model(cfg, 6, 3)
    b = mlp([6, 8, 5, 3], norm="ln", activation="tanh", dropout=0.1, rng=np.random.default_rng(4))
    assert [type(m).__name__ for m in a] == [type(m).__name__ for m in b]
    assert [type(m).__name__ for m in a][:4] == ["Linear", "LayerNorm", "Tanh", "Dropout"]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)


def test_trailing_mean_keeps_the_first_points() -> None:
    from normlab.lab.common import trailing_mean

    np.testing.assert_allclose(trailing_mean([4.0, 2.0, 6.0, 0.0], 2), [4.0, 3.0, 4.0, 3.0])
    np.testing.assert_allclose(trailing_mean([1.0, 2.0, 3.0], 1), [1.0, 2.0, 3.0])
    assert len(trailing_mean(np.arange(100.0), 7)) == 100
    with pytest.raises(ValueError, match="window"):
        trailing_mean([1.0], 0)


def test_accuracy_axis_shows_the_lowest_point() -> None:
    from normlab.lab.common import accuracy_axis

    low, high = accuracy_axis([0.11, 0.95, 0.97])  # a chance-level first point
    assert low < 0.11 and high == 1.0
    assert accuracy_axis([0.01, float("nan")]) == (0.0, 1.0)
