"""The lenet-bn verdict on synthetic accuracies, and the LeNet shapes."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import nn
from normlab.lab.experiments.lenet_bn import decide, lenet


def test_holds_when_bn_trains_to_the_target_and_tests_at_least_as_well() -> None:
    holds, measured = decide(0.93, 0.95, 0.95, 0.90)
    assert holds
    assert "0.9300" in measured and "+0.00 pp" in measured


@pytest.mark.parametrize(
    ("bn_train", "bn_test", "plain_test"),
    [
        (0.89, 0.95, 0.50),  # training accuracy below the target
        (0.95, 0.80, 0.85),  # tests worse than plain LeNet
    ],
)
def test_does_not_hold(bn_train: float, bn_test: float, plain_test: float) -> None:
    holds, _ = decide(bn_train, bn_test, plain_test, 0.90)
    assert not holds


@pytest.mark.parametrize("batch_norm", [False, True])
def test_lenet_has_a_batch_norm_before_each_sigmoid_or_none(batch_norm: bool) -> None:
    model = lenet(batch_norm=batch_norm, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    assert model(x).shape == (4, 10)
    layers = list(model)
    sigmoids = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Sigmoid)]
    assert len(sigmoids) == 4
    norms = [isinstance(layers[i - 1], (nn.BatchNorm1d, nn.BatchNorm2d)) for i in sigmoids]
    assert norms == [batch_norm] * 4
