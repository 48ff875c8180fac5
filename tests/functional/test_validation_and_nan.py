"""Issue 10, items 4, 5, 7, 8: the norm ops validate their arguments (one check, in
``normlab.functional.checks``), every path follows one NaN rule, overflowing statistics are reported the
same way by every norm layer, and messages name the op or layer, the argument and the value received.

Each test here failed before the fix (the comment above each says how).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from helpers.parity import TORCH_NORMS, assert_parity
from normlab import functional as F
from normlab import kernels, nn

RNG = np.random.default_rng(10)
X2 = RNG.normal(size=(4, 3))
X3 = RNG.normal(size=(4, 6, 5))


@pytest.fixture(params=["reference", "numba"])
def path(request):
    previous = kernels.backend().name
    kernels.use(request.param)
    yield request.param
    kernels.use(previous)


# ------------------------------------------------------------------------------ item 4: functional ops validate
BAD_CALLS = {
    # before: zeros
    "batch_norm eps=nan": (
        lambda: F.batch_norm_forward(X2, eps=np.nan),
        ValueError,
        "batch_norm: eps",
    ),
    # before: accepted, output distorted
    "batch_norm eps<0": (lambda: F.batch_norm_forward(X2, eps=-0.5), ValueError, "batch_norm: eps"),
    "rms_norm eps<0": (lambda: F.rms_norm_forward(X2, (3,), eps=-0.5), ValueError, "rms_norm: eps"),
    "layer_norm eps=inf": (
        lambda: F.layer_norm_forward(X2, 3, eps=np.inf),
        ValueError,
        "layer_norm: eps",
    ),
    "group_norm eps<0": (
        lambda: F.group_norm_forward(X3, 2, eps=-1.0),
        ValueError,
        "group_norm: eps",
    ),
    "instance_norm eps=True": (
        lambda: F.instance_norm_forward(X3, eps=True),
        ValueError,
        "instance_norm: eps",
    ),
    # before: zeros
    "layer_norm ()": (
        lambda: F.layer_norm_forward(X2, ()),
        ValueError,
        "layer_norm: normalized_shape",
    ),
    # before: silently axis 0
    "moments axes=2": (lambda: F.moments(X2, axes=2), ValueError, "moments: axes"),
    "moments axes=(0,0)": (lambda: F.moments(X2, axes=(0, 0)), ValueError, "moments: axes"),
    # before: broadcast
    "update_running_stats (1,)": (
        lambda: F.update_running_stats(np.zeros(3), np.ones(3), np.zeros(1), np.ones(3), 0.1),
        ValueError,
        "update_running_stats: expected batch_mean of shape (3,), got (1,)",
    ),
    "update_running_stats factor": (
        lambda: F.update_running_stats(np.zeros(3), np.ones(3), np.zeros(3), np.ones(3), 1.5),
        ValueError,
        "update_running_stats: factor",
    ),
    # before: ZeroDivisionError
    "group_norm 0": (lambda: F.group_norm_forward(X3, 0), ValueError, "group_norm: num_groups"),
    # before: an error in the reference, 1 group in the kernel
    "group_norm True": (
        lambda: F.group_norm_forward(X3, True),
        ValueError,
        "group_norm: num_groups",
    ),
    "group_norm 2.0": (lambda: F.group_norm_forward(X3, 2.0), ValueError, "group_norm: num_groups"),
    # before: a numpy reshape error naming nothing
    "batch_norm weight shape": (
        lambda: F.batch_norm_forward(X2, np.ones(4)),
        ValueError,
        "batch_norm: expected weight of shape (3,), got (4,)",
    ),
    "layer_norm bias shape": (
        lambda: F.layer_norm_forward(X2, 3, None, np.ones(2)),
        ValueError,
        "layer_norm: expected bias of shape (3,)",
    ),
    "batch_norm running_var shape": (
        lambda: F.batch_norm_forward(X2, None, None, np.zeros(3), np.ones(2), training=False),
        ValueError,
        "batch_norm: expected running_var of shape (3,), got (2,)",
    ),
    "batch_norm running_mean int": (
        lambda: F.batch_norm_forward(X2, None, None, np.zeros(3, int), np.ones(3), training=False),
        TypeError,
        "batch_norm: expected a floating-point running_mean",
    ),
    # variants: eps reaches the batch norm underneath
    "ghost eps": (
        lambda: F.ghost_batch_norm_forward(X2, None, None, virtual_batch_size=2, eps=-1.0),
        ValueError,
        "ghost_batch_norm: eps",
    ),
    "weight_standardization eps": (
        lambda: F.weight_standardization_forward(X3, eps=np.nan),
        ValueError,
        "weight_standardization: eps must be a finite number",
    ),
    "batch_renorm eps": (
        lambda: F.batch_renorm_forward(
            X2, None, None, np.zeros(3), np.ones(3), clipping=F.RenormClipping(), eps=-1.0
        ),
        ValueError,
        "batch_renorm: eps",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_bad_arguments_raise_naming_the_op(case):
    call, error, message = BAD_CALLS[case]
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize(
    "op", ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm"]
)
def test_backward_with_a_wrong_cache_names_the_op(op):
    # before: AttributeError: 'NoneType' object has no attribute 'input_shape'
    backward = getattr(F, f"{op}_backward")
    for cache in (None, "cache", (1, 2)):
        with pytest.raises(
            TypeError, match=f"{op}_backward: expected the cache the forward returned"
        ):
            backward(X2, cache)


def test_layer_norm_accepts_an_int_as_pytorch():
    # before: "object of type 'int' has no len()"
    y, _ = F.layer_norm_forward(X2, 3)
    expected = torch.nn.functional.layer_norm(torch.from_numpy(X2), (3,))
    assert_parity(y, expected, TORCH_NORMS, "layer_norm(x, 3)")
    y, _ = F.rms_norm_forward(X2, 3)
    expected = torch.nn.functional.rms_norm(torch.from_numpy(X2), (3,))
    assert_parity(y, expected, TORCH_NORMS, "rms_norm(x, 3)")


def test_group_norm_layer_refuses_bool_groups(path):
    # the kernel used to run num_groups=True as 1 group; the layer refuses it before dispatch
    with pytest.raises(
        ValueError, match="GroupNorm: num_groups must be a positive integer, got True"
    ):
        nn.GroupNorm(True, 3)


# ------------------------------------------------------------------------------ item 8: constructor messages
@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: nn.BatchNorm1d(3, dtype=np.int32),
            "BatchNorm1d: dtype must be float16, float32 or float64",
        ),
        (lambda: nn.InstanceNorm2d(3, dtype="int64"), "InstanceNorm2d: dtype"),
        (lambda: nn.LayerNorm(3, dtype=bool), "LayerNorm: dtype"),
        (lambda: nn.GroupNorm(1, 3, dtype="nonsense"), "GroupNorm: dtype"),
        (lambda: nn.RMSNorm(3, elementwise_affine=False, dtype=np.int8), "RMSNorm: dtype"),
        (
            lambda: nn.LayerNorm(2.5),
            "LayerNorm: normalized_shape must be an int or a sequence of ints, got 2.5",
        ),
        (lambda: nn.RMSNorm("ab"), "RMSNorm: normalized_shape"),
        (
            lambda: nn.LayerNorm((2, 0)),
            "LayerNorm: normalized_shape must be one or more positive integers",
        ),
    ],
)
def test_constructor_errors_name_the_layer(make, message):
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    assert message in str(info.value)


# ------------------------------------------------------------------------------ item 5: one NaN rule vs PyTorch
def _torch_pair(name: str):
    """(normlab layer, torch layer, input shape) for each norm, float64, training mode."""
    if name == "BatchNorm1d":
        return (
            nn.BatchNorm1d(6, dtype=np.float64),
            torch.nn.BatchNorm1d(6, dtype=torch.float64),
            (4, 6, 5),
        )
    if name == "InstanceNorm1d":
        return (
            nn.InstanceNorm1d(6, dtype=np.float64),
            torch.nn.InstanceNorm1d(6, dtype=torch.float64),
            (4, 6, 5),
        )
    if name == "GroupNorm":
        return (
            nn.GroupNorm(3, 6, dtype=np.float64),
            torch.nn.GroupNorm(3, 6, dtype=torch.float64),
            (4, 6, 5),
        )
    if name == "LayerNorm":
        return nn.LayerNorm(6, dtype=np.float64), torch.nn.LayerNorm(6, dtype=torch.float64), (4, 6)
    return nn.RMSNorm(6, dtype=np.float64), torch.nn.RMSNorm(6, dtype=torch.float64), (4, 6)


NORMS = ["BatchNorm1d", "InstanceNorm1d", "GroupNorm", "LayerNorm", "RMSNorm"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("place", ["first", "middle", "last"])
@pytest.mark.parametrize("norm", NORMS)
def test_non_finite_input_makes_its_group_nan_as_pytorch(norm, place, bad, path):
    # before: RMSNorm on [1, nan, 2] gave [0, nan, 0] (reference and numba); with the NaN first the numba
    # kernel gave all NaN and the reference [nan, 0, 0]
    layer, reference, shape = _torch_pair(norm)
    x = np.random.default_rng(5).normal(size=shape)
    index = {"first": 0, "middle": x.size // 2 + 1, "last": x.size - 1}[place]
    x.flat[index] = bad
    with pytest.warns(RuntimeWarning, match=norm):
        y = layer(x)
    expected = reference(torch.from_numpy(x))
    if norm == "RMSNorm" and np.isinf(bad):
        # the one place normlab differs on purpose: PyTorch's RMS norm divides by sqrt(inf) and gives 0 for
        # the row's finite values (inf * 0 = NaN for the inf itself); here a non-finite statistic makes the
        # whole row NaN, as an overflowing mean square does (item 7)
        row = index // shape[-1]
        expected = expected.clone()
        expected[row] = float("nan")
    np.testing.assert_array_equal(np.isnan(y), torch.isnan(expected).numpy(), err_msg="NaN places")
    assert_parity(y, expected, TORCH_NORMS, f"{norm} {place} {bad}")
    assert np.isnan(y).any()


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm"])
def test_functional_reference_and_kernel_agree_on_nan(op):
    from normlab.kernels import norm as K

    x = np.array([[np.nan, 1.0, 2.0], [1.0, np.nan, 2.0], [1.0, 2.0, 3.0]])
    y_ref, _ = getattr(F, f"{op}_forward")(x, (3,))
    y_kernel, _ = getattr(K, f"{op}_forward")(x, (3,))
    expected = getattr(torch.nn.functional, op)(torch.from_numpy(x), (3,))
    for y in (y_ref, y_kernel):
        assert np.isnan(y[:2]).all() and np.isfinite(y[2]).all()
        assert_parity(y, expected, TORCH_NORMS, op)


# ------------------------------------------------------------------------------ item 7: overflowing statistics
@pytest.mark.parametrize("norm", NORMS)
def test_overflowing_variance_gives_nan_and_a_warning_naming_the_layer(norm, path):
    # before: LayerNorm/GroupNorm/RMSNorm returned the bias (zeros) with no warning
    layer, _, shape = _torch_pair(norm)
    x = np.random.default_rng(7).normal(size=shape) * 1e250
    before = {k: np.copy(v) for k, v in layer.state_dict().items()}
    with pytest.warns(RuntimeWarning, match=rf"{norm}.*not finite"):
        y = layer(x)
    assert np.isnan(y).all()
    for key, value in layer.state_dict().items():  # no running statistics learnt from it
        np.testing.assert_array_equal(value, before[key], err_msg=key)


@pytest.mark.parametrize("norm", NORMS)
def test_finite_large_inputs_stay_finite_and_quiet(norm, path):
    # 1e150: the variance (1e300) is finite, so the output is the usual one, without a warning
    layer, reference, shape = _torch_pair(norm)
    x = np.random.default_rng(8).normal(size=shape) * 1e150
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer(x)
    assert_parity(y, reference(torch.from_numpy(x)), TORCH_NORMS, norm)
