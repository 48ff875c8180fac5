"""Every normalization layer on a second device computes what the NumPy layer does.

array-api-strict's ``device1`` stands in for a GPU: it refuses to mix devices and to become a NumPy
array, so any NumPy call left in a layer's forward, backward or running-statistics update fails here.
Both models run the reference kernels (the fused numba kernels take NumPy arrays only).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.device_cases import LAYERS, check_layer
from helpers.devices import DEVICE1, STRICT, xs
from helpers.devices import host_copy as _host
from helpers.devices import on_device1 as _on_device1
from normlab import kernels, nn


@pytest.fixture(autouse=True)
def reference_kernels():
    kernels.use("reference")
    yield
    kernels.use()


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_layer_on_device1_trains_and_evaluates_as_the_numpy_layer(name: str) -> None:
    check_layer(name, STRICT)


def test_non_finite_statistics_on_device1_warn_naming_the_channels_and_skip_the_update() -> None:
    layer = _on_device1(nn.BatchNorm1d(3).to(np.float64))
    x = np.ones((4, 3)) * np.arange(4)[:, None]
    x[1, 2] = np.nan
    with pytest.warns(
        RuntimeWarning,
        match=r"BatchNorm1d\(3\): batch statistics are not finite "
        r"in channel\(s\) \[2\]; running statistics were not updated",
    ):
        layer(xs.asarray(x, device=DEVICE1))
    np.testing.assert_array_equal(_host(layer.running_mean), np.zeros(3))
    assert int(layer.num_batches_tracked) == 0


def test_non_finite_rows_of_a_layer_norm_on_device1_are_named() -> None:
    layer = _on_device1(nn.LayerNorm(3).to(np.float64))
    x = np.ones((2, 2, 3)) * np.arange(3)
    x[1, 0, 1] = np.inf
    with pytest.warns(RuntimeWarning, match=r"LayerNorm\(\(3,\)\): .* in row\(s\) \[\(1, 0\)\]"):
        y = layer(xs.asarray(x, device=DEVICE1))
    assert np.isnan(_host(y)[1, 0]).all() and np.isfinite(_host(y)[0]).all()


def test_reset_keeps_the_buffers_on_device1() -> None:
    layer = _on_device1(nn.BatchRenorm2d(2, renorm_momentum=0.1))
    layer(
        xs.asarray(
            np.random.default_rng(0).normal(size=(3, 2, 2, 2)), dtype=xs.float32, device=DEVICE1
        )
    )
    layer.reset_parameters()
    for key, b in layer.named_buffers():
        assert b.device == DEVICE1, key
    assert int(layer.num_batches_tracked) == 0
    np.testing.assert_array_equal(_host(layer.running_std), np.ones(2, np.float32))
