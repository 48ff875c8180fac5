"""Export, folding and the doctor on a model that lives on a device.

array-api-strict's ``device1`` stands in for a GPU (it refuses NumPy conversions).  Each tool reads a NumPy
copy of the model (``normlab.nn.host.host_copy``): the result must equal the tool's result on the same model
built on NumPy, and the model on the device must be left as it was, still on the device.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import normlab as nl
from helpers.devices import DEVICE1, xs
from helpers.devices import host_copy as _host
from normlab import kernels, nn
from normlab.interop import to_onnx, to_torch
from normlab.nn.host import host_copy


@pytest.fixture(autouse=True)
def reference_kernels():
    kernels.use("reference")
    yield
    kernels.use()


def _trained() -> nn.Sequential:
    """A small CNN whose batch norms have seen two training batches (running statistics moved)."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, rng=0),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8, rng=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3, rng=2),
    )
    rng = np.random.default_rng(3)
    for _ in range(2):
        model(rng.normal(2.0, 3.0, size=(16, 1, 8, 8)).astype(np.float32))
    return model


def _pair() -> tuple[nn.Sequential, nn.Sequential]:
    """The same trained model twice: on NumPy, and moved to device1."""
    return _trained(), _trained().to(DEVICE1)


def _x() -> np.ndarray:
    return np.random.default_rng(4).normal(2.0, 3.0, size=(10, 1, 8, 8)).astype(np.float32)


def _snapshot(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: _host(v).copy() for k, v in model.state_dict().items()}


def _unchanged(model: nn.Module, before: dict[str, np.ndarray]) -> None:
    assert all(p.data.device == DEVICE1 for p in model.parameters())
    after = _snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_host_copy_is_numpy_and_leaves_the_model_on_its_device() -> None:
    numpy_model, model = _pair()
    before = _snapshot(model)
    copy = host_copy(model)
    assert copy is not model and host_copy(numpy_model) is numpy_model
    assert all(type(v) is np.ndarray for v in copy.state_dict().values())
    for key, value in copy.state_dict().items():
        np.testing.assert_array_equal(value, numpy_model.state_dict()[key])
    _unchanged(model, before)


def test_to_torch_of_a_device_model_equals_that_of_the_numpy_model() -> None:
    torch = pytest.importorskip("torch")
    numpy_model, model = _pair()
    before = _snapshot(model)
    converted, reference = to_torch(model).eval(), to_torch(numpy_model).eval()
    for (key, value), (key_ref, value_ref) in zip(
        converted.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert key == key_ref and value.device.type == "cpu"
        assert torch.equal(value, value_ref), key
    with torch.no_grad():
        out = converted(torch.from_numpy(_x())).numpy()
    np.testing.assert_allclose(out, numpy_model.eval()(_x()), rtol=1e-5, atol=1e-5)
    _unchanged(model, before)


def test_to_onnx_of_a_device_model_runs_as_the_model(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    numpy_model, model = _pair()
    before = _snapshot(model)
    with warnings.catch_warnings():
        # training mode: the eval behaviour is exported, as it warns
        warnings.simplefilter("ignore")
        to_onnx(model, tmp_path / "device.onnx", input_shape=(1, 8, 8), fold=True)
        to_onnx(numpy_model, tmp_path / "numpy.onnx", input_shape=(1, 8, 8), fold=True)
    runs = []
    for name in ("device", "numpy"):
        session = ort.InferenceSession(
            str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"]
        )
        runs.append(session.run(None, {session.get_inputs()[0].name: _x()})[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0], numpy_model.eval()(_x()), rtol=1e-5, atol=1e-5)
    _unchanged(model, before)


def test_folding_a_device_model_gives_a_folded_model_on_that_device() -> None:
    numpy_model, model = _pair()
    before = _snapshot(model)
    folded, reference = nl.fold_batch_norm(model), nl.fold_batch_norm(numpy_model)
    assert [type(m) for m in folded] == [type(m) for m in reference]
    assert all(p.data.device == DEVICE1 for p in folded.parameters())
    y = folded(xs.asarray(_x(), device=DEVICE1))
    assert y.device == DEVICE1
    np.testing.assert_allclose(_host(y), reference(_x()), rtol=1e-6, atol=1e-6)
    _unchanged(model, before)


def test_the_doctor_finds_on_a_device_what_it_finds_on_numpy() -> None:
    numpy_model, model = _pair()
    before = _snapshot(model)
    x = _x()
    findings = [
        (f.code, f.severity, f.layer, f.message)
        for f in nl.doctor(model, xs.asarray(x, device=DEVICE1)).findings
    ]
    expected = [
        (f.code, f.severity, f.layer, f.message) for f in nl.doctor(numpy_model, x).findings
    ]
    assert findings == expected
    # left in training mode: found on the device too
    assert any(code == "BN004" for code, *_ in findings)
    _unchanged(model, before)
    assert model.training  # the doctor's copy was examined, not the model
