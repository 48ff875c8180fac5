"""The reference (normlab.functional) uses nothing outside the Array API standard.

Every op, forward and backward, runs on ``array-api-strict`` arrays, which offer the standard and nothing else,
on its default device and on a second one (``device1``, which refuses any conversion to NumPy, so a NumPy-only
call cannot slip through by converting the array).  The results must be arrays of that library on that device,
of the input's dtype, and equal to the NumPy results within rounding.  The NumPy results themselves are proven
against PyTorch and finite differences elsewhere (tests/functional, tests/nn).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from normlab import functional as F

xs = pytest.importorskip("array_api_strict", reason="array-api-strict is a test dependency")

CPU = xs.Device("CPU_DEVICE")
STRICT_ARRAY = type(xs.asarray(0.0))
DEVICES = [CPU, xs.Device("device1")]
DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}

Arr = Callable[[Any], Any]  # NumPy data -> an array of the library under test
Case = Callable[[Arr, np.random.Generator], tuple[Any, ...]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def data(rng: np.random.Generator, *shape: int, loc: float = 0.0) -> np.ndarray:
    return rng.normal(loc, 1.0, shape)


# ------------------------------------------------------------------------------------ normalization
@case
def batch_norm_train(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w, b = arr(data(rng, 6, 3, 4, 5, loc=50.0)), arr(data(rng, 3)), arr(data(rng, 3))
    y, cache = F.batch_norm_forward(x, w, b)
    return y, cache.mean, cache.var, *F.batch_norm_backward(arr(data(rng, 6, 3, 4, 5)), cache)


@case
def batch_norm_eval(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w, b = arr(data(rng, 6, 3, 4)), arr(data(rng, 3)), arr(data(rng, 3))
    mean, var = arr(data(rng, 3)), arr(rng.uniform(0.5, 2.0, 3))
    y, cache = F.batch_norm_forward(x, w, b, mean, var, training=False)
    return y, *F.batch_norm_backward(arr(data(rng, 6, 3, 4)), cache)


@case
def batch_norm_no_affine_constant_and_nan(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    values = data(rng, 4, 3, 5)
    values[:, 0] = 2.5  # a constant channel with eps=0: normalized to 0
    values[1, 2, 3] = np.nan  # a NaN: its channel's outputs are NaN
    y, cache = F.batch_norm_forward(arr(values), eps=0.0)
    return y, cache.var, *F.batch_norm_backward(arr(data(rng, 4, 3, 5)), cache)


@case
def layer_norm(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w, b = arr(data(rng, 4, 3, 6)), arr(data(rng, 3, 6)), arr(data(rng, 3, 6))
    y, cache = F.layer_norm_forward(x, (3, 6), w, b)
    return y, *F.layer_norm_backward(arr(data(rng, 4, 3, 6)), cache)


@case
def rms_norm(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w = arr(data(rng, 5, 7)), arr(data(rng, 7))
    y, cache = F.rms_norm_forward(x, 7, w)  # eps=None: the dtype's machine epsilon
    y2, cache2 = F.rms_norm_forward(x, 7, None, eps=1e-3)
    dy = arr(data(rng, 5, 7))
    return y, *F.rms_norm_backward(dy, cache), y2, *F.rms_norm_backward(dy, cache2)


@case
def group_norm(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w, b = arr(data(rng, 3, 6, 4, 2)), arr(data(rng, 6)), arr(data(rng, 6))
    y, cache = F.group_norm_forward(x, 3, w, b)
    return y, *F.group_norm_backward(arr(data(rng, 3, 6, 4, 2)), cache)


@case
def instance_norm_train_and_eval(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w, b = arr(data(rng, 3, 2, 5, 4)), arr(data(rng, 2)), arr(data(rng, 2))
    dy = arr(data(rng, 3, 2, 5, 4))
    y, cache = F.instance_norm_forward(x, w, b)
    mean, var = arr(data(rng, 2)), arr(rng.uniform(0.5, 2.0, 2))
    y_eval, cache_eval = F.instance_norm_forward(x, w, b, mean, var, use_input_stats=False)
    return (
        y,
        *F.instance_norm_backward(dy, cache),
        y_eval,
        *F.instance_norm_backward(dy, cache_eval),
    )


@case
def moments_and_running_stats(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    values = data(rng, 4, 3, 5, loc=1e3)
    values[0, 1, 2] = np.inf  # an infinity among the values: its mean is inf, not NaN
    x = arr(values)
    mean, var = F.moments(x, (0, 2))
    mean_k, var_k = F.moments(x, -1, keepdims=True)
    new_mean, new_var = F.update_running_stats(
        arr(data(rng, 3)), arr(np.ones(3)), mean, F.unbiased_variance(var, 20), 0.1
    )
    return mean, var, mean_k, var_k, new_mean, new_var


# ------------------------------------------------------------------------------------ variants
@case
def batch_renorm(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w, b = arr(data(rng, 8, 3, 2)), arr(data(rng, 3)), arr(data(rng, 3))
    moving_mean, moving_std = arr(data(rng, 3)), arr(rng.uniform(0.5, 2.0, 3))
    clipping = F.RenormClipping(r_max=1.5, d_max=0.5)
    y, cache = F.batch_renorm_forward(x, w, b, moving_mean, moving_std, clipping=clipping)
    grads = F.batch_renorm_backward(arr(data(rng, 8, 3, 2)), cache)
    moved = F.update_moving_moments(moving_mean, moving_std, cache.mean, cache.var, 0.1)
    return y, cache.r, cache.d, *grads, *moved


@case
def ghost_batch_norm_and_merged_moments(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w, b = arr(data(rng, 8, 3, 2)), arr(data(rng, 3)), arr(data(rng, 3))
    y, cache = F.ghost_batch_norm_forward(x, w, b, virtual_batch_size=4)
    grads = F.ghost_batch_norm_backward(arr(data(rng, 8, 3, 2)), cache)
    return y, cache.mean, cache.var, *grads


@case
def batch_norm_backward_in_parts(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, dy, w = arr(data(rng, 6, 2, 3)), arr(data(rng, 6, 2, 3)), arr(data(rng, 2))
    mean, var = F.moments(x, (0, 2))
    _, cache = F.batch_norm_forward(x, w, None, mean, var, training=False)
    _, full = F.batch_norm_forward(x, w, None)
    sum_dy, sum_dy_xhat = F.channel_sums(dy, full.xhat)
    grads = F.batch_norm_backward_from_sums(dy, cache, sum_dy, sum_dy_xhat, 18)
    return sum_dy, sum_dy_xhat, *grads


@case
def weight_standardization(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    w_hat, cache = F.weight_standardization_forward(arr(data(rng, 4, 2, 3, 3)))
    return w_hat, F.weight_standardization_backward(arr(data(rng, 4, 2, 3, 3)), cache)


# ------------------------------------------------------------------------------------ other layers
@case
def activations(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, dy = arr(data(rng, 4, 5) * 3), arr(data(rng, 4, 5))
    out: list[Any] = []
    for forward, backward, kwargs in (
        (F.relu_forward, F.relu_backward, {}),
        (F.sigmoid_forward, F.sigmoid_backward, {}),
        (F.tanh_forward, F.tanh_backward, {}),
        (F.gelu_forward, F.gelu_backward, {"approximate": "tanh"}),
        (F.softmax_forward, F.softmax_backward, {"axis": 0}),
    ):
        y, cache = forward(x, **kwargs)
        out += [y, backward(dy, cache)]
    return tuple(out)


@case
def linear(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w, b = arr(data(rng, 2, 3, 5)), arr(data(rng, 4, 5)), arr(data(rng, 4))
    y, cache = F.linear_forward(x, w, b)
    dy = arr(data(rng, 2, 3, 4))
    grads = F.linear_backward(dy, cache)
    y_nobias, cache_nobias = F.linear_forward(x, w)
    return y, *grads, y_nobias, *F.linear_backward(dy, cache_nobias, input_grad=False)


@case
def losses(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    logits, labels = arr(data(rng, 5, 4)), arr(np.array([0, 3, 1, 1, 2]))
    loss, cache = F.cross_entropy_forward(logits, labels, label_smoothing=0.1)
    per_sample, cache_none = F.cross_entropy_forward(logits, labels, reduction="none")
    pred, target = arr(data(rng, 3, 2)), arr(data(rng, 3, 2))
    mse, cache_mse = F.mse_forward(pred, target, reduction="sum")
    return (
        loss,
        F.cross_entropy_backward(1.0, cache),
        per_sample,
        F.cross_entropy_backward(arr(data(rng, 5)), cache_none),
        mse,
        F.mse_backward(2.0, cache_mse),
    )


@case
def dropout_train_and_eval(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, dy = arr(data(rng, 6, 5)), arr(data(rng, 6, 5))
    y, cache = F.dropout_forward(x, 0.3, np.random.default_rng(7))  # one seed, one mask everywhere
    y_eval, cache_eval = F.dropout_forward(x, 0.3, np.random.default_rng(7), training=False)
    return y, F.dropout_backward(dy, cache), y_eval, F.dropout_backward(dy, cache_eval)


@case
def optimizer_updates(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    param, grad = arr(data(rng, 3, 4)), arr(data(rng, 3, 4))
    exp_avg, exp_avg_sq, max_sq = (arr(np.zeros((3, 4))) for _ in range(3))
    for step in (1, 2):
        F.adam_update(
            param, grad, exp_avg, exp_avg_sq, max_sq, step=step, lr=0.1, beta1=0.9,
            beta2=0.99, eps=1e-8, weight_decay=0.01, decoupled=True,
        )  # fmt: skip
    sgd_param = arr(data(rng, 5))
    buffer = None
    for _ in range(2):
        buffer = F.sgd_update(
            sgd_param, arr(data(rng, 5)), buffer, lr=0.1, momentum=0.9,
            dampening=0.0, weight_decay=0.01, nesterov=True,
        )  # fmt: skip
    return param, exp_avg, exp_avg_sq, max_sq, sgd_param, buffer


@case
def conv2d(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    x, w, b = arr(data(rng, 2, 3, 7, 6)), arr(data(rng, 4, 3, 3, 2)), arr(data(rng, 4))
    y, cache = F.conv2d_forward(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    grads = F.conv2d_backward(arr(data(rng, *y.shape)), cache)
    y_plain, cache_plain = F.conv2d_forward(x, w)
    dy = arr(data(rng, *y_plain.shape))
    return y, *grads, y_plain, *F.conv2d_backward(dy, cache_plain, input_grad=False)


@case
def pooling(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    values = data(rng, 2, 3, 7, 6)
    values[0, 0, :2, :2] = 1.0  # a tie in a window: the first maximum takes the gradient
    x = arr(values)
    out: list[Any] = []
    for forward, backward, kwargs in (
        (F.max_pool2d_forward, F.max_pool2d_backward, {"kernel_size": 2}),
        (
            F.max_pool2d_forward,
            F.max_pool2d_backward,
            {"kernel_size": 3, "stride": 2, "padding": 1},
        ),
        (F.avg_pool2d_forward, F.avg_pool2d_backward, {"kernel_size": (3, 2), "padding": (1, 1)}),
        (
            F.avg_pool2d_forward,
            F.avg_pool2d_backward,
            {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
        ),
    ):
        y, cache = forward(x, **kwargs)
        out += [y, backward(arr(data(rng, *y.shape)), cache)]
    return tuple(out)


# ------------------------------------------------------------------------------------ the harness
def _flatten(values: Any) -> list[Any]:
    if isinstance(values, (tuple, list)):
        return [v for item in values for v in _flatten(item)]
    return [values]


def _run(fn: Case, dtype: type, device: Any | None) -> list[Any]:
    """``fn`` on NumPy arrays (``device=None``) or on array-api-strict arrays on ``device``; the same data."""

    def arr(values: Any) -> Any:
        values = np.asarray(values)
        values = values.astype(dtype) if values.dtype.kind == "f" else values
        return values if device is None else xs.asarray(values, device=device)

    return _flatten(fn(arr, np.random.default_rng(0)))


def _check_same(strict_out: list[Any], numpy_out: list[Any], dtype: type, device: Any) -> None:
    """Each strict result is an array-api-strict array on ``device`` with the NumPy result's dtype and
    values (within rounding); scalars are equal floats; ``None`` stays ``None``."""
    assert len(strict_out) == len(numpy_out)
    for i, (got, want) in enumerate(zip(strict_out, numpy_out, strict=True)):
        if want is None:
            assert got is None, f"result {i}: expected None, got {got!r}"
        elif isinstance(want, np.ndarray):
            assert isinstance(got, STRICT_ARRAY), (
                f"result {i}: not an array-api-strict array: {type(got)}"
            )
            assert got.device == device, f"result {i}: on {got.device}, expected {device}"
            assert str(got.dtype).rsplit(".", 1)[-1] == want.dtype.name, f"result {i}: {got.dtype}"
            host = np.asarray(got.to_device(CPU))
            np.testing.assert_allclose(host, want, **TOLERANCE[dtype], err_msg=f"result {i}")
        else:
            assert isinstance(got, float) and isinstance(want, float), f"result {i}: {got!r}"
            np.testing.assert_allclose(got, want, **TOLERANCE[dtype], err_msg=f"result {i}")


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", sorted(CASES))
def test_op_on_strict_arrays_equals_numpy(name: str, dtype: type, device: Any) -> None:
    expected = _run(CASES[name], dtype, None)
    assert any(
        isinstance(v, np.ndarray) for v in expected
    )  # the case computes something to compare
    _check_same(_run(CASES[name], dtype, device), expected, dtype, device)


# ------------------------------------------------------------------------------------ what must fail
def _numpy_only_relu(arr: Arr, rng: np.random.Generator) -> tuple[Any, ...]:
    """ReLU written with a NumPy call: what the harness exists to catch."""
    return (np.maximum(arr(data(rng, 3, 4)), 0),)


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_the_harness_catches_a_numpy_only_call(device: Any) -> None:
    expected = _run(_numpy_only_relu, np.float64, None)
    # on the default device NumPy converts the array and returns an ndarray (the check refuses it); on
    # device1 the conversion itself is refused
    with pytest.raises((AssertionError, RuntimeError)):
        _check_same(_run(_numpy_only_relu, np.float64, device), expected, np.float64, device)


def test_exact_gelu_refuses_other_namespaces_with_a_clear_error() -> None:
    x = xs.asarray(np.linspace(-2, 2, 5))
    with pytest.raises(TypeError, match=r"gelu\(approximate='none'\).*erf.*approximate='tanh'"):
        F.gelu_forward(x)


def test_arrays_of_two_libraries_or_two_devices_are_refused() -> None:
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match=r"[Mm]ultiple namespaces"):
        F.batch_norm_forward(xs.asarray(x), np.ones(3))
    with pytest.raises(ValueError, match="device"):
        F.batch_norm_forward(xs.asarray(x), xs.ones(3, dtype=xs.float64, device=DEVICES[1]))
