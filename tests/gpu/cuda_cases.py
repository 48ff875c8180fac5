"""Checks of normlab.kernels.cuda against the NumPy reference, shared by the simulator tests (NumPy arrays,
sim_kernels.py) and the real-GPU tests (CuPy arrays, test_cuda_device.py).

``Device`` says how arrays reach the kernels (``put``) and come back (``get``).  Every check builds NumPy
inputs, runs the reference (normlab.functional) on them and the kernel on the device copies, and compares.

Tolerances, and why:

* float64: rtol = atol = 1e-12.  Both sides sum in float64 (the kernel in another order and with one-pass
  shifted sums, the reference with two passes), so they agree to ~1e-14 on values of size ~1 from inputs
  of size 1e4; 1e-12 leaves a margin of 100 while still failing on any missing term or float32 step.
* float32: rtol = atol = 1e-5.  Elementwise arithmetic is float32 on both sides but grouped differently
  (the kernel folds gamma/beta into one scale and offset, and dx into three coefficients per channel), so
  values of size ~3 differ by a few float32 ulps (~1e-6); 1e-5 is ten times that, and a kernel that
  applied the folded affine without the shift (``x * scale + offset``) would miss it by ~1e-3 on the
  channels with mean 1e4.
* float16 / bfloat16 output: one rounding of the output to the narrow type separates the two sides at
  most (float16: ulp 2^-10 relative, atol = rtol = 2e-3; bfloat16: 2^-7, 8e-3).  Statistics and parameter
  gradients are float32 on both sides and keep the float32 tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from helpers.gradcheck import relative_error
from normlab import functional as F
from normlab.kernels import cuda as K

TOL = {
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-5},
    np.dtype(np.float16): {"rtol": 2e-3, "atol": 2e-3},
}
BF16_TOL = {"rtol": 8e-3, "atol": 8e-3}


def cupy_on_a_real_gpu() -> Any:
    """CuPy, where the CUDA kernels can run on a real GPU; otherwise the test is skipped with the reason (no
    device or driver, the simulator switched on in this process, or no CuPy)."""
    import pytest

    from normlab.kernels import cuda as K

    ok, reason = K.status()
    if not ok:
        pytest.skip(reason)
    if K.simulator():
        pytest.skip(
            "the simulator is on in this process; real-GPU tests need NUMBA_ENABLE_CUDASIM unset"
        )
    return pytest.importorskip("cupy", reason="CuPy is not installed (pip install -e '.[gpu]')")


@dataclass(frozen=True)
class Device:
    put: Callable[[np.ndarray], Any]
    get: Callable[[Any], np.ndarray]


def _stat_tol(dtype: np.dtype) -> dict[str, float]:
    return TOL[np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)]


def _mean_tol(dtype: np.dtype) -> dict[str, float]:
    """Means of size 1e4 in float32 are stored to ~1e-3 absolute (6e-8 relative): 1e-6 relative."""
    return _stat_tol(dtype) if dtype == np.float64 else {"rtol": 1e-6, "atol": 1e-5}


def close(dev: Device, got: Any, want: np.ndarray | None, tol: dict[str, float], what: str) -> None:
    if want is None:
        assert got is None, f"{what}: expected None"
        return
    got_h = np.asarray(dev.get(got))
    assert got_h.shape == np.shape(want), f"{what}: shape {got_h.shape} != {np.shape(want)}"
    assert got_h.dtype == want.dtype, f"{what}: dtype {got_h.dtype} != {want.dtype}"
    np.testing.assert_allclose(
        got_h.astype(np.float64), want.astype(np.float64), err_msg=what, **tol
    )


def channel_offsets(c: int, dtype: np.dtype) -> np.ndarray:
    """Per-channel means: 0 and large ones (1e4 where the dtype can hold std-1 detail around it)."""
    big = 1e4 if dtype != np.float16 else 1e2
    return np.array([big, 0.0, -big / 2, 3.0, -big, 7.0, 1.0][:c] + [0.0] * max(0, c - 7))


# ------------------------------------------------------------------------------------------ batch norm
def make_bn_input(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, shape[1]).reshape(
        (1, -1) + (1,) * (len(shape) - 2)
    )
    x += channel_offsets(shape[1], np.dtype(dtype)).reshape((1, -1) + (1,) * (len(shape) - 2))
    return x.astype(dtype)


def put_layout(dev: Device, x: np.ndarray, layout: str) -> Any:
    """``x`` (N, C, ...) on the device, NCHW-contiguous or channels-last (memory N, H, W, C)."""
    if layout == "channels_last":
        a = dev.put(np.ascontiguousarray(np.moveaxis(x, 1, -1)))
        return a.transpose((0, a.ndim - 1, *range(1, a.ndim - 1)))
    return dev.put(x)


def check_batch_norm(
    dev: Device,
    shape: tuple[int, ...],
    dtype: Any,
    layout: str = "nchw",
    training: bool = True,
    affine: bool = True,
    seed: int = 0,
) -> None:
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = make_bn_input(shape, dtype, rng)
    ct = np.float64 if dtype == np.float64 else np.float32
    w = rng.uniform(0.5, 1.5, c).astype(ct) if affine else None
    b = rng.standard_normal(c).astype(ct) if affine else None
    rm = (channel_offsets(c, dtype) + rng.standard_normal(c)).astype(ct)
    rv = rng.uniform(0.5, 2.0, c).astype(ct)
    dy = rng.standard_normal(shape).astype(dtype)

    y_ref, cache_ref = F.batch_norm_forward(x, w, b, rm, rv, training=training)
    g_ref = F.batch_norm_backward(dy, cache_ref)

    xd = put_layout(dev, x, layout)

    def opt(a: np.ndarray | None) -> Any:
        return None if a is None else dev.put(a)

    y, cache = K.batch_norm_forward(xd, opt(w), opt(b), dev.put(rm), dev.put(rv), training=training)
    tol, stol = TOL[dtype], _stat_tol(dtype)
    close(dev, y, y_ref, tol, "batch_norm y")
    if layout == "channels_last" and np.prod(shape[2:]) > 1:  # y keeps the input's memory layout
        assert not y.flags.c_contiguous and np.moveaxis(y, 1, -1).flags.c_contiguous
    close(dev, cache.mean, cache_ref.mean, _mean_tol(dtype), "batch_norm mean")
    close(dev, cache.var, cache_ref.var, stol, "batch_norm var")
    assert cache.count == cache_ref.count
    g = K.batch_norm_backward(put_layout(dev, dy, layout), cache)
    close(dev, g.dx, g_ref.dx, tol, "batch_norm dx")
    # parameter gradients are sums over count values: scale the absolute tolerance with them
    ptol = {**stol, "atol": stol["atol"] * cache.count}
    close(dev, g.dweight, g_ref.dweight, ptol, "batch_norm dweight")
    close(dev, g.dbias, g_ref.dbias, ptol, "batch_norm dbias")
    if training:
        for unbiased in (True, False):
            batch_var = (
                F.unbiased_variance(cache_ref.var, cache_ref.count) if unbiased else cache_ref.var
            )
            want = F.update_running_stats(
                rm, rv, cache_ref.mean.reshape(c), batch_var.reshape(c), 0.1
            )
            got = K.update_running_stats(dev.put(rm), dev.put(rv), cache, 0.1, unbiased=unbiased)
            close(dev, got[0], want[0], _mean_tol(dtype), "running_mean")
            close(dev, got[1], want[1], stol, "running_var")


# ------------------------------------------------------------------------------------------ per-row norms
def make_row_input(
    op: str, shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator
) -> np.ndarray:
    """Random input whose statistics have large means: per leading row (layer/RMS norm) or per channel."""
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0)
    if op in ("layer",):
        lead = shape[0]
        x += channel_offsets(lead, dtype).reshape((-1,) + (1,) * (len(shape) - 1))
    elif op in ("group", "instance"):
        x += channel_offsets(shape[1], dtype).reshape((1, -1) + (1,) * (len(shape) - 2))
    return x.astype(dtype)


def _row_ops(op: str, shape: tuple[int, ...], groups: int, eval_mode: bool):
    """(reference forward, kernel forward, parameter count, extra args) for ``op``."""
    if op == "layer":
        ns = shape[-2:]
        return F.layer_norm_forward, K.layer_norm_forward, int(np.prod(ns)), (ns,)
    if op == "rms":
        ns = shape[-1:]
        return F.rms_norm_forward, K.rms_norm_forward, int(np.prod(ns)), (ns,)
    if op == "group":
        return F.group_norm_forward, K.group_norm_forward, shape[1], (groups,)
    return F.instance_norm_forward, K.instance_norm_forward, shape[1], ()


def check_row_norm(
    dev: Device,
    op: str,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    groups: int = 1,
    eval_mode: bool = False,
    bias: bool = True,
    seed: int = 0,
) -> None:
    """Layer ("layer"), RMS ("rms"), group ("group") or instance ("instance") norm, forward and backward."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    ct = np.float64 if dtype == np.float64 else np.float32
    x = make_row_input(op, shape, dtype, rng)
    ref_fwd, k_fwd, n_params, extra = _row_ops(op, shape, groups, eval_mode)
    pshape = extra[0] if op in ("layer", "rms") else (n_params,)
    w = rng.uniform(0.5, 1.5, pshape).astype(ct)
    b = rng.standard_normal(pshape).astype(ct) if bias and op != "rms" else None
    kwargs: dict[str, Any] = {}
    ref_args = (x, *extra, w) if op == "rms" else (x, *extra, w, b)
    if op == "instance" and eval_mode:
        rm = rng.standard_normal(n_params).astype(ct)
        rv = rng.uniform(0.5, 2.0, n_params).astype(ct)
        ref_args = (x, w, b, rm, rv)
        kwargs = {"use_input_stats": False}
    dy = rng.standard_normal(shape).astype(dtype)

    y_ref, cache_ref = ref_fwd(*ref_args, **kwargs)
    g_ref = F.batch_norm_backward(dy, cache_ref)  # the reference's one closed-form backward
    dev_args = [a if not isinstance(a, np.ndarray) else dev.put(a) for a in ref_args]
    y, cache = k_fwd(*dev_args, **kwargs)
    tol, stol = TOL[dtype], _stat_tol(dtype)
    close(dev, y, y_ref, tol, f"{op} y")
    close(dev, cache.mean, cache_ref.mean, _mean_tol(dtype), f"{op} mean")
    close(dev, cache.var, cache_ref.var, stol, f"{op} var")
    backward = {
        "layer": K.layer_norm_backward,
        "rms": K.rms_norm_backward,
        "group": K.group_norm_backward,
        "instance": K.instance_norm_backward,
    }[op]
    g = backward(dev.put(dy), cache)
    close(dev, g.dx, g_ref.dx, tol, f"{op} dx")
    ptol = {**stol, "atol": stol["atol"] * (x.size // n_params)}
    close(dev, g.dweight, g_ref.dweight, ptol, f"{op} dweight")
    close(dev, g.dbias, g_ref.dbias, ptol, f"{op} dbias")


def check_bfloat16(dev: Device, ml_dtypes: Any) -> None:
    """bfloat16 input (ml_dtypes), float32 statistics: the reference on the same values in float32,
    with the output rounded once to bfloat16."""
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(7)
    x = make_bn_input((2, 3, 3, 5), np.dtype(np.float16), rng).astype(np.float32).astype(bf16)
    dy = rng.standard_normal(x.shape).astype(bf16)
    w = rng.uniform(0.5, 1.5, 3).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    stol = TOL[np.dtype(np.float32)]
    for fwd_k, bwd_k, fwd_r, extra in (
        (K.batch_norm_forward, K.batch_norm_backward, F.batch_norm_forward, ()),
        (K.group_norm_forward, K.group_norm_backward, F.group_norm_forward, (3,)),
    ):
        y, cache = fwd_k(dev.put(x), *extra, dev.put(w), dev.put(b))
        y_ref, cache_ref = fwd_r(x32, *extra, w, b)
        assert dev.get(y).dtype == bf16
        close(dev, y.astype(np.float32), y_ref, BF16_TOL, "bfloat16 y")
        close(dev, cache.var, cache_ref.var, stol, "bfloat16 var")
        g, g_ref = bwd_k(dev.put(dy), cache), F.batch_norm_backward(dy32, cache_ref)
        close(dev, g.dx.astype(np.float32), g_ref.dx, BF16_TOL, "bfloat16 dx")
        close(dev, g.dweight, g_ref.dweight, {**stol, "atol": 1e-5 * x.size}, "bfloat16 dweight")


# ------------------------------------------------------------------------------------------ gradients
def directional_gradient_error(
    dev: Device, forward: Callable, backward: Callable, x: np.ndarray, params: list[np.ndarray]
) -> float:
    """Float64 central-difference check of the kernels' own backward along one random direction.

    With L = Σ g·f(x, params) and a random direction v = (v_x, v_params...): the analytic
    Σ_a dL/da · v_a (from ``backward``) against (L(args + h v) - L(args - h v)) / 2h.  Every gradient
    enters the sum with a random weight, so a wrong or missing term in any of them shows.  One direction
    for all arguments keeps it at two forwards (the simulator runs a forward in about a second).
    """
    rng = np.random.default_rng(1)
    args = [x, *params]
    y, cache = forward(*[dev.put(a) for a in args])
    g = rng.standard_normal(np.shape(dev.get(y)))
    grads = backward(dev.put(g), cache)
    analytic = [grads.dx, grads.dweight, grads.dbias][: len(args)]
    direction = [rng.standard_normal(a.shape) for a in args]
    h = 1e-6

    def loss(sign: float) -> float:
        moved = [a + sign * h * v for a, v in zip(args, direction, strict=True)]
        return float(np.sum(g * dev.get(forward(*[dev.put(m) for m in moved])[0])))

    numeric = (loss(1.0) - loss(-1.0)) / (2 * h)
    exact = sum(
        float(np.sum(np.asarray(dev.get(d)) * v)) for d, v in zip(analytic, direction, strict=True)
    )
    return relative_error(np.array([exact]), np.array([numeric]))
