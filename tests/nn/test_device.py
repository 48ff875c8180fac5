"""Devices: ``Module.to(device)``, the check that an input lives where a layer's parameters do, and the
kernel routing of arrays that are not NumPy's.

array-api-strict offers two devices (``CPU_DEVICE`` and ``device1``) and refuses to mix them or to convert
``device1`` arrays to NumPy: it stands in for a GPU here.  No test needs CUDA.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat
import numpy as np
import pytest

from helpers.devices import CPU, DEVICE1, strict_copy, xs
from helpers.devices import host_copy as _host
from normlab import functional as F
from normlab import kernels, nn


def _arrays(model: nn.Module) -> list[Any]:
    """Every parameter, gradient and buffer of ``model``."""
    out = []
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                out += [p.data] + ([] if p.grad is None else [p.grad])
        out += [b for b in m._buffers.values() if b is not None]
    return out


def _to_strict(model: nn.Module) -> nn.Module:
    """``model`` with every array copied into array-api-strict on its default device (a fresh model is
    NumPy; this is how another array library's model starts)."""
    return strict_copy(model, CPU)


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 4, rng=np.random.default_rng(1)),
        nn.Tanh(),
        nn.Linear(4, 3, rng=np.random.default_rng(2)),
        nn.Sigmoid(),
    )


@pytest.fixture
def reference_kernels():
    """The NumPy model runs the reference too (no numba compile; the same code on both libraries)."""
    kernels.use("reference")
    yield
    kernels.use()


# ------------------------------------------------------------------------------------ Module.to
def test_a_model_moved_to_another_device_computes_what_the_numpy_model_does(
    reference_kernels: None,
) -> None:
    reference, model = _mlp(), _to_strict(_mlp())
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    dy = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    model(xs.asarray(x, device=CPU))
    model.backward(xs.asarray(dy, device=CPU))  # gradients exist before the move: they move too

    assert model.to(DEVICE1) is model
    assert all(a.device == DEVICE1 for a in _arrays(model))
    assert model[0].weight.grad is not None

    model.zero_grad()
    for mode in (True, False):
        reference.train(mode)
        model.train(mode)
        y_ref, y = reference(x), model(xs.asarray(x, device=DEVICE1))
        assert y.device == DEVICE1
        np.testing.assert_allclose(_host(y), y_ref, rtol=1e-6, atol=1e-7)
    dx_ref, dx = reference.backward(dy), model.backward(xs.asarray(dy, device=DEVICE1))
    np.testing.assert_allclose(_host(dx), dx_ref, rtol=1e-6, atol=1e-7)
    for p_ref, p in zip(reference.parameters(), model.parameters(), strict=True):
        assert p.grad.device == DEVICE1
        np.testing.assert_allclose(_host(p.grad), p_ref.grad, rtol=1e-6, atol=1e-7)


def test_a_numpy_model_moves_onto_another_librarys_device(reference_kernels: None) -> None:
    reference, model = _mlp(), _mlp()
    assert model.to(DEVICE1) is model  # straight from NumPy, as model.to(cupy_device) would
    assert all(type(a).__module__.startswith("array_api_strict") for a in _arrays(model))
    assert all(a.device == DEVICE1 for a in _arrays(model))
    x = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32)
    np.testing.assert_allclose(
        _host(model(xs.asarray(x, device=DEVICE1))), reference(x), rtol=1e-6, atol=1e-7
    )


def test_to_cpu_returns_numpy_arrays_and_self() -> None:
    model = _to_strict(_mlp())
    assert model.to("cpu") is model
    assert all(type(a) is np.ndarray for a in _arrays(model))
    assert model(np.ones((2, 5), np.float32)).shape == (2, 3)
    assert model.to("cpu") is model  # NumPy already: nothing to do


def test_to_cuda_without_cupy_says_what_to_install_and_moves_nothing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    model = _mlp()
    before = _arrays(model)
    with pytest.raises(RuntimeError, match=r"Module.to\('cuda'\): .*CuPy.*normlab\[gpu\]"):
        model.to("cuda")
    assert all(a is b for a, b in zip(_arrays(model), before, strict=True))


@pytest.mark.parametrize("target", ["cuda:x", "cuda:0:1", "cpu:0"])
def test_to_refuses_a_malformed_device(target: str) -> None:
    with pytest.raises(ValueError, match="expected 'cpu', 'cuda' or 'cuda:N'"):
        _mlp().to(target)


def test_to_refuses_what_is_neither_a_dtype_nor_a_device() -> None:
    with pytest.raises(TypeError, match="floating-point dtype or a device"):
        _mlp().to("tpu")
    with pytest.raises(TypeError, match="floating-point dtype"):
        _mlp().to(np.int32)


def test_a_failed_move_leaves_every_array_where_it_was() -> None:
    model = _to_strict(_mlp()).to(DEVICE1)
    with pytest.raises(
        RuntimeError, match=r"cannot copy a array_api_strict array on .*device1.* to NumPy"
    ):
        model.to("cpu")  # device1 arrays cannot become NumPy arrays
    assert all(a.device == DEVICE1 for a in _arrays(model))


def test_a_dtype_cast_works_on_arrays_of_another_library() -> None:
    model = _to_strict(_mlp()).to(DEVICE1).to(np.float64)
    assert all(a.dtype == xs.float64 and a.device == DEVICE1 for a in _arrays(model))


def test_batch_norm_buffers_move_with_the_parameters() -> None:
    model = _to_strict(nn.BatchNorm1d(3)).to(DEVICE1)
    assert model.running_mean.device == DEVICE1
    assert model.num_batches_tracked.device == DEVICE1
    assert model.num_batches_tracked.dtype == xs.int64  # integer buffers keep their dtype


# ------------------------------------------------------------------------------------ the input's device
def test_an_input_on_another_device_is_refused_naming_the_layer_and_both_devices() -> None:
    norm = _to_strict(nn.BatchNorm1d(3)).to(DEVICE1)
    x = xs.ones((4, 3), device=CPU)
    with pytest.raises(
        ValueError,
        match=r"BatchNorm1d\(3, .*\): the input is a array_api_strict array on .*CPU_DEVICE.*, "
        r"but the layer's parameters are a array_api_strict array on .*device1",
    ):
        norm(x)
    with pytest.raises(ValueError, match=r"the input is a numpy array on cpu"):
        norm(np.ones((4, 3), np.float32))


def test_a_numpy_model_refuses_an_input_of_another_library() -> None:
    with pytest.raises(ValueError, match=r"Linear\(in_features=5.*the input is a array_api_strict"):
        _mlp()(xs.ones((2, 5), dtype=xs.float32))


def test_the_layer_named_is_the_one_inside_a_container() -> None:
    model = _to_strict(_mlp())
    model[2].to(DEVICE1)  # only the second Linear moved
    with pytest.raises(ValueError, match=r"Linear\(in_features=4, out_features=3.*device1"):
        model(xs.ones((2, 5), dtype=xs.float32, device=CPU))


def test_parameters_take_arrays_of_another_library_and_check_their_dtype() -> None:
    p = nn.Parameter(xs.ones(3, device=DEVICE1))
    assert p.data.device == DEVICE1
    with pytest.raises(TypeError, match="floating-point"):
        nn.Parameter(xs.ones(3, dtype=xs.int64))


# ------------------------------------------------------------------------------------ kernel routing
def _fast_record() -> kernels.Backend:
    """A record with a (stand-in) fast batch norm, so that routing is tested without compiling numba."""
    fast = kernels.Op(lambda *a, **k: "fast", lambda *a: "fast")
    return kernels.Backend("numba", {"batch_norm": fast})


def test_arrays_of_another_library_resolve_to_the_reference() -> None:
    x = xs.ones((4, 3))
    assert _fast_record().resolve("batch_norm", x) is kernels.REFERENCE["batch_norm"]
    assert _fast_record().resolve("batch_norm", np.ones((4, 3))).forward() == "fast"
    assert kernels.Backend("numba").resolve("adam_update", x) is kernels.REFERENCE["adam_update"]
    y, _ = kernels.REFERENCE["batch_norm"].forward(x)
    assert type(y) is type(x)


def test_cupy_normalizations_resolve_to_the_cuda_kernels(monkeypatch) -> None:
    cuda = pytest.importorskip("normlab.kernels.cuda")
    monkeypatch.setattr(
        array_api_compat, "is_cupy_array", lambda a: True
    )  # stands in for a CuPy array
    x = xs.ones((4, 3))
    for name in kernels.CUDA_OPS:
        op = _fast_record().resolve(name, x)
        assert op.forward is getattr(cuda, f"{name}_forward")
        assert op.backward is getattr(cuda, f"{name}_backward")
    assert kernels.Backend("reference").resolve("batch_norm", x) is kernels.REFERENCE["batch_norm"]
    assert _fast_record().resolve("linear", x) is kernels.REFERENCE["linear"]
    assert F.batch_norm_forward is kernels.REFERENCE["batch_norm"].forward


def test_recalibration_on_device1_equals_numpy_and_takes_numpy_batches(
    reference_kernels: None,
) -> None:
    def bn_mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(5, 4, rng=np.random.default_rng(1)), nn.BatchNorm1d(4))

    reference, model = bn_mlp(), bn_mlp().to(DEVICE1)
    rng = np.random.default_rng(5)
    batches = [rng.normal(3.0, 2.0, size=(8, 5)).astype(np.float32) for _ in range(3)]
    nn.recalibrate_batch_norm(reference, batches)
    nn.recalibrate_batch_norm(model, batches)  # NumPy batches: moved to the model's device
    for key, value in model.state_dict().items():
        assert value.device == DEVICE1, key
        np.testing.assert_allclose(
            _host(value), reference.state_dict()[key], rtol=1e-6, err_msg=key
        )
    on_device1 = [xs.asarray(b, device=DEVICE1) for b in batches]
    nn.recalibrate_batch_norm(model, on_device1)  # batches already on the device
    np.testing.assert_allclose(_host(model[1].running_mean), reference[1].running_mean, rtol=1e-6)
