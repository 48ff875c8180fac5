"""init-scale: the verdict both ways, the source's eps, the variance probe and where BN stops rescuing."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import nn
from normlab.config import mlp
from normlab.lab.experiments.init_scale import (
    FULL,
    decide,
    eps_finding,
    first_bn_input_variance,
    rescue_limit,
    with_eps,
)


def test_the_published_run_uses_the_source_eps() -> None:
    assert FULL["eps"] == 1e-6 and 1e-5 in FULL["eps_sweep"] and 1e-6 in FULL["eps_sweep"]
    model = with_eps(mlp([4, 3, 3, 2], norm="bn", rng=np.random.default_rng(0)), 1e-6)
    assert [m.eps for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == [1e-6, 1e-6]


def test_holds_when_bn_learns_at_more_scales() -> None:
    holds, measured, wins, learns = decide(
        np.array([0.9, 0.1, 0.1, 0.1]), np.array([0.9, 0.9, 0.8, 0.4]), 0.5
    )
    assert holds and wins == 4 and learns == {"batch norm": 3, "plain": 1}
    assert "4 of 4 scales" in measured


@pytest.mark.parametrize(
    ("plain", "bn", "why"),
    [
        ([0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9], "plain learns everywhere too"),
        ([0.9, 0.6, 0.1, 0.1], [0.8, 0.5, 0.6, 0.1], "BN worse at half the scales"),
    ],
)
def test_does_not_hold(plain, bn, why) -> None:
    holds, *_ = decide(np.array(plain), np.array(bn), 0.5)
    assert not holds, why


def test_first_bn_input_variance_scales_with_the_weight_variance() -> None:
    x = np.random.default_rng(1).random((200, 20), dtype=np.float32)
    v1 = first_bn_input_variance(
        mlp([20, 30, 2], norm="bn", weight_std=1.0, rng=np.random.default_rng(2)), x
    )
    v2 = first_bn_input_variance(
        mlp([20, 30, 2], norm="bn", weight_std=0.1, rng=np.random.default_rng(2)), x
    )
    assert v2 == pytest.approx(v1 / 100, rel=1e-4)  # the same weights times 0.1: variance / 100
    with pytest.raises(ValueError, match="no BatchNorm1d"):
        first_bn_input_variance(mlp([20, 2], rng=np.random.default_rng(2)), x)


def test_rescue_limit_walks_down_from_the_largest_scale() -> None:
    scales = [1.0, 0.1, 0.01, 0.001]
    assert (
        rescue_limit(scales, [0.9, 0.9, 0.2, 0.9], 0.5) == 0.1
    )  # a lucky small scale does not count
    assert rescue_limit(scales, [0.9, 0.9, 0.9, 0.9], 0.5) == 0.001
    assert rescue_limit(scales, [0.1, 0.9, 0.9, 0.9], 0.5) is None


def test_the_finding_states_the_numbers() -> None:
    scales, variances = [1.0, 0.1, 0.01], [10.0, 0.1, 0.001]
    text = eps_finding({1e-5: 0.1, 1e-3: None}, scales, variances, 0.5)
    assert "eps 1e-05: BN learns (>= 50%) down to w = 1.00e-01" in text
    assert "input variance is 0.1 (1e+04 x eps)" in text and "1.00e-02 (variance 0.001)" in text
    assert "eps 0.001: BN does not reach 50%" in text
