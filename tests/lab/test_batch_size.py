"""The batch-size verdict, on synthetic validation errors for both outcomes."""

from __future__ import annotations

import pytest

from normlab.lab.experiments.batch_size import (
    FULL,
    PUBLISHED_BATCH_SIZES,
    PUBLISHED_ERROR,
    decide,
    degradation,
    small_cnn,
    small_mlp,
)

MARGIN = 0.01


def errors(values: list[float], batch_sizes=(2, 8, 32)) -> dict[int, float]:
    return dict(zip(batch_sizes, values, strict=True))


def test_degradation_is_the_smallest_batch_against_the_best() -> None:
    assert degradation(errors([0.10, 0.05, 0.20])) == pytest.approx(0.05)
    assert degradation(errors([0.04, 0.05, 0.20])) == 0.0  # best at the smallest batch


def test_holds_on_wu_and_he_published_numbers() -> None:
    def published(norm: str) -> dict[int, float]:
        return {
            b: e / 100 for b, e in zip(PUBLISHED_BATCH_SIZES, PUBLISHED_ERROR[norm], strict=True)
        }

    holds, measured = decide(published("bn"), published("gn"), MARGIN)
    assert holds
    assert "34.70 %" in measured and "+11.10 pp" in measured


def test_holds_when_only_bn_degrades() -> None:
    holds, _ = decide(errors([0.08, 0.03, 0.04]), errors([0.035, 0.03, 0.04]), MARGIN)
    assert holds


@pytest.mark.parametrize(
    ("bn", "gn", "why"),
    [
        ([0.03, 0.03, 0.04], [0.03, 0.03, 0.04], "neither degrades"),
        ([0.08, 0.03, 0.04], [0.075, 0.03, 0.04], "both degrade alike"),
        ([0.08, 0.03, 0.04], [0.05, 0.03, 0.04], "GN degrades by more than the margin"),
        ([0.035, 0.03, 0.30], [0.03, 0.03, 0.10], "undertrained large batches are not degradation"),
        ([0.03, 0.03, 0.04], [0.09, 0.03, 0.04], "GN degrades, BN does not"),
    ],
)
def test_does_not_hold(bn: list[float], gn: list[float], why: str) -> None:
    holds, measured = decide(errors(bn), errors(gn), MARGIN)
    assert not holds, why
    assert "BN" in measured and "GN" in measured


@pytest.mark.parametrize("norm", ["none", "bn", "gn", "ln", "renorm", "ghost"])
def test_small_mlp_maps_flat_images_to_ten_logits(norm: str) -> None:
    import numpy as np

    from normlab import nn

    model = small_mlp(norm, FULL, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).random((4, 784), dtype=np.float32)
    assert model(x).shape == (4, 10)
    kinds = {type(m).__name__ for m in model.modules()}
    expected = {
        "none": None,
        "bn": "BatchNorm1d",
        "gn": "GroupNorm",
        "ln": "LayerNorm",
        "renorm": "BatchRenorm1d",
        "ghost": "BatchNorm1d",
    }[norm]
    assert expected is None or expected in kinds
    if norm == "ghost":
        assert {m.virtual_batch_size for m in model.modules() if isinstance(m, nn.BatchNorm1d)} == {
            2
        }


def test_the_cnn_with_weight_standardization_uses_wsconv2d() -> None:
    import numpy as np

    kinds = [type(m).__name__ for m in small_cnn("gn-ws", [8, 16], 4, rng=np.random.default_rng(0))]
    assert kinds.count("WSConv2d") == 2 and kinds.count("GroupNorm") == 2


@pytest.mark.parametrize("norm", ["none", "bn", "gn", "ln", "in", "renorm", "gn-ws", "ghost"])
def test_small_cnn_maps_mnist_images_to_ten_logits(norm: str) -> None:
    import numpy as np

    model = small_cnn(norm, [8, 16], 4, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    assert model(x).shape == (2, 10)


def test_same_seed_same_numbers(tmp_path) -> None:
    from normlab.lab import run_experiments

    def metrics(seed: int, where: str) -> str:
        summary = run_experiments(["batch-size"], tmp_path / where, mode="tiny", seed=seed)
        return (summary.out_dir / "batch-size" / "val_error.csv").read_text()

    first = metrics(5, "a")
    assert first == metrics(5, "b")
    assert first != metrics(6, "c")
