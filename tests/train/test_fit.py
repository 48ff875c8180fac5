"""fit / evaluate / predict: learning, modes always restored, no_grad in evaluation, reproducibility from a
seed, batch sources, validation, History and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from helpers.training import assert_same_state, blobs, bn_mlp
from normlab import is_grad_enabled, nn, optim
from normlab.data import DataLoader


class Recorder(nn.ReLU):
    """A ReLU that records, at each forward, the mode it was in and whether gradients were kept."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.seen.append((self.training, is_grad_enabled()))
        return super().forward(x)


def _model_with_recorder(seed: int = 0) -> tuple[nn.Sequential, Recorder]:
    rec = Recorder()
    gen = np.random.default_rng(seed)
    model = nn.Sequential(
        nn.Linear(6, 8, rng=gen), nn.BatchNorm1d(8), rec, nn.Linear(8, 3, rng=gen)
    )
    return model, rec


def test_fit_learns_separable_data() -> None:
    x, y = blobs(400)
    model = bn_mlp()
    before = nl.evaluate(model, x, y)
    history = nl.fit(
        model,
        x,
        y,
        optimizer=optim.Adam(model.parameters(), lr=0.02),
        epochs=8,
        batch_size=32,
        seed=0,
        verbose=0,
    )
    after = nl.evaluate(model, x, y)
    assert after["accuracy"] >= 0.95 > before["accuracy"]
    assert after["loss"] < 0.3 * before["loss"]
    assert history["loss"][-1] < history["loss"][0]


def test_fit_trains_in_train_mode_validates_in_eval_and_restores_modes() -> None:
    x, y = blobs(64)
    model, rec = _model_with_recorder()
    model.eval()
    model[1].train()  # a mixed state the user chose: restored exactly
    nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        batch_size=32,
        validation_data=blobs(20, seed=1),
        verbose=0,
    )
    # 2 batches of training then 1 validation batch, per epoch
    assert rec.seen == [(True, True), (True, True), (False, False)] * 2
    assert [m.training for m in model.modules()] == [False, False, True, False, False]


def test_evaluate_and_predict_use_eval_mode_without_gradients_and_restore() -> None:
    x, y = blobs(50)
    model, rec = _model_with_recorder()
    model.train()
    nl.evaluate(model, x, y, batch_size=20)
    out = nl.predict(model, x, batch_size=20)
    assert rec.seen == [(False, False)] * 6
    assert all(m.training for m in model.modules())
    assert out.shape == (50, 3)
    # eval mode means running statistics: a batch of one sample gets the same output as inside a batch
    np.testing.assert_allclose(nl.predict(model, x[:1]), out[:1], rtol=1e-5, atol=1e-6)


def test_modes_restored_when_training_fails() -> None:
    x, y = blobs(64)
    model = bn_mlp()
    model.eval()
    bad_y = y.copy()
    bad_y[40] = 7  # out of range: the second batch fails
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: labels must lie in \[0, 3\)"):
        nl.fit(
            model,
            x,
            bad_y,
            optimizer=optim.SGD(model.parameters(), lr=0.1),
            batch_size=32,
            verbose=0,
        )
    assert not any(m.training for m in model.modules())


@pytest.mark.filterwarnings(
    "ignore::RuntimeWarning"
)  # NaN statistics: batch norm warns, as documented
def test_non_finite_loss_stops_with_a_clear_error() -> None:
    x, y = blobs(64)
    x[10, 0] = np.inf
    model = bn_mlp(dropout=0.0)
    with pytest.raises(FloatingPointError, match="the loss became nan in epoch 1"):
        nl.fit(
            model, x, y, optimizer=optim.SGD(model.parameters(), lr=0.1), batch_size=64, verbose=0
        )


def _fit_once(seed: int | None, dropout: float = 0.3) -> tuple[nn.Module, nl.History]:
    x, y = blobs(200)
    model = bn_mlp(seed=3, dropout=dropout)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = nl.fit(model, x, y, optimizer=opt, epochs=3, batch_size=16, seed=seed, verbose=0)
    return model, history


def test_same_seed_same_run_bit_for_bit() -> None:
    a, ha = _fit_once(seed=11)
    b, hb = _fit_once(seed=11)
    assert_same_state(a, b)
    assert ha.iterations == hb.iterations
    c, _ = _fit_once(seed=12)
    assert not np.array_equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])


def test_a_drawn_seed_is_recorded_and_reproduces_the_run() -> None:
    a, history = _fit_once(seed=None, dropout=0.0)
    assert isinstance(history.seed, int)
    b, _ = _fit_once(seed=history.seed, dropout=0.0)
    assert_same_state(a, b)


def test_shuffle_changes_order_per_epoch_and_off_keeps_it() -> None:
    x = np.arange(10, dtype=np.float32)[:, None]
    seen: list[list[float]] = []

    class Spy(nn.Linear):
        def forward(self, xb):
            seen.append(xb[:, 0].tolist())
            return super().forward(xb)

    model = nn.Sequential(Spy(1, 2, rng=0))
    y = np.zeros(10, np.int64)
    nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.0),
        epochs=2,
        batch_size=10,
        seed=0,
        verbose=0,
    )
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(10))
    assert seen[0] != seen[1] and seen[0] != list(range(10))
    seen.clear()
    nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.0),
        epochs=2,
        batch_size=4,
        shuffle=False,
        verbose=0,
    )
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2


def test_fit_accepts_any_reiterable_batch_source() -> None:
    x, y = blobs(96)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    model = bn_mlp(dropout=0.0)
    history = nl.fit(
        model,
        batches,
        optimizer=optim.Adam(model.parameters(), lr=0.01),
        epochs=2,
        verbose=0,
        validation_data=batches[:1],
    )
    assert len(history.iterations) == 6
    assert [r["iteration"] for r in history.iterations] == list(range(6))
    assert set(history.epochs[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    loader = DataLoader(x, y, batch_size=32, seed=0)  # normlab.data's loader
    nl.fit(model, loader, optimizer=optim.Adam(model.parameters()), epochs=2, verbose=0)
    assert nl.evaluate(model, loader)["accuracy"] > 0.5


def test_validation_split_holds_out_the_last_samples() -> None:
    x, y = blobs(100)
    seen_val: list[int] = []

    class Spy(nn.Linear):
        def forward(self, xb):
            if not self.training:
                seen_val.append(len(xb))
            return super().forward(xb)

    model = nn.Sequential(Spy(6, 3, rng=0))
    history = nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.01),
        epochs=1,
        batch_size=100,
        validation_split=0.2,
        verbose=0,
    )
    assert seen_val == [20]
    assert len(history.iterations) == 1 and "val_loss" in history.epochs[0]
    expected = nl.evaluate(model, x[80:], y[80:])
    assert history["val_loss"] == [pytest.approx(expected["loss"], rel=1e-12)]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda m, o, x, y: nl.fit(m, x[:0], y[:0], optimizer=o),
            ValueError,
            r"fit: the data is empty \(0 samples",
        ),
        (
            lambda m, o, x, y: nl.fit(m, x, y, optimizer=o, batch_size=0),
            ValueError,
            "batch_size must be an integer >= 1, got 0",
        ),
        (
            lambda m, o, x, y: nl.fit(m, x, y[:5], optimizer=o),
            ValueError,
            "different numbers of samples: 10 and 5",
        ),
        (lambda m, o, x, y: nl.fit(m, x, optimizer=o), ValueError, "no labels y"),
        (lambda m, o, x, y: nl.fit(m, iter([(x, y)]), optimizer=o), TypeError, "one-shot iterator"),
        (lambda m, o, x, y: nl.fit(m, [], optimizer=o), ValueError, "the batch source is empty"),
        (
            lambda m, o, x, y: nl.fit(m, x, y, optimizer=o, epochs=0),
            ValueError,
            "epochs must be a positive int",
        ),
        (
            lambda m, o, x, y: nl.fit(m, x, y, optimizer=o, validation_split=1.0),
            ValueError,
            "validation_split",
        ),
        (
            lambda m, o, x, y: nl.fit(m, x, y.astype(np.float32), optimizer=o),
            TypeError,
            "expected integer class labels",
        ),
        (
            lambda m, o, x, y: nl.fit(m, x, y, optimizer=None),
            TypeError,
            "optimizer must be a normlab Optimizer",
        ),
        (
            lambda m, o, x, y: nl.fit(
                m, x, y, optimizer=o, loss=nn.CrossEntropyLoss(reduction="none")
            ),
            ValueError,
            "reduction 'mean' or 'sum'",
        ),
        (
            lambda m, o, x, y: nl.evaluate(m, x, y, batch_size=-1),
            ValueError,
            "evaluate: batch_size",
        ),
        (
            lambda m, o, x, y: nl.evaluate(m, x),
            ValueError,
            "evaluate: got an array x but no labels",
        ),
        (lambda m, o, x, y: nl.predict(m, x[:0]), ValueError, r"predict: the data is empty"),
        (
            lambda m, o, x, y: nl.fit(m, x.astype(np.uint8), y, optimizer=o),
            TypeError,
            r"Linear\(.*floating-point.*uint8",
        ),
    ],
)
def test_bad_input(call, error: type, message: str) -> None:
    x, y = blobs(10)
    model = bn_mlp()
    with pytest.raises(error, match=message):
        call(model, optim.SGD(model.parameters(), lr=0.1), x, y)


def test_verbose_zero_prints_nothing_and_pipes_get_plain_lines(capsys) -> None:
    x, y = blobs(64)
    model = bn_mlp()
    nl.fit(model, x, y, optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    nl.fit(model, x, y, optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=2, verbose=1)
    out = capsys.readouterr().out  # captured output is not a terminal: no bar
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Epoch 1/2 - loss ") and "accuracy" in lines[0]
    assert "\x1b" not in out and "━" not in out


def test_progress_bar_on_a_terminal(monkeypatch) -> None:
    import io

    from rich.console import Console

    import normlab.train.display

    buffer = io.StringIO()
    monkeypatch.setattr(
        normlab.train.display,
        "console",
        lambda: Console(file=buffer, force_terminal=True, width=120),
    )
    x, y = blobs(64)
    model = bn_mlp()
    nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        batch_size=16,
        verbose=1,
    )
    out = buffer.getvalue()
    assert "Epoch 2/2" in out and "4/4" in out and "━" in out and "loss" in out
