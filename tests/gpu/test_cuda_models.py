"""The device suite on a real GPU: every layer, every lab network, ``fit``, checkpoints and the out-of-memory
error with the model on ``"cuda"`` (CuPy arrays), against NumPy.

The same cases and comparisons run on every CI machine with array-api-strict's ``device1`` in place of the GPU
(``tests/nn/test_device_layers.py``, ``tests/lab/test_networks_on_device.py``); here they run with the CUDA
kernels (``NORMLAB_KERNELS`` unset) and with the reference (``kernels.use("reference")``) on CuPy arrays.
Skipped, with the reason, where there is no CUDA device or no CuPy (``pip install -e '.[gpu]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import normlab as nl
from gpu.cuda_cases import cupy_on_a_real_gpu
from helpers.device_cases import LAYERS, NETWORKS, Tolerance, check_layer, check_network
from helpers.devices import Device
from normlab import kernels, nn

# float64 throughout: the CUDA kernels sum in another order than NumPy (two-stage reductions)
CUDA_TOLERANCE = Tolerance(output=1e-9, grad=1e-8, trained=1e-8, atol=1e-10)


@pytest.fixture(params=["cuda-kernels", "reference"])
def gpu(request) -> Device:
    cupy = cupy_on_a_real_gpu()
    kernels.use("reference" if request.param == "reference" else "auto")
    yield Device(
        target="cuda",
        put=cupy.asarray,
        get=cupy.asnumpy,
        holds=lambda a: isinstance(a, cupy.ndarray) and a.device.id == 0,
    )
    kernels.use()


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_layer_on_the_gpu_trains_and_evaluates_as_the_numpy_layer(name: str, gpu: Device) -> None:
    check_layer(name, gpu, CUDA_TOLERANCE)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_lab_network_trains_on_the_gpu_as_on_numpy(name: str, gpu: Device) -> None:
    check_network(name, gpu, CUDA_TOLERANCE)


def test_a_checkpoint_written_from_the_gpu_loads_on_numpy_and_back(
    tmp_path: Path, gpu: Device
) -> None:
    model = nn.Sequential(
        nn.Linear(4, 6, rng=0), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3, rng=1)
    )
    model.to("cuda")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 32)
    nl.fit(
        model, x, y, optimizer=nl.optim.Adam(model.parameters()), epochs=1, batch_size=8, verbose=0
    )
    path = nl.save(model, tmp_path / "gpu.safetensors")
    on_host = nl.load(path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(gpu.get(value), on_host.state_dict()[key])
    back = nl.load(path).to("cuda")
    np.testing.assert_array_equal(nl.predict(back, x), nl.predict(on_host, x))


def test_out_of_gpu_memory_names_the_layer_and_the_size() -> None:
    cupy = cupy_on_a_real_gpu()
    model = nn.Sequential(nn.Linear(8, 64), nn.BatchNorm1d(64)).to("cuda")
    # 2**30 rows (within cuBLAS's 32-bit sizes): the (rows, 64) float32 output is 256 GiB, more than an
    # H200's 141 GiB; the input is a broadcast view (32 bytes), which CuPy may first copy (32 GiB, fits)
    rows = 2**30
    x = cupy.broadcast_to(cupy.ones(8, dtype=cupy.float32), (rows, 8))
    with pytest.raises(nl.OutOfMemoryError) as info:
        model(x)
    err = info.value
    assert (err.phase, err.path, err.device) == ("forward", "0", "cuda:0")
    assert err.requested is not None and err.requested >= rows * 8 * 4
    assert "free of" in str(err)  # what the GPU had, from cudaMemGetInfo
