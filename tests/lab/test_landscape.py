"""landscape: the probes measure what they say, leave the model exactly as it was, and the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import nn, optim
from normlab.data import DataLoader
from normlab.lab.common import Measure, train_model
from normlab.lab.experiments.landscape import build, decide, loss_and_gradient, probe

STEPS = [0.05, 0.1, 0.2]


def batch(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.random((n, 784), dtype=np.float32), g.integers(0, 10, n)


@pytest.mark.parametrize("variant", ["plain", "bn"])
def test_a_probe_restores_parameters_gradients_and_running_statistics(variant: str) -> None:
    model = build(variant, [8, 8], rng=np.random.default_rng(0))
    x, y = batch()
    loss_and_gradient(model, x, y, nn.CrossEntropyLoss())  # leaves gradients to be kept
    model.eval()
    state = {k: v.copy() for k, v in model.state_dict().items()}
    grads = [p.grad.copy() for p in model.parameters()]
    r = probe(model, x, y, STEPS, nn.CrossEntropyLoss())
    assert not model.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    for p, g in zip(model.parameters(), grads, strict=True):
        np.testing.assert_array_equal(p.grad, g)
    assert r["loss_range"] >= 0 and len(r["losses"]) == len(STEPS)


def test_probe_quantities_match_a_direct_computation() -> None:
    model = build("bn", [8], rng=np.random.default_rng(1))
    x, y = batch(seed=2)
    criterion = nn.CrossEntropyLoss()
    r = probe(model, x, y, STEPS, criterion)
    # by hand: move each parameter along its own gradient, recompute loss and gradient
    model.train()
    loss0, g0 = loss_and_gradient(model, x, y, criterion)
    params = list(model.parameters())
    w0 = [p.data.copy() for p in params]
    grads0 = [p.grad.copy() for p in params]
    eta = STEPS[-1]
    for p, w, g in zip(params, w0, grads0, strict=True):
        p.data = w - eta * g
    loss, g = loss_and_gradient(model, x, y, criterion)
    assert r["loss"] == pytest.approx(loss0)
    assert r["losses"][-1] == pytest.approx(loss, rel=1e-6)
    change = np.linalg.norm(g - g0)
    assert r["grad_changes"][-1] == pytest.approx(change, rel=1e-6)
    assert r["beta"] >= change / (eta * np.linalg.norm(g0)) * (1 - 1e-6)


def test_training_with_probes_is_training_without_them() -> None:
    def train(with_probes: bool) -> list[float]:
        model = build("bn", [16, 16], rng=np.random.default_rng(3))
        xs, ys = batch(96, seed=4)
        loader = DataLoader(xs, ys, batch_size=16, shuffle=True, seed=0)
        callbacks = []
        if with_probes:
            callbacks = [
                Measure(
                    lambda run, step: probe(model, xs[:16], ys[:16], STEPS, nn.CrossEntropyLoss())
                )
            ]
        history = train_model(
            model,
            loader,
            optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            loss=nn.CrossEntropyLoss(),
            epochs=2,
            callbacks=callbacks,
        )
        return [r["loss"] for r in history.iterations] + [
            float(v.sum()) for v in model.state_dict().values()
        ]

    assert train(True) == train(False)


def medians(bn: list[float], plain: list[float]) -> dict:
    keys = ["loss_range", "grad_change", "beta"]
    return {"bn": dict(zip(keys, bn, strict=True)), "plain": dict(zip(keys, plain, strict=True))}


def test_holds_when_bn_is_smoother_in_every_quantity() -> None:
    holds, measured = decide(medians([0.1, 0.5, 2.0], [0.4, 2.0, 9.0]))
    assert holds and "smaller with BN" in measured


@pytest.mark.parametrize("which", [0, 1, 2])
def test_does_not_hold_when_one_quantity_is_not_smaller(which: int) -> None:
    bn = [0.1, 0.5, 2.0]
    bn[which] = 100.0
    holds, measured = decide(medians(bn, [0.4, 2.0, 9.0]))
    assert not holds and "not smaller" in measured


def test_same_seed_same_numbers(tmp_path) -> None:
    from normlab.lab import run_experiments

    def metrics(seed: int, where: str) -> str:
        summary = run_experiments(["landscape"], tmp_path / where, mode="tiny", seed=seed)
        return (summary.out_dir / "landscape" / "probes.csv").read_text()

    first = metrics(5, "a")
    assert first == metrics(5, "b")
    assert first != metrics(6, "c")
