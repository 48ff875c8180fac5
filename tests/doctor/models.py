"""The trained model the doctor's tests share (the fixture in conftest.py trains it once per session)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import normlab as nl
from normlab import nn, optim
from normlab.data import DataLoader, flatten, load_mnist, scale_01
from normlab.lab.common import mlp
from normlab.train.step import train_step


@dataclass
class Trained:
    model: nn.Sequential  # trained, in eval mode; tests copy its state, never change it
    state: dict
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def fresh(self) -> nn.Sequential:
        """A new model with the trained state, in eval mode."""
        model = build_mlp()
        model.load_state_dict(self.state)
        return model.eval()


def build_mlp(seed: int = 0) -> nn.Sequential:
    return mlp([784, 64, 32, 10], norm="bn", rng=np.random.default_rng(seed))


def train_mlp() -> Trained:
    """The BN MLP (784-64-32-10) trained 300 steps of Adam (batch 64) on the bundled MNIST sample."""
    splits = load_mnist("sample")
    x, y = flatten(scale_01(splits.train.x)), splits.train.y
    x_test, y_test = flatten(scale_01(splits.test.x))[:1000], splits.test.y[:1000]
    model = build_mlp()
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.CrossEntropyLoss()
    loader = DataLoader(x, y, batch_size=64, shuffle=True, seed=0)
    steps = 0
    model.train()
    while steps < 300:
        for xb, yb in loader:
            train_step(model, opt, loss, xb, yb)
            steps += 1
            if steps == 300:
                break
    model.eval()
    assert nl.evaluate(model, x_test, y_test)["accuracy"] > 0.85
    return Trained(model, model.state_dict(), x, y, x_test, y_test)
