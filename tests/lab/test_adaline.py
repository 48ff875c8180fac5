"""adaline: Linear + MSELoss(sum) + SGD(eta / 2) is Raschka's update; the decision rule."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import nn, optim
from normlab.lab.experiments.adaline import adaline, decide, iris_two_classes, sgd_lr_for
from normlab.train import train_step


def test_iris_rows_are_setosa_then_versicolor_with_the_two_features() -> None:
    x, y = iris_two_classes(100, ["sepal_length", "petal_length"])
    assert x.shape == (100, 2) and y.shape == (100, 1)
    assert np.all(y[:50] == -1) and np.all(y[50:] == 1)
    assert x[0].tolist() == [5.1, 1.4]  # the first row of the UCI file: 5.1,3.5,1.4,0.2,Iris-setosa


@pytest.mark.parametrize("eta", [0.01, 0.0001])
def test_one_normlab_step_is_the_textbook_adaline_update(eta: float) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(5.0, 1.5, size=(12, 2))
    y = np.where(rng.random(12) < 0.5, -1.0, 1.0)[:, None]
    model = adaline(0.01, np.random.default_rng(3))
    w, b = model.weight.data[0].copy(), float(model.bias.data[0])

    # Raschka's AdalineGD.fit, one iteration, written out by hand
    output = x @ w + b
    errors = y[:, 0] - output
    w_expected = w + eta * x.T @ errors
    b_expected = b + eta * errors.sum()
    cost_expected = (errors**2).sum() / 2.0

    loss_fn = nn.MSELoss(reduction="sum")
    opt = optim.SGD(model.parameters(), lr=sgd_lr_for(eta))
    cost = float(train_step(model, opt, loss_fn, x, y).loss_value) / 2

    np.testing.assert_allclose(model.weight.data[0], w_expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model.bias.data[0], b_expected, rtol=1e-12, atol=1e-15)
    assert cost == pytest.approx(cost_expected, rel=1e-12)


def test_initial_weights_are_small_gaussian_from_the_given_generator() -> None:
    a = adaline(0.01, np.random.default_rng(1))
    b = adaline(0.01, np.random.default_rng(1))
    assert a.weight.data.dtype == np.float64 and a.weight.data.shape == (1, 2)
    assert np.array_equal(a.weight.data, b.weight.data) and np.array_equal(a.bias.data, b.bias.data)
    assert np.all(np.abs(a.weight.data) < 0.05)


def test_decide_holds_when_raw_diverges_and_crawls_and_standardised_converges() -> None:
    holds, measured = decide(
        raw_fast=[50.0, 200.0, 1e6],
        raw_slow=[50.0, 48.0, 46.0],
        standardized=[50.0, 10.0, 3.0],
        standardized_accuracy=1.0,
        accuracy_threshold=0.95,
    )
    assert holds
    assert "diverges" in measured and "1.00" in measured


def test_decide_counts_a_non_finite_cost_as_divergence() -> None:
    holds, _ = decide([50.0, float("inf"), float("nan")], [50.0, 49.0], [50.0, 3.0], 1.0, 0.95)
    assert holds


@pytest.mark.parametrize(
    "raw_fast, raw_slow, standardized, accuracy",
    [
        ([50.0, 40.0, 30.0], [50.0, 48.0], [50.0, 3.0], 1.0),  # large eta does not diverge
        ([50.0, 1e6], [50.0, 51.0], [50.0, 3.0], 1.0),  # small eta does not fall
        ([50.0, 1e6], [50.0, 2.0], [50.0, 3.0], 1.0),  # small eta ends below the standardised run
        ([50.0, 1e6], [50.0, 48.0], [50.0, 3.0, 4.0], 1.0),  # standardised cost rises
        ([50.0, 1e6], [50.0, 48.0], [50.0, 3.0], 0.9),  # standardised run misclassifies
    ],
)
def test_decide_does_not_hold_when_one_behaviour_is_missing(
    raw_fast: list[float], raw_slow: list[float], standardized: list[float], accuracy: float
) -> None:
    holds, _ = decide(raw_fast, raw_slow, standardized, accuracy, 0.95)
    assert not holds
