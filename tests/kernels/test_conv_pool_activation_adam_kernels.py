"""The fast paths of the network layers equal the readable reference (``normlab.functional``).

* Conv2d (:mod:`normlab.kernels.layers`): output, ``dx``, ``dweight``, ``dbias``, also without ``dx``.  The
  matrix products run on a transposed column matrix, so results agree to rounding: float32 1e-5, float64
  1e-12 (relative, with an absolute floor scaled by the largest reference magnitude).
* Max and average pooling, ReLU: **bit for bit** (same comparisons, same summation order).
* Sigmoid: to 8 ulps forward (LLVM's ``exp`` instead of NumPy's); its backward, given the same output, bit
  for bit.
* Batch norm + activation fused (:mod:`normlab.kernels.fused`): bit for bit equal to the same kernels run
  one after the other, and to rounding equal to the reference ops in sequence.
* Adam / AdamW (:mod:`normlab.kernels.optim`): bit for bit over several steps.

Case tables: odd sizes, strides, padding, dilation, non-contiguous inputs, float32 and float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.parity import KERNELS, assert_parity, assert_same
from normlab import functional as F
from normlab import kernels, nn, optim
from normlab.functional import optim as U
from normlab.kernels import fused as KF
from normlab.kernels import layers as K
from normlab.kernels import norm as KN
from normlab.kernels import optim as KO

DTYPES = (np.float32, np.float64)


@pytest.fixture
def restore_selection():
    yield
    kernels.use()


def close(actual, expected, what: str) -> None:
    assert_parity(actual, expected, KERNELS, what)


same = assert_same


def make(shape, dtype, seed=0, view="contiguous"):
    """Normal values of ``shape``; ``view="transposed"``: the same values seen through a transpose (not
    C-contiguous)."""
    rng = np.random.default_rng(seed)
    if view == "transposed":
        return rng.normal(size=tuple(reversed(shape))).astype(dtype).T
    return rng.normal(size=shape).astype(dtype)


# ----------------------------------------------------------------------------------------------- conv2d
# (input shape, weight shape, keyword arguments)
CONV_CASES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), {}),
    ((2, 3, 7, 8), (4, 3, 3, 3), {"stride": 2, "padding": 1}),
    ((2, 2, 6, 7), (3, 2, 3, 2), {"stride": (1, 2), "padding": (1, 2), "dilation": 2}),
    ((3, 4, 3, 3), (2, 4, 1, 1), {}),
    ((1, 1, 9, 11), (5, 1, 5, 5), {"padding": 2}),
    ((5, 6, 12, 12), (16, 6, 5, 5), {}),  # LeNet's second convolution, small batch
    ((2, 3, 5, 5), (2, 3, 5, 5), {"padding": 3, "stride": 3}),  # windows mostly in the padding
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "wshape", "kwargs"), CONV_CASES)
@pytest.mark.parametrize("view", ["contiguous", "transposed"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d(shape, wshape, kwargs, dtype, view, bias):
    x, w = make(shape, dtype, view=view), make(wshape, dtype, seed=1)
    b = make(wshape[:1], dtype, seed=2) if bias else None
    yk, ck = K.conv2d_forward(x, w, b, **kwargs)
    yr, cr = F.conv2d_forward(x, w, b, **kwargs)
    assert isinstance(ck, K.FastConv2dCache), "the fast path fell back to the reference"
    close(yk, yr, "y")
    dy = make(yr.shape, dtype, seed=3, view=view)
    for name, a, e in zip(
        ("dx", "dweight", "dbias"),
        K.conv2d_backward(dy, ck),
        F.conv2d_backward(dy, cr),
        strict=True,
    ):
        close(a, e, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_without_input_gradient(dtype):
    x, w, b = make((3, 2, 6, 5), dtype), make((4, 2, 3, 3), dtype, 1), make((4,), dtype, 2)
    dy = make((3, 4, 4, 3), dtype, 3)
    for module in (K, F):
        _, cache = module.conv2d_forward(x, w, b)
        full = module.conv2d_backward(dy, cache)
        _, cache = module.conv2d_forward(x, w, b)
        partial = module.conv2d_backward(dy, cache, input_grad=False)
        assert partial.dx is None
        same(partial.dweight, full.dweight, "dweight")
        same(partial.dbias, full.dbias, "dbias")


def test_conv2d_float16_and_empty_input_resolve_to_the_reference():
    record = kernels.use("numba")
    try:
        x, w = make((2, 2, 5, 5), np.float16), make((3, 2, 3, 3), np.float16, 1)
        op = record.resolve("conv2d", x)
        assert op is kernels.REFERENCE["conv2d"]
        y, cache = op.forward(x, w)
        assert isinstance(cache, F.Conv2dCache) and y.dtype == np.float16
        grads = op.backward(np.ones((2, 3, 3, 3), np.float16), cache)
        assert grads.dx.shape == x.shape
        assert (
            record.resolve("conv2d", np.zeros((0, 2, 5, 5), np.float32))
            is kernels.REFERENCE["conv2d"]
        )
        assert record.resolve("conv2d", x.astype(np.float32)).forward is K.conv2d_forward
    finally:
        kernels.use()


# ----------------------------------------------------------------------------------------------- pooling
POOL_CASES = [
    ((2, 3, 6, 7), 2, {}),
    ((2, 2, 7, 7), 3, {"stride": 2, "padding": 1}),
    ((2, 2, 5, 7), (2, 3), {"stride": (1, 2)}),
    ((3, 4, 9, 9), 3, {"stride": 1, "padding": 1}),  # overlapping windows
    ((1, 2, 16, 16), 16, {}),  # one window per plane (cnn-trio's wide network)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "k", "kwargs"), POOL_CASES)
@pytest.mark.parametrize("view", ["contiguous", "transposed"])
def test_max_pool2d_bit_for_bit(shape, k, kwargs, dtype, view):
    x = make(shape, dtype, view=view)
    x = np.round(x * 2) / 2  # many ties: the first maximum in window order must win in both
    yk, ck = K.max_pool2d_forward(x, k, **kwargs)
    yr, cr = F.max_pool2d_forward(x, k, **kwargs)
    same(yk, yr, "y")
    np.testing.assert_array_equal(ck.argmax, cr.argmax)
    dy = make(yr.shape, dtype, seed=3, view=view)
    same(K.max_pool2d_backward(dy, ck), F.max_pool2d_backward(dy, cr), "dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_nan_and_infinity_as_numpy(dtype):
    x = make((1, 1, 4, 4), dtype)
    x[0, 0, 0, 1] = np.nan  # the first NaN of a window wins
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 2:, 2:] = -np.inf  # a window of -inf: its first position wins
    for kwargs in ({}, {"padding": 1, "stride": 2}):
        yk, ck = K.max_pool2d_forward(x, 2, **kwargs)
        yr, cr = F.max_pool2d_forward(x, 2, **kwargs)
        np.testing.assert_array_equal(yk, yr)
        np.testing.assert_array_equal(ck.argmax, cr.argmax)


# NumPy sums a window row of 8 or more values pairwise, the kernel in order: those windows are equal to
# rounding only (test_avg_pool2d_wide_window_to_rounding), the narrower ones bit for bit
NARROW_POOL_CASES = [c for c in POOL_CASES if (c[1] if isinstance(c[1], int) else c[1][1]) < 8]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "k", "kwargs"), NARROW_POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("view", ["contiguous", "transposed"])
def test_avg_pool2d_bit_for_bit(shape, k, kwargs, count_include_pad, dtype, view):
    x = make(shape, dtype, view=view)
    yk, ck = K.avg_pool2d_forward(x, k, count_include_pad=count_include_pad, **kwargs)
    # NumPy orders a reduction by the memory layout of its input: the reference sums a non-contiguous
    # input's windows in another order, so bit for bit holds against its result on the contiguous copy
    # (the array the fast path reads), and to rounding against its result on the view
    yr, cr = F.avg_pool2d_forward(
        np.ascontiguousarray(x), k, count_include_pad=count_include_pad, **kwargs
    )
    same(yk, yr, "y")
    same(ck.divisor, cr.divisor, "divisor")
    close(yk, F.avg_pool2d_forward(x, k, count_include_pad=count_include_pad, **kwargs)[0], "y")
    dy = make(yr.shape, dtype, seed=3, view=view)
    same(K.avg_pool2d_backward(dy, ck), F.avg_pool2d_backward(dy, cr), "dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_wide_window_to_rounding(dtype):
    x = make((1, 2, 16, 16), dtype)
    close(K.avg_pool2d_forward(x, 16)[0], F.avg_pool2d_forward(x, 16)[0], "y")


# ----------------------------------------------------------------------------------------------- activations
def _special(x: np.ndarray) -> np.ndarray:
    x = np.array(x)
    x.reshape(-1)[:5] = [np.nan, -0.0, 0.0, np.inf, -np.inf]
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 5, 6), (1,) * 5 + (5,)])
def test_relu_bit_for_bit(shape, dtype):
    x = _special(make(shape, dtype) * 30)
    yk, ck = K.relu_forward(x)
    yr, cr = F.relu_forward(x)
    np.testing.assert_array_equal(yk, yr)
    np.testing.assert_array_equal(np.signbit(yk), np.signbit(yr))
    dy = make(shape, dtype, seed=1, view="transposed")
    same(K.relu_backward(dy, ck), F.relu_backward(dy, cr), "dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 5, 6)])
def test_sigmoid_to_a_few_ulps(shape, dtype):
    x = _special(make(shape, dtype) * 30)
    yk, ck = K.sigmoid_forward(x)
    yr, cr = F.sigmoid_forward(x)
    np.testing.assert_array_equal(np.isnan(yk), np.isnan(yr))
    finite = ~np.isnan(yr)
    np.testing.assert_array_max_ulp(yk[finite], yr[finite], maxulp=8)
    dy = make(shape, dtype, seed=1, view="transposed")
    same(K.sigmoid_backward(dy, cr), F.sigmoid_backward(dy, cr), "dx from the same output")
    close(K.sigmoid_backward(dy, ck), F.sigmoid_backward(dy, cr), "dx")


# ----------------------------------------------------------------------------------------------- fused BN + act
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 7), (37, 5), (3, 7, 5, 5), (2, 4, 3, 2, 2)])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_activation(shape, dtype, activation, training):
    x, dy = make(shape, dtype) * 2 + 1, make(shape, dtype, seed=1)
    c = shape[1]
    w, b = make((c,), dtype, 2), make((c,), dtype, 3)
    rm, rv = make((c,), dtype, 4), np.abs(make((c,), dtype, 5)) + 0.5
    args = (x, w, b, rm, rv)
    kw = {"use_input_stats": training, "eps": 1e-5}
    fused_forward = getattr(KF, f"batch_norm_{activation}_forward")
    fused, cache = fused_forward(*args, **kw)
    fused_grads = getattr(KF, f"batch_norm_{activation}_backward")(dy, cache)
    # the same kernels one after the other: bit for bit
    y, norm_cache = KN.batch_norm_forward(*args, **kw)
    act_forward, act_backward = {
        "relu": (K.relu_forward, K.relu_backward),
        "sigmoid": (K.sigmoid_forward, K.sigmoid_backward),
    }[activation]
    out, act_cache = act_forward(y)
    grads = KN.batch_norm_backward(act_backward(dy, act_cache), norm_cache)
    same(fused, out, "y")
    for name, a, e in zip(("dx", "dweight", "dbias"), fused_grads, grads, strict=True):
        same(a, e, name)
    # the reference ops in sequence: to rounding (sigmoid's exp: to its few ulps, scaled up by backward)
    ref_forward, ref_backward = {
        "relu": (F.relu_forward, F.relu_backward),
        "sigmoid": (F.sigmoid_forward, F.sigmoid_backward),
    }[activation]
    ref_y, ref_norm_cache = F.batch_norm_forward(*args, **kw)
    ref, ref_act_cache = ref_forward(ref_y)
    close(fused, ref, "y against the reference")
    ref_grads = F.batch_norm_backward(ref_backward(dy, ref_act_cache), ref_norm_cache)
    for name, a, e in zip(("dx", "dweight", "dbias"), fused_grads, ref_grads, strict=True):
        if dtype == np.float32 or activation == "relu":
            close(a, e, f"{name} against the reference")
        else:  # float64 sigmoid: LLVM's and NumPy's exp differ by an ulp, 1e-16 relative
            np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10, err_msg=name)


def test_batch_norm_act_rejects_what_it_cannot_fuse():
    with pytest.raises(
        TypeError,
        match=r"BatchNormAct: expected a BatchNorm1d/2d/3d \(without virtual_batch_size\) and a ReLU",
    ):
        nn.BatchNormAct(nn.BatchNorm1d(3), nn.Tanh())
    with pytest.raises(TypeError, match="got LayerNorm and ReLU"):
        nn.BatchNormAct(nn.LayerNorm(3), nn.ReLU())
    with pytest.raises(TypeError, match="got BatchNorm1d and ReLU"):  # Ghost BN has no fused kernel
        nn.BatchNormAct(nn.BatchNorm1d(3, virtual_batch_size=2), nn.ReLU())


# ----------------------------------------------------------------------------------------------- Adam
ADAM_CASES = [
    {"weight_decay": 0.0, "decoupled": False},
    {"weight_decay": 0.1, "decoupled": False},
    {"weight_decay": 0.01, "decoupled": True},
    {"weight_decay": 0.0, "decoupled": True},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [7, 50_000])  # the serial and the parallel loop
@pytest.mark.parametrize("case", ADAM_CASES, ids=str)
def test_adam_update_bit_for_bit(size, dtype, case):
    rng = np.random.default_rng(0)
    start = rng.normal(size=size).astype(dtype)
    states = {name: [start.copy(), np.zeros(size, dtype), np.zeros(size, dtype)] for name in "kr"}
    for step in range(1, 6):
        grad = rng.normal(size=size).astype(dtype)
        for name, update in (("k", KO.adam_update), ("r", U.adam_update)):
            p, m, v = states[name]
            update(
                p, grad, m, v, None, step=step, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, **case
            )
    for a, e in zip(states["k"], states["r"], strict=True):
        same(a, e, "param, exp_avg, exp_avg_sq")


@pytest.mark.usefixtures("restore_selection")
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_optimizer_same_with_kernels_and_reference(amsgrad):
    results = []
    for backend in ("numba", "reference"):
        kernels.use(backend)
        layer = nn.Linear(300, 70, rng=0)
        opt = optim.Adam(layer.parameters(), lr=1e-2, amsgrad=amsgrad)
        x = np.random.default_rng(1).normal(size=(8, 300)).astype(np.float32)
        for _ in range(4):
            opt.zero_grad()
            layer.backward(np.ones((8, 70), np.float32) * layer(x))
            opt.step()
        results.append(layer.weight.data.copy())
    same(results[0], results[1], "weight after 4 steps")


# ----------------------------------------------------------------------------------------------- dispatch
@pytest.mark.usefixtures("restore_selection")
def test_layer_and_optim_ops_follow_the_selection():
    x = make((2, 3, 4, 4), np.float32)
    kernels.use("reference")
    assert kernels.resolve("conv2d", x) == (F.conv2d_forward, F.conv2d_backward)
    assert kernels.resolve("adam_update", x).forward is U.adam_update
    assert kernels.fast_path("batch_norm_relu", x) is None
    kernels.use("numba")
    assert kernels.resolve("conv2d", x) == (K.conv2d_forward, K.conv2d_backward)
    assert kernels.resolve("adam_update", x).forward is KO.adam_update
    assert kernels.resolve("batch_norm", x).forward is KN.batch_norm_forward
    assert kernels.fast_path("batch_norm_relu", x).forward is KF.batch_norm_relu_forward
    assert kernels.resolve("linear", x).forward is F.linear_forward  # no fast path registered
    assert kernels.resolve("adam_update", x, x.T).forward is U.adam_update  # not contiguous
