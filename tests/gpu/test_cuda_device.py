"""The CUDA kernels on a real GPU, on CuPy arrays, against the NumPy reference.

Skipped, with the reason, where there is no CUDA device or no CuPy (install with ``pip install -e '.[gpu]'``).
The shapes are bigger than the simulator's so that the default launch sizes (256 threads, 32x8 tiles, four
blocks per multiprocessor) split channels into several slices; the checks and tolerances are the simulator's
(see cuda_cases.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu.cuda_cases import (
    Device,
    check_batch_norm,
    check_bfloat16,
    check_row_norm,
    cupy_on_a_real_gpu,
    directional_gradient_error,
)
from normlab.kernels import cuda as K


def _gpu() -> Device:
    cupy = cupy_on_a_real_gpu()
    return Device(put=cupy.asarray, get=cupy.asnumpy)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize(
    "layout, shape",
    [
        ("nchw", (16, 5, 33, 37)),
        ("channels_last", (16, 37, 9, 11)),
        ("nchw", (4099, 70)),  # BatchNorm1d: the row kernels
        ("nchw", (1, 3, 1, 5)),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(layout, shape, dtype, training):
    check_batch_norm(_gpu(), shape, dtype, layout, training=training)


def test_bfloat16():
    dev = _gpu()
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from numba import cuda

    if not cuda.is_bfloat16_supported():
        pytest.skip("bfloat16 needs compute capability >= 8.0")
    check_bfloat16(dev, ml_dtypes)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize(
    "op, shape, groups",
    [
        ("layer", (37, 3, 515), 1),
        ("rms", (37, 1025), 1),
        ("group", (6, 64, 9, 7), 32),
        ("instance", (3, 5, 33, 31), 1),
    ],
)
def test_row_norms(op, shape, groups, dtype):
    check_row_norm(_gpu(), op, shape, dtype, groups=groups)


def test_instance_norm_running_stats():
    check_row_norm(_gpu(), "instance", (3, 5, 17, 9), "float32", eval_mode=True)


def test_batch_norm_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 11, 13)) + 5.0
    err = directional_gradient_error(
        _gpu(),
        K.batch_norm_forward,
        K.batch_norm_backward,
        x,
        [rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)],
    )
    assert err < 1e-7, err


def test_numpy_input_on_a_real_gpu_is_a_clear_error():
    _gpu()
    with pytest.raises(TypeError, match="expected the input on the GPU"):
        K.batch_norm_forward(np.ones((2, 3), np.float32))
