"""renorm: the non-i.i.d. batches, the scaled warm-up, the verdict both ways, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from normlab.lab.experiments.renorm import FULL, ClassPairBatches, build, decide, schedule


def labels(per_class: int = 40, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(classes), per_class)
    x = np.arange(len(y), dtype=np.float32)[:, None]  # x holds each sample's index
    return x, y


def test_each_batch_holds_two_classes_of_sixteen_and_no_sample_twice() -> None:
    x, y = labels()
    batches = ClassPairBatches(x, y, classes=2, per_class=16, seed=0)
    seen: list[int] = []
    for xb, yb in batches:
        values, counts = np.unique(yb, return_counts=True)
        assert len(values) == 2 and list(counts) == [16, 16]
        seen += [int(v) for v in xb[:, 0]]
        np.testing.assert_array_equal(y[xb[:, 0].astype(int)], yb)
    assert len(seen) == len(set(seen))
    # 5 classes x 2 full chunks of 16 = 10 chunks: 5 batches, at most one chunk left unpaired
    assert len(batches) >= 4 and len(seen) == 32 * len(batches)


def test_batches_follow_the_seed_and_the_epoch() -> None:
    x, y = labels()

    def order(seed: int, epoch: int) -> list[float]:
        b = ClassPairBatches(x, y, classes=2, per_class=16, seed=seed)
        b.set_epoch(epoch)
        return [float(v) for xb, _ in b for v in xb[:, 0]]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_too_few_classes_is_an_error() -> None:
    x, y = labels(classes=1)
    with pytest.raises(ValueError, match="ClassPairBatches: need at least 2 classes, got 1"):
        ClassPairBatches(x, y, classes=2, per_class=16)


def test_the_warm_up_scales_with_the_run() -> None:
    s = schedule(FULL, 1000)
    assert (s.warmup, s.d_max_steps, s.r_max_steps) == (50, 250, 400)
    assert s.at(0).r_max == 1 and s.at(0).d_max == 0  # batch norm first
    assert s.at(1000).r_max == pytest.approx(3) and s.at(1000).d_max == pytest.approx(5)


@pytest.mark.parametrize("norm", ["bn", "renorm", "gn"])
def test_the_networks(norm: str) -> None:
    model = build(norm, FULL, 100, rng=np.random.default_rng(0))
    assert model(np.random.default_rng(1).random((4, 784), dtype=np.float32)).shape == (4, 10)


def accuracy(small: tuple[float, float], noniid: tuple[float, float], ref: float = 0.95) -> dict:
    return {
        "iid": {"bn": ref, "renorm": ref, "gn": 0.94},
        "small": {"bn": small[0], "renorm": small[1], "gn": 0.94},
        "noniid": {"bn": noniid[0], "renorm": noniid[1], "gn": 0.94},
    }


def test_holds_on_the_paper_shaped_outcome() -> None:
    holds, measured, passes = decide(accuracy((0.90, 0.94), (0.60, 0.945)), 0.02)
    assert holds and passes == {"small": True, "noniid": True} and "passes" in measured


@pytest.mark.parametrize(
    ("small", "noniid", "why"),
    [
        ((0.90, 0.94), (0.60, 0.80), "renorm better than BN but far from the reference"),
        ((0.95, 0.94), (0.60, 0.945), "BN is not worse at batch 4"),
        ((0.90, 0.94), (0.95, 0.945), "BN does not suffer from non-i.i.d. batches"),
    ],
)
def test_does_not_hold(small, noniid, why) -> None:
    holds, measured, _ = decide(accuracy(small, noniid), 0.02)
    assert not holds, why
    assert "fails" in measured


def test_same_seed_same_numbers(tmp_path) -> None:
    from normlab.lab import run_experiments

    def metrics(seed: int, where: str) -> str:
        summary = run_experiments(["renorm"], tmp_path / where, mode="tiny", seed=seed)
        return (summary.out_dir / "renorm" / "test_accuracy.csv").read_text()

    first = metrics(5, "a")
    assert first == metrics(5, "b")
    assert first != metrics(6, "c")


def test_too_few_images_for_a_non_iid_batch_is_an_error() -> None:
    from normlab.lab.experiments.renorm import batches_for

    x, y = labels(per_class=5)
    with pytest.raises(
        ValueError, match=r"renorm: no non-i\.i\.d\. batch of 2 classes x 16 can be formed"
    ):
        batches_for("noniid", x, y, FULL, seed=0)
