"""The CUDA kernels under numba-cuda's simulator, against the NumPy reference.

Not collected by a plain ``pytest`` run (the file name does not start with ``test_``): test_simulator.py
runs it in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``, which numba-cuda reads once per process, so the
simulator never leaks into the worker that runs the other tests.  By hand::

    NUMBA_ENABLE_CUDASIM=1 PYTHONPATH=src python -m pytest tests/gpu/sim_kernels.py -q -p no:xdist

Launch sizes are tiny (8 threads, 4x2 tiles, 6 blocks per reduction, 3 elementwise blocks) so that every
shape below spans several slices per channel and every grid-stride loop turns more than once, and none of
the shapes divides the block size.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu.cuda_cases import (
    Device,
    check_batch_norm,
    check_bfloat16,
    check_row_norm,
    directional_gradient_error,
)
from normlab import functional as F
from normlab.kernels import cuda as K

if not K.simulator():
    pytest.skip(
        "simulator tests: run with NUMBA_ENABLE_CUDASIM=1 (tests/gpu/test_simulator.py does)",
        allow_module_level=True,
    )

K.configure(threads=8, tile_x=4, tile_y=2, target_blocks=6, max_elementwise_blocks=3)
SIM = Device(put=np.array, get=np.asarray)  # put copies: the kernels must not depend on aliasing

BN_SHAPES = {"nchw": (2, 3, 3, 7), "channels_last": (2, 5, 3, 3), "bn1d": (13, 5)}


@pytest.mark.parametrize(
    "layout, dtype",
    [
        (layout, dtype)
        for layout in ("nchw", "channels_last", "bn1d")
        for dtype in ("float32", "float64", "float16")
        if (layout, dtype) != ("bn1d", "float16")  # same row kernels as channels-last float16
    ],
)
def test_batch_norm_training(layout, dtype):
    check_batch_norm(SIM, BN_SHAPES[layout], dtype, "nchw" if layout == "bn1d" else layout)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "bn1d"])
def test_batch_norm_eval(layout):
    shape = BN_SHAPES[layout]
    check_batch_norm(SIM, shape, "float32", "nchw" if layout == "bn1d" else layout, training=False)


def test_batch_norm_eval_float64():
    check_batch_norm(SIM, BN_SHAPES["nchw"], "float64", training=False)


def test_batch_norm_without_affine():
    check_batch_norm(SIM, BN_SHAPES["nchw"], "float32", affine=False, seed=3)


def test_batch_norm_single_slice_and_one_value_per_slice():
    """Extremes of the slicing: a channel shorter than a block, and the biggest channel count."""
    check_batch_norm(SIM, (1, 2, 1, 3), "float64")
    check_batch_norm(SIM, (12, 2, 3, 1), "float64")  # planes shorter than a block: n steps by 2
    check_batch_norm(SIM, (2, 9, 1, 1), "float64", "channels_last")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "op, shape, groups",
    [
        ("layer", (3, 2, 3, 7), 1),
        ("rms", (3, 2, 19), 1),
        ("group", (2, 4, 3, 5), 2),
        ("instance", (2, 3, 3, 7), 1),
    ],
)
def test_row_norms(op, shape, groups, dtype):
    check_row_norm(SIM, op, shape, dtype, groups=groups)


@pytest.mark.parametrize("op, shape, groups", [("layer", (3, 2, 3, 7), 1), ("group", (2, 6, 5), 3)])
def test_row_norms_float16(op, shape, groups):
    check_row_norm(SIM, op, shape, "float16", groups=groups)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_instance_norm_running_stats(dtype):
    check_row_norm(SIM, "instance", (2, 3, 2, 5), dtype, eval_mode=True)


def test_layer_norm_without_bias():
    check_row_norm(SIM, "layer", (4, 2, 9), "float32", bias=False, seed=5)


def test_bfloat16_against_float32_reference():
    check_bfloat16(SIM, pytest.importorskip("ml_dtypes"))


@pytest.mark.parametrize(
    "case", ["batch_norm", "batch_norm_1d", "layer_norm", "rms_norm", "group_norm", "instance_norm"]
)
def test_kernel_backward_matches_finite_differences(case):
    """The kernels' own backward against central differences of the kernels' own forward (float64)."""
    rng = np.random.default_rng(11)
    w, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    x = rng.standard_normal((2, 4, 3, 3)) + 5.0
    forward, backward, args = {
        "batch_norm": (K.batch_norm_forward, K.batch_norm_backward, (x, w, b)),
        "batch_norm_1d": (
            K.batch_norm_forward,
            K.batch_norm_backward,
            (x.reshape(-1, 4)[:13] * 3, w, b),
        ),
        "layer_norm": (
            lambda x, w, b: K.layer_norm_forward(x, (3, 3), w, b),
            K.layer_norm_backward,
            (x, rng.uniform(0.5, 1.5, (3, 3)), rng.standard_normal((3, 3))),
        ),
        "rms_norm": (
            lambda x, w: K.rms_norm_forward(x, (3, 3), w, 1e-5),
            K.rms_norm_backward,
            (x, rng.uniform(0.5, 1.5, (3, 3))),
        ),
        "group_norm": (
            lambda x, w, b: K.group_norm_forward(x, 2, w, b),
            K.group_norm_backward,
            (x, w, b),
        ),
        "instance_norm": (K.instance_norm_forward, K.instance_norm_backward, (x, w, b)),
    }[case]
    error = directional_gradient_error(SIM, forward, backward, args[0], list(args[1:]))
    assert error < 1e-7, error


def test_bad_input_is_rejected_with_the_op_name():
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(TypeError, match="batch_norm: expected a floating-point input"):
        K.batch_norm_forward(np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="batch_norm: empty input"):
        K.batch_norm_forward(np.ones((0, 3), np.float32))
    with pytest.raises(ValueError, match="training=False needs running_mean"):
        K.batch_norm_forward(x, training=False)
    with pytest.raises(ValueError, match=r"group_norm: expected input .* num_groups=2"):
        K.group_norm_forward(x.reshape(2, 3, 4), 2)
    with pytest.raises(ValueError, match="layer_norm: expected input ending in"):
        K.layer_norm_forward(x, (3,))
    with pytest.raises(ValueError, match="batch_norm weight: expected a parameter of 3 values"):
        K.batch_norm_forward(x, np.ones(4, np.float32))
    _, cache = K.batch_norm_forward(x)
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(2, 3, 4\)"):
        K.batch_norm_backward(np.ones((2, 3, 5), np.float32), cache)
    _, ref_cache = F.batch_norm_forward(x)
    with pytest.raises(TypeError, match=r"cache of a normlab\.kernels\.cuda forward"):
        K.batch_norm_backward(np.ones_like(x), ref_cache)
    with pytest.raises(TypeError, match="CuPy array"):
        K.batch_norm_forward([[1.0, 2.0]])


def test_non_finite_statistics_make_their_whole_group_nan_as_the_reference():
    """The NaN rule of every path: a NaN or inf among a group's values makes that group's output NaN (the
    reference, the numba loops and these kernels); the other groups are untouched."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 4, 3, 5))
    x[1, 2, 0, 0] = np.nan  # channel 2 for batch norm; row 1 for layer norm
    y_bn, _ = K.batch_norm_forward(x, use_input_stats=True)
    ref_bn, _ = F.batch_norm_forward(x, use_input_stats=True)
    np.testing.assert_array_equal(np.isnan(np.asarray(y_bn)), np.isnan(ref_bn))
    assert (
        np.isnan(np.asarray(y_bn)[:, 2]).all()
        and not np.isnan(np.asarray(y_bn)[:, [0, 1, 3]]).any()
    )
    x[0, 0, 0, 0] = np.inf
    y_ln, _ = K.layer_norm_forward(x, (4, 3, 5))
    ref_ln, _ = F.layer_norm_forward(x, (4, 3, 5))
    np.testing.assert_array_equal(np.isnan(np.asarray(y_ln)), np.isnan(ref_ln))
    assert np.isnan(np.asarray(y_ln)[:2]).all() and not np.isnan(np.asarray(y_ln)[2]).any()
