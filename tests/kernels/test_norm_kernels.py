"""Every numba kernel equals the readable reference (``normlab.functional``): forward output, the statistics
the running-stat update reads (``mean``, ``var``, ``count``), and backward ``dx``, ``dweight``, ``dbias``.

Tolerances (relative, with an absolute floor of the same size times the largest reference magnitude, because
``dx`` sums terms that cancel): float32 1e-5, float64 1e-12.  The kernels sum in float64 and in another order
than the reference, so they agree to rounding, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.parity import KERNELS, assert_parity
from normlab import functional as F
from normlab import kernels, nn
from normlab.kernels import norm as K
from normlab.kernels.norm import KernelNormCache

DTYPES = (np.float32, np.float64)
AFFINE = ("both", "none", "weight_only")


def assert_close(actual, expected, dtype, what: str = "") -> None:
    assert_parity(actual, expected, KERNELS, what, dtype=dtype)


def make(shape, dtype, seed=0, mean=3.0, std=2.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(mean, std, size=shape)).astype(dtype)


def params(c_shape, dtype, affine, seed=1):
    rng = np.random.default_rng(seed)
    w = rng.normal(1.0, 0.5, size=c_shape).astype(dtype)
    b = rng.normal(0.0, 0.5, size=c_shape).astype(dtype)
    return {"both": (w, b), "none": (None, None), "weight_only": (w, None)}[affine]


def check_op(op, dtype, dy, *args, **kwargs):
    """Run ``op`` forward and backward in the kernels and in the reference; compare everything."""
    yk, ck = getattr(K, f"{op}_forward")(*args, **kwargs)
    yr, cr = getattr(F, f"{op}_forward")(*args, **kwargs)
    assert isinstance(ck, KernelNormCache), "the kernel fell back to the reference"
    assert_close(yk, yr, dtype, "y")
    assert_close(ck.mean, cr.mean, dtype, "mean")
    assert_close(ck.var, cr.var, dtype, "var")
    assert ck.count == cr.count
    assert ck.input_shape == cr.input_shape
    gk = getattr(K, f"{op}_backward")(dy, ck)
    gr = getattr(F, f"{op}_backward")(dy, cr)
    for name, a, e in zip(("dx", "dweight", "dbias"), gk, gr, strict=True):
        assert_close(a, e, dtype, name)


# ----------------------------------------------------------------------------------------------- batch norm
BN_SHAPES = [(3, 7), (16, 7), (37, 5), (3, 7, 5), (3, 7, 5, 5), (2, 4, 3, 2, 2), (4, 3, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(shape, dtype, affine, training):
    x, dy = make(shape, dtype), make(shape, dtype, seed=2, mean=0.0, std=1.0)
    w, b = params(shape[1], dtype, affine)
    rm, rv = make(shape[1], dtype, seed=3), np.abs(make(shape[1], dtype, seed=4)) + 0.5
    check_op("batch_norm", dtype, dy, x, w, b, rm, rv, use_input_stats=training, eps=1e-5)


def non_contiguous(shape, dtype, view, seed=5):
    """An array of ``shape`` that is not C-contiguous: a transposed array seen through its transpose, or every
    other channel of a wider array."""
    if view == "transposed":
        return make(tuple(reversed(shape)), dtype, seed=seed).transpose(
            tuple(reversed(range(len(shape))))
        )
    return make((shape[0], 2 * shape[1], *shape[2:]), dtype, seed=seed)[:, ::2]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 7), (3, 7, 5), (3, 7, 5, 5), (2, 4, 3, 2, 2)])
@pytest.mark.parametrize("view", ["transposed", "sliced"])
def test_non_contiguous_input(shape, dtype, view):
    x = non_contiguous(shape, dtype, view)
    dy = non_contiguous(shape, dtype, "transposed", seed=6)  # a non-contiguous gradient too
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    w, b = params(shape[1], dtype, "both")
    d = x.shape[1:]
    ln_w, ln_b = params(d, dtype, "both")
    check_op("batch_norm", dtype, dy, x, w, b)
    check_op("group_norm", dtype, dy, x, 1, w, b)
    check_op("layer_norm", dtype, dy, x, d, ln_w, ln_b)
    check_op("rms_norm", dtype, dy, x, d, ln_w)
    if x.ndim > 2:
        check_op("instance_norm", dtype, dy, x, w, b)


# ------------------------------------------------------------------------------------------ layer / RMS norm
LN_CASES = [
    ((3, 7), (7,)),
    ((3, 4, 5), (5,)),
    ((3, 4, 5), (4, 5)),
    ((2, 3, 4, 5), (3, 4, 5)),
    ((1, 9), (9,)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "normalized"), LN_CASES)
@pytest.mark.parametrize("affine", AFFINE)
def test_layer_norm(shape, normalized, dtype, affine):
    x, dy = make(shape, dtype), make(shape, dtype, seed=2, mean=0.0, std=1.0)
    w, b = params(normalized, dtype, affine)
    check_op("layer_norm", dtype, dy, x, normalized, w, b, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "normalized"), LN_CASES)
@pytest.mark.parametrize("affine", ["none", "weight_only"])
@pytest.mark.parametrize("eps", [None, 1e-6])
def test_rms_norm(shape, normalized, dtype, affine, eps):
    x, dy = make(shape, dtype), make(shape, dtype, seed=2, mean=0.0, std=1.0)
    w, _ = params(normalized, dtype, affine)
    check_op("rms_norm", dtype, dy, x, normalized, w, eps)


# ------------------------------------------------------------------------------------- group / instance norm
GN_CASES = [
    ((3, 6, 5, 5), 1),
    ((3, 6, 5, 5), 2),
    ((3, 6, 5, 5), 3),
    ((3, 6, 5, 5), 6),
    ((3, 6, 5), 2),
    ((2, 4, 3, 2, 2), 2),
    ((4, 6), 3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "groups"), GN_CASES)
@pytest.mark.parametrize("affine", AFFINE)
def test_group_norm(shape, groups, dtype, affine):
    x, dy = make(shape, dtype), make(shape, dtype, seed=2, mean=0.0, std=1.0)
    w, b = params(shape[1], dtype, affine)
    check_op("group_norm", dtype, dy, x, groups, w, b, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 5), (3, 7, 5, 5), (2, 4, 3, 2, 2), (2, 3, 1, 1)])
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm(shape, dtype, affine, use_input_stats):
    x, dy = make(shape, dtype), make(shape, dtype, seed=2, mean=0.0, std=1.0)
    w, b = params(shape[1], dtype, affine)
    rm, rv = make(shape[1], dtype, seed=3), np.abs(make(shape[1], dtype, seed=4)) + 0.5
    check_op("instance_norm", dtype, dy, x, w, b, rm, rv, use_input_stats=use_input_stats, eps=1e-5)


# ----------------------------------------------------------------------------------------------- numerics
def _all_ops(x, eps=1e-5):
    """(op name, run) for every op on channels-first x; ``run(module)`` calls the op's forward there."""
    c = x.shape[1]
    w = np.linspace(0.5, 1.5, c).astype(x.dtype)
    b = np.linspace(-1.0, 1.0, c).astype(x.dtype)
    d = x.shape[1:]
    lw = np.linspace(0.5, 1.5, int(np.prod(d))).reshape(d).astype(x.dtype)
    ops = [
        ("batch_norm", lambda m: m.batch_norm_forward(x, w, b, eps=eps)),
        ("layer_norm", lambda m: m.layer_norm_forward(x, d, lw, lw - 1, eps)),
        ("group_norm", lambda m: m.group_norm_forward(x, 1, w, b, eps)),
        ("rms_norm", lambda m: m.rms_norm_forward(x, d, lw, eps)),
    ]
    if x.ndim > 2:
        ops.append(("instance_norm", lambda m: m.instance_norm_forward(x, w, b, eps=eps)))
    return ops


@pytest.mark.parametrize("shape", [(64, 7), (8, 7, 5, 5)])
def test_large_mean_float32_matches_float64(shape):
    """mean 1e4, std 1 in float32: the kernels keep ~1e-3 relative precision against a float64 reference."""
    x32 = make(shape, np.float32, seed=7, mean=1e4, std=1.0)
    x64 = x32.astype(np.float64)  # the same numbers: only the arithmetic differs
    dy64 = make(shape, np.float64, seed=8, mean=0.0, std=1.0)
    for (name, run32), (_, run64) in zip(_all_ops(x32), _all_ops(x64), strict=True):
        (y32, c32), (y64, c64) = run32(K), run64(F)
        assert isinstance(c32, KernelNormCache)
        np.testing.assert_allclose(y32, y64, rtol=1e-3, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(c32.var.astype(np.float64), c64.var, rtol=1e-3, err_msg=name)
        g32 = getattr(K, f"{name}_backward")(dy64.astype(np.float32), c32)
        g64 = getattr(F, f"{name}_backward")(dy64, c64)
        np.testing.assert_allclose(g32.dx, g64.dx, rtol=1e-3, atol=1e-3, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_mean_matches_the_reference(dtype):
    """With mean 1e4 and std 1 both sides subtract the same shift first, so they agree as on centered data."""
    x = make((32, 5, 4, 4), dtype, seed=9, mean=1e4, std=1.0)
    dy = make(x.shape, dtype, seed=10, mean=0.0, std=1.0)
    for name, run in _all_ops(x):
        (yk, ck), (yr, cr) = run(K), run(F)
        assert_close(yk, yr, dtype, name)
        gk = getattr(K, f"{name}_backward")(dy, ck)
        gr = getattr(F, f"{name}_backward")(dy, cr)
        for a, e in zip(gk, gr, strict=True):
            assert_close(a, e, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 5)])
def test_zero_variance_with_eps_zero_gives_bias(shape, dtype):
    x = np.full(shape, 2.5, dtype=dtype)
    dy = make(shape, dtype, seed=11)
    for name, run in _all_ops(x, eps=0.0):
        if name == "rms_norm":
            continue  # a constant input has a non-zero mean square
        (yk, ck), (yr, cr) = run(K), run(F)
        assert np.all(np.isfinite(yk)), name
        assert_close(yk, yr, dtype, name)
        gk = getattr(K, f"{name}_backward")(dy, ck)
        gr = getattr(F, f"{name}_backward")(dy, cr)
        assert np.all(np.isfinite(gk.dx)), name
        for a, e in zip(gk, gr, strict=True):
            assert_close(a, e, dtype, name)
    bias = np.arange(shape[1], dtype=dtype)
    y, _ = K.batch_norm_forward(x, None, bias, eps=0.0)
    np.testing.assert_array_equal(
        y, np.broadcast_to(bias.reshape(-1, *[1] * (len(shape) - 2)), shape)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 5)])
def test_nan_propagates_like_the_reference(shape, dtype):
    x = make(shape, dtype, seed=12)
    x[(1, 1) + (2,) * (len(shape) - 2)] = np.nan
    dy = make(shape, dtype, seed=13)
    for name, run in _all_ops(x):
        (yk, ck), (yr, cr) = run(K), run(F)
        assert np.isnan(yk).any(), name
        np.testing.assert_array_equal(np.isnan(yk), np.isnan(yr), err_msg=name)
        assert_close(yk, yr, dtype, name)
        np.testing.assert_array_equal(np.isnan(ck.var), np.isnan(cr.var), err_msg=name)
        gk = getattr(K, f"{name}_backward")(dy, ck)
        gr = getattr(F, f"{name}_backward")(dy, cr)
        np.testing.assert_array_equal(np.isnan(gk.dx), np.isnan(gr.dx), err_msg=name)


@pytest.mark.parametrize("dtype", (*DTYPES, np.float16))
def test_empty_batch_gives_empty_output(dtype):
    """An empty input resolves to the reference, which gives an empty output."""
    record = kernels.use("numba")
    try:
        x = np.empty((0, 7, 3), dtype=dtype)
        w, b = params(7, dtype, "both")
        op = record.resolve("batch_norm", x)
        assert op is kernels.REFERENCE["batch_norm"]
        y, cache = op.forward(x, w, b)
        assert y.shape == x.shape and y.dtype == x.dtype
        grads = op.backward(np.empty_like(x), cache)
        ref = F.batch_norm_backward(np.empty_like(x), F.batch_norm_forward(x, w, b)[1])
        assert grads.dx.shape == x.shape
        for a, e in zip(grads, ref, strict=True):
            np.testing.assert_array_equal(a, e)
        for name, run in _all_ops(x):
            assert record.resolve(name, x) is kernels.REFERENCE[name], name
            y, cache = run(F)
            assert y.shape == x.shape, name
    finally:
        kernels.use()


def test_float16_falls_back_to_the_reference():
    record = kernels.use("numba")
    try:
        x = make((8, 3, 4), np.float16)
        assert record.resolve("batch_norm", x) is kernels.REFERENCE["batch_norm"]
        layer = nn.BatchNorm1d(3, dtype=np.float16)
        y = layer(x)
        yr, cr = F.batch_norm_forward(x, layer.weight.data, layer.bias.data)
        np.testing.assert_array_equal(y, yr)
        assert not isinstance(layer._cache, KernelNormCache)
        dy = make(x.shape, np.float16, seed=3)
        np.testing.assert_array_equal(layer.backward(dy), F.batch_norm_backward(dy, cr).dx)
    finally:
        kernels.use()


def test_bad_input_raises_in_the_public_op_before_dispatch():
    """The checks run once, before dispatch, in the reference ops and in the layers (the kernels receive
    validated arrays): the same messages whichever backend is selected."""
    x = make((4, 6, 3), np.float32)
    with pytest.raises(ValueError, match="batch_norm: expected input of shape"):
        F.batch_norm_forward(x[0, 0])
    with pytest.raises(ValueError, match="use_input_stats=False needs"):
        F.batch_norm_forward(x, use_input_stats=False)
    with pytest.raises(
        ValueError, match=r"layer_norm: expected input whose trailing dimensions are \(4,\)"
    ):
        F.layer_norm_forward(x, (4,))
    with pytest.raises(ValueError, match="divisible by num_groups=4"):
        F.group_norm_forward(x, 4)
    with pytest.raises(TypeError, match="floating-point"):
        F.batch_norm_forward(x.astype(np.int32))
    for backend in ("numba", "reference"):
        kernels.use(backend)
        try:
            with pytest.raises(
                ValueError, match=r"LayerNorm\(\(4,\)\): expected input whose trailing"
            ):
                nn.LayerNorm(4)(x)
            layer = nn.BatchNorm1d(6)
            layer(x)
            with pytest.raises(ValueError, match="expected a gradient of shape"):
                layer.backward(x[:2])
        finally:
            kernels.use()


@pytest.mark.parametrize("shape", [(6, 7), (3, 7, 5)])
def test_read_only_input_and_gradient(shape):
    """Read-only arrays (np.broadcast_to, memory maps) work and give the reference's numbers."""
    x = make(shape, np.float32)
    dy = make(shape, np.float32, seed=2)
    x.flags.writeable = False
    dy.flags.writeable = False
    w, b = params(shape[1], np.float32, "both")
    w.flags.writeable = False
    check_op("batch_norm", np.float32, dy, x, w, b)
    check_op("layer_norm", np.float32, dy, x, shape[1:], make(shape[1:], np.float32, seed=3))
    check_op("group_norm", np.float32, dy, x, 1, w, b)
