"""No false alarms: the models of examples/*.toml and the lab's eval-pitfalls CNN, trained as their configs say
(on fewer steps), have no finding at warning or above, with the test data and labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import normlab as nl
from normlab.config import build_model, build_optimizer, load_config, load_data
from normlab.data import DataLoader, load_mnist, scale_01
from normlab.lab.experiments.eval_pitfalls import small_cnn
from normlab.train.step import train_step

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("name", "samples", "epochs"), [("mlp_batchnorm", 3000, 1), ("cnn_groupnorm", 640, 1)]
)
def test_example_models(name: str, samples: int, epochs: int) -> None:
    cfg = load_config(EXAMPLES / f"{name}.toml")
    data = load_data(cfg)
    model = build_model(cfg, data.n_inputs, data.n_classes)
    x, y = data.train.x[:samples], data.train.y[:samples]
    nl.fit(
        model,
        x,
        y,
        optimizer=build_optimizer(cfg, model),
        epochs=epochs,
        batch_size=cfg.batch_size,
        verbose=0,
        seed=cfg.seed,
    )
    model.eval()
    report = nl.doctor(model, data.test.x[:1000], labels=data.test.y[:1000])
    assert report.codes("warning") == set(), report
    assert report.normalization_layers


def test_eval_pitfalls_cnn() -> None:
    splits = load_mnist("sample")
    x = scale_01(splits.train.x)[:3200, None]
    model = small_cnn([8, 16], np.random.default_rng(0))
    opt = nl.optim.Adam(model.parameters(), lr=1e-3)
    loss = nl.nn.CrossEntropyLoss()
    model.train()
    for xb, yb in DataLoader(x, splits.train.y[:3200], batch_size=64, seed=0):
        train_step(model, opt, loss, xb, yb)
    model.eval()
    x_test = scale_01(splits.test.x)[:1000, None]
    report = nl.doctor(model, x_test, labels=splits.test.y[:1000])
    assert report.codes("warning") == set(), report
    assert report.codes() == {"BN006", "BN014"}
