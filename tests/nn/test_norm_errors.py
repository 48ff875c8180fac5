"""Bad input gets a clear error naming the layer and what was expected; edge cases behave as documented."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from normlab import functional as F
from normlab import nn


def _x(*shape, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).normal(1.0, 2.0, size=shape).astype(dtype)


@pytest.mark.parametrize(
    "layer, x, message",
    [
        (
            nn.BatchNorm1d(3),
            _x(2, 3, 4, 5),
            r"BatchNorm1d\(3\): expected 2-D input \(N, C\) or 3-D .* got 4-D",
        ),
        (
            nn.BatchNorm2d(3),
            _x(2, 3, 4),
            r"BatchNorm2d\(3\): expected 4-D input \(N, C, H, W\), got 3-D",
        ),
        (nn.BatchNorm3d(3), _x(2, 3, 4, 4), r"BatchNorm3d\(3\): expected 5-D"),
        (nn.InstanceNorm2d(3), _x(2, 3), r"InstanceNorm2d\(3\): expected 4-D"),
        (
            nn.LayerNorm(5),
            _x(2, 4),
            r"LayerNorm\(\(5,\)\): expected input whose trailing dimensions are",
        ),
        (
            nn.RMSNorm((2, 5)),
            _x(5),
            r"RMSNorm\(\(2, 5\)\): expected input whose trailing",
        ),
        (
            nn.GroupNorm(2, 4),
            _x(4),
            r"GroupNorm\(2, 4\): expected input \(N, C, \*\)",
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None,
)
def test_wrong_rank_or_shape(layer, x, message) -> None:
    with pytest.raises(ValueError, match=message):
        layer(x)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.BatchNorm1d(3), (4, 5)),
        (nn.BatchNorm2d(3), (4, 2, 3, 3)),
        (nn.InstanceNorm1d(3, affine=True), (2, 4, 6)),
        (nn.GroupNorm(2, 4), (2, 6, 3)),
    ],
)
def test_wrong_channel_count_names_expected_and_received(layer, shape) -> None:
    expected = layer.num_features if hasattr(layer, "num_features") else layer.num_channels
    with pytest.raises(ValueError, match=rf"expected {expected} channels at dim 1, got {shape[1]}"):
        layer(_x(*shape))


def test_group_count_must_divide_channels_at_construction() -> None:
    with pytest.raises(
        ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"
    ):
        nn.GroupNorm(4, 6)


@pytest.mark.parametrize(
    "layer, x, message",
    [
        (nn.BatchNorm1d(3), _x(1, 3), r"BatchNorm1d\(3\): expected more than 1 value per channel"),
        (
            nn.BatchNorm2d(3),
            _x(1, 3, 1, 1),
            r"BatchNorm2d\(3\): expected more than 1 value per channel",
        ),
        (
            nn.InstanceNorm1d(3),
            _x(4, 3, 1),
            r"InstanceNorm1d\(3\): expected more than 1 spatial value",
        ),
        (nn.GroupNorm(3, 3), _x(4, 3), r"GroupNorm\(3, 3\): each group holds a single value"),
    ],
)
def test_degenerate_statistics_are_refused(layer, x, message) -> None:
    with pytest.raises(ValueError, match=message):
        layer(x)


def test_one_sample_is_fine_in_eval_mode() -> None:
    bn = nn.BatchNorm1d(3).eval()
    assert bn(_x(1, 3)).shape == (1, 3)


def test_layer_norm_over_one_value_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="single value"):
        nn.LayerNorm(1)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_, np.complex128])
@pytest.mark.parametrize(
    "layer", [nn.BatchNorm1d(3), nn.LayerNorm(3), nn.GroupNorm(1, 3), nn.RMSNorm(3)]
)
def test_non_float_input_is_a_type_error(layer, dtype) -> None:
    with pytest.raises(
        TypeError, match=rf"{type(layer).__name__}.*floating-point input.*got dtype"
    ):
        layer(np.ones((4, 3), dtype=dtype))


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf"), "1e-5"])
@pytest.mark.parametrize(
    "build",
    [
        lambda eps: nn.BatchNorm1d(3, eps=eps),
        lambda eps: nn.LayerNorm(3, eps=eps),
        lambda eps: nn.GroupNorm(1, 3, eps=eps),
        lambda eps: nn.InstanceNorm1d(3, eps=eps),
        lambda eps: nn.RMSNorm(3, eps=eps),
    ],
)
def test_bad_eps(build, eps) -> None:
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        build(eps)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan"), True])
def test_momentum_outside_unit_interval(momentum) -> None:
    with pytest.raises(ValueError, match=r"BatchNorm2d: momentum must be in \[0, 1\] or None"):
        nn.BatchNorm2d(3, momentum=momentum)


def test_bad_running_var_option() -> None:
    with pytest.raises(ValueError, match="running_var must be 'unbiased' or 'biased'"):
        nn.BatchNorm1d(3, running_var="population")


@pytest.mark.parametrize("num_features", [0, -2, 2.5, "3"])
def test_bad_num_features(num_features) -> None:
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        nn.BatchNorm1d(num_features)


def test_zero_variance_with_zero_eps_outputs_the_bias() -> None:
    bn = nn.BatchNorm1d(3, eps=0.0)
    bn.bias.data = np.float32([1.0, -2.0, 0.5])
    x = np.tile(np.float32([[0.1, 7.3, -1e4]]), (5, 1))  # every channel constant
    y = bn(x)
    np.testing.assert_array_equal(y, np.tile(bn.bias.data, (5, 1)))
    dx = bn.backward(np.ones_like(y))
    assert np.all(np.isfinite(dx))
    for layer, shape in [
        (nn.LayerNorm(4, eps=0.0), (2, 4)),
        (nn.GroupNorm(2, 4, eps=0.0), (2, 4, 3)),
    ]:
        out = layer(np.full(shape, 3.25, np.float32))
        assert np.all(out == 0.0), type(layer).__name__  # bias is 0 at init


def test_empty_batch_returns_empty_output_and_changes_no_buffer() -> None:
    bn = nn.BatchNorm2d(3)
    before = {k: v.copy() for k, v in bn.state_dict().items()}
    y = bn(np.zeros((0, 3, 4, 4), np.float32))
    assert y.shape == (0, 3, 4, 4) and y.dtype == np.float32
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    dx = bn.backward(np.zeros_like(y))
    assert dx.shape == y.shape
    np.testing.assert_array_equal(bn.weight.grad, 0)
    assert nn.LayerNorm(4)(np.zeros((0, 4), np.float32)).shape == (0, 4)
    assert nn.InstanceNorm1d(2, track_running_stats=True)(
        np.zeros((0, 2, 5), np.float32)
    ).shape == (0, 2, 5)


def test_nan_propagates_to_the_output_but_not_into_running_statistics() -> None:
    bn = nn.BatchNorm1d(3)
    bn(_x(8, 3))
    before = {k: v.copy() for k, v in bn.state_dict().items()}
    x = _x(8, 3)
    x[2, 1] = np.nan
    with pytest.warns(
        RuntimeWarning, match=r"BatchNorm1d\(3\): batch statistics are not finite in channel"
    ):
        y = bn(x)
    assert np.all(np.isnan(y[:, 1]))
    assert np.all(np.isfinite(y[:, [0, 2]]))
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    bn.eval()  # eval mode: NaN stays where it was, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = bn(x)
    assert np.isnan(y[2, 1]) and np.isfinite(np.delete(y.reshape(-1), 2 * 3 + 1)).all()


def test_backward_needs_a_forward_and_a_matching_gradient() -> None:
    bn = nn.BatchNorm1d(3)
    with pytest.raises(
        RuntimeError, match=r"BatchNorm1d\(3\): backward needs a forward pass first"
    ):
        bn.backward(np.ones((4, 3), np.float32))
    bn(_x(4, 3))
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(4, 3\).*got \(4, 2\)"):
        bn.backward(np.ones((4, 2), np.float32))
    bn.backward(np.ones((4, 3), np.float32))
    with pytest.raises(RuntimeError, match="backward needs a forward pass first"):
        bn.backward(np.ones((4, 3), np.float32))


def test_no_grad_keeps_no_cache() -> None:
    import normlab as nl

    bn = nn.BatchNorm1d(3)
    with nl.no_grad():
        bn(_x(4, 3))
    with pytest.raises(RuntimeError, match="no_grad"):
        bn.backward(np.ones((4, 3), np.float32))


def test_functional_eval_mode_needs_running_statistics() -> None:
    with pytest.raises(ValueError, match="training=False needs running_mean and running_var"):
        F.batch_norm_forward(_x(4, 3), training=False)
