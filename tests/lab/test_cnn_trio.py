"""The cnn-trio verdict on synthetic accuracies, and the Keras 'same' padding of the deep model."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import nn
from normlab.lab.experiments.cnn_trio import FULL, PadBottomRight, build_model, decide

MARGIN = 0.01


def test_holds_when_bn_helps_one_model_and_not_another() -> None:
    holds, measured = decide({"logistic": 0.002, "wide": 0.03, "deep": -0.05}, MARGIN)
    assert holds
    assert "wide +3.00 pp" in measured and "deep -5.00 pp" in measured


@pytest.mark.parametrize(
    "effects",
    [
        {"logistic": 0.02, "wide": 0.03, "deep": 0.05},  # helps every model
        {
            "logistic": 0.0,
            "wide": -0.03,
            "deep": 0.01,
        },  # helps none (0.01 is not more than the margin)
    ],
)
def test_does_not_hold_when_bn_helps_all_or_none(effects: dict[str, float]) -> None:
    holds, _ = decide(effects, MARGIN)
    assert not holds


def test_pad_bottom_right_then_2x2_conv_is_keras_same_padding() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 5, 5)).astype(np.float32)
    conv = nn.Conv2d(1, 1, 2, bias=False, rng=rng)
    y = conv(PadBottomRight()(x))
    assert y.shape == x.shape
    # TensorFlow's 'same' for an even kernel: output (i, j) sees rows i, i+1 and columns j, j+1,
    # with zeros past the bottom and right edges
    w = conv.weight.data[0, 0]
    padded = np.pad(x[0, 0], ((0, 1), (0, 1)))
    expected = sum(w[a, b] * padded[a : a + 5, b : b + 5] for a in range(2) for b in range(2))
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-5, atol=1e-6)


def test_pad_bottom_right_backward_crops_the_gradient() -> None:
    pad = PadBottomRight()
    x = np.ones((1, 2, 3, 3), np.float32)
    y = pad(x)
    assert y.shape == (1, 2, 4, 4) and y[:, :, 3, :].sum() == 0 and y[:, :, :, 3].sum() == 0
    dy = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    np.testing.assert_array_equal(pad.backward(dy), dy[:, :, :3, :3])


@pytest.mark.parametrize("kind", ["logistic", "wide", "deep"])
@pytest.mark.parametrize("input_bn", [False, True])
def test_models_map_mnist_images_to_ten_logits(kind: str, input_bn: bool) -> None:
    model = build_model(kind, input_bn, FULL, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    assert model(x).shape == (3, 10)
    assert isinstance(model[0], nn.BatchNorm2d) == input_bn
