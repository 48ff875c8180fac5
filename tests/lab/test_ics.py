"""ics: the noise layer (its statistics, its backward in float64), the verdict both ways, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.gradcheck import check_module_gradients
from normlab import nn
from normlab.lab.experiments.ics import FULL, Probe, ShiftNoise, build, decide, median_movement


def noise(seed: int = 0, **kw) -> ShiftNoise:
    args = {"shift": 1.0, "scale": 3.0, "jitter": 0.5} | kw
    return ShiftNoise(**args, generator=np.random.default_rng(seed))


def test_noise_has_non_zero_mean_non_unit_scale_and_changes_every_step() -> None:
    layer = noise(jitter=0.0)
    x = np.zeros((4, 3))
    first, second = layer(x), layer(x)
    # with x = 0 and no jitter the output is the step's mean, one value per step
    assert np.all(first == first[0, 0]) and np.all(second == second[0, 0])
    assert first[0, 0] != second[0, 0] and -1 <= first[0, 0] <= 1
    ones = np.ones((4, 3))
    # the scale of a step: y(1) - y(0) under the same draw
    layer.frozen = True
    s = layer(ones) - layer(np.zeros((4, 3)))
    assert np.allclose(s, s[0, 0]) and 1 <= s[0, 0] <= 3


def test_noise_is_its_expectation_in_eval_mode() -> None:
    layer = noise(scale=3.0, jitter=0.5).eval()
    x = np.random.default_rng(1).standard_normal((5, 4))
    expected = 2.0 * np.exp(0.125)  # mean of U(1, 3) times the log-normal's mean exp(sigma^2 / 2)
    np.testing.assert_allclose(layer(x), x * expected)
    np.testing.assert_allclose(layer.backward(x), x * expected)
    # the training draws average to it
    train = noise(seed=3, scale=3.0, jitter=0.5)
    factors = np.stack([train.draw((200, 50), np.float64)[0] for _ in range(200)])
    assert factors.mean() == pytest.approx(expected, rel=0.02)


def test_noise_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match=r"ShiftNoise: .*scale >= 1"):
        noise(scale=0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_bn_then_noise_passes_the_float64_gradient_check(seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((6, 4))
    layer = noise(seed)
    model = nn.Sequential(
        nn.BatchNorm1d(4), layer, nn.Linear(4, 3, rng=np.random.default_rng(seed))
    )
    model.double()
    model(x)  # draws the step's noise; frozen, every forward of the check reuses it
    layer.frozen = True
    check_module_gradients(model, x, seed=seed)
    # the analytic input gradient is dy * S, not dy: the check would fail without the factor
    dy = np.random.default_rng(2).standard_normal((6, 4))
    layer(x)
    np.testing.assert_allclose(layer.backward(dy), dy * layer._noise[0])
    assert not np.allclose(layer._noise[0], 1.0)


def test_probe_records_training_batches_only_when_armed() -> None:
    probe = Probe([5, 50, 95])
    x = np.arange(101.0)[:, None]
    probe(x)
    assert probe.last is None
    probe.armed = True
    probe(x)
    assert probe.last == [5.0, 50.0, 95.0] and not probe.armed


@pytest.mark.parametrize("variant", ["plain", "bn", "noisy-bn"])
def test_the_three_networks_share_their_weights(variant: str) -> None:
    model = build(variant, FULL, rng=np.random.default_rng(0), noise_seed=1)
    plain = build("plain", FULL, rng=np.random.default_rng(0), noise_seed=1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for a, b in zip(linears, [m for m in plain.modules() if isinstance(m, nn.Linear)], strict=True):
        np.testing.assert_array_equal(a.weight.data, b.weight.data)
    kinds = [type(m).__name__ for m in model.children()]
    assert kinds.count("ShiftNoise") == (3 if variant == "noisy-bn" else 0)
    assert kinds.count("Probe") == 1


def final(noisy: float, bn: float, plain: float = 0.9) -> dict:
    return {
        "noisy-bn": {"test_accuracy": noisy},
        "bn": {"test_accuracy": bn},
        "plain": {"test_accuracy": plain},
    }


def test_holds_when_noisy_bn_keeps_the_accuracy_despite_more_shift() -> None:
    holds, measured = decide(final(0.955, 0.96), {"noisy-bn": 0.5, "bn": 0.05, "plain": 0.1}, 0.02)
    assert holds and "-0.50 pp" in measured


@pytest.mark.parametrize(
    ("acc", "movement", "why"),
    [
        ((0.90, 0.96), {"noisy-bn": 0.5, "bn": 0.05, "plain": 0.1}, "noise costs accuracy"),
        ((0.96, 0.96), {"noisy-bn": 0.01, "bn": 0.05, "plain": 0.1}, "noise did not shift more"),
    ],
)
def test_does_not_hold(acc, movement, why) -> None:
    holds, _ = decide(final(*acc), movement, 0.02)
    assert not holds, why


def test_median_movement_is_the_std_of_the_median() -> None:
    assert median_movement([{"p50": 1.0}, {"p50": 3.0}]) == pytest.approx(1.0)
    assert median_movement([{"p50": 1.0}]) == 0.0


def test_same_seed_same_numbers(tmp_path) -> None:
    from normlab.lab import run_experiments

    def metrics(seed: int, where: str) -> str:
        summary = run_experiments(["ics"], tmp_path / where, mode="tiny", seed=seed)
        out = summary.out_dir / "ics"
        return (out / "curves.csv").read_text() + (out / "activations.csv").read_text()

    first = metrics(5, "a")
    assert first == metrics(5, "b")
    assert first != metrics(6, "c")
