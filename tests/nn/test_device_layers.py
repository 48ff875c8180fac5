"""Every normalization layer on a second device computes what the NumPy layer does.

array-api-strict's ``device1`` stands in for a GPU: it refuses to mix devices and to become a NumPy
array, so any NumPy call left in a layer's forward, backward or running-statistics update fails here.
Both models run the reference kernels (the fused numba kernels take NumPy arrays only).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from helpers.devices import DEVICE1, xs
from helpers.devices import host_copy as _host
from helpers.devices import on_device1 as _on_device1
from normlab import functional as F
from normlab import kernels, nn


@pytest.fixture(autouse=True)
def reference_kernels():
    kernels.use("reference")
    yield
    kernels.use()


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    """Affine parameters away from 1 and 0, so their gradients and effect are tested."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = p.data + rng.normal(scale=0.3, size=p.shape)
    return model


FIXED = F.RenormClipping(1.5, 0.5)
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "bn1d": (lambda: nn.BatchNorm1d(3), (6, 3)),
    "bn1d-seq": (lambda: nn.BatchNorm1d(3, momentum=None), (4, 3, 5)),
    "bn2d": (lambda: nn.BatchNorm2d(3), (4, 3, 3, 2)),
    "bn2d-biased": (lambda: nn.BatchNorm2d(3, running_var="biased"), (4, 3, 2, 2)),
    "bn3d": (lambda: nn.BatchNorm3d(2), (2, 2, 2, 3, 2)),
    "bn2d-ghost": (lambda: nn.BatchNorm2d(3, virtual_batch_size=2), (6, 3, 2, 2)),
    "bn1d-no-stats": (lambda: nn.BatchNorm1d(3, track_running_stats=False), (5, 3)),
    "ln": (lambda: nn.LayerNorm((3, 4)), (5, 3, 4)),
    "ln-no-bias": (lambda: nn.LayerNorm(4, bias=False), (2, 3, 4)),
    "gn": (lambda: nn.GroupNorm(2, 4), (3, 4, 3, 2)),
    "in1d": (lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True), (4, 3, 5)),
    "in1d-unbatched": (lambda: nn.InstanceNorm1d(3, affine=True), (3, 5)),
    "in2d": (lambda: nn.InstanceNorm2d(2, affine=True, track_running_stats=True), (3, 2, 3, 3)),
    "in3d": (lambda: nn.InstanceNorm3d(2, track_running_stats=True), (2, 2, 2, 2, 3)),
    "rms": (lambda: nn.RMSNorm(4), (3, 2, 4)),
    "renorm1d": (lambda: nn.BatchRenorm1d(3, renorm_clipping=FIXED), (6, 3)),
    "renorm2d-warmup": (lambda: nn.BatchRenorm2d(2), (4, 2, 2, 2)),
    "renorm2d-sep": (
        lambda: nn.BatchRenorm2d(2, renorm_clipping=FIXED, renorm_momentum=0.2),
        (4, 2, 3, 2),
    ),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_layer_on_device1_trains_and_evaluates_as_the_numpy_layer(name: str) -> None:
    make, shape = LAYERS[name]
    reference = _randomized(make().to(np.float64), 1)
    layer = _on_device1(_randomized(make().to(np.float64), 1))
    rng = np.random.default_rng(2)
    for step in range(3):
        x = rng.normal(loc=step, scale=1 + step, size=shape)
        dy = rng.normal(size=shape)
        y_ref, y = reference(x), layer(xs.asarray(x, device=DEVICE1))
        assert y.device == DEVICE1
        np.testing.assert_allclose(_host(y), y_ref, rtol=1e-12, atol=1e-12)
        dx_ref, dx = reference.backward(dy), layer.backward(xs.asarray(dy, device=DEVICE1))
        assert dx.device == DEVICE1
        np.testing.assert_allclose(_host(dx), dx_ref, rtol=1e-10, atol=1e-12)
        for p_ref, p in zip(reference.parameters(), layer.parameters(), strict=True):
            assert p.grad.device == DEVICE1
            np.testing.assert_allclose(_host(p.grad), p_ref.grad, rtol=1e-10, atol=1e-12)
        reference.zero_grad()
        layer.zero_grad()
    buffers_ref, buffers = dict(reference.named_buffers()), dict(layer.named_buffers())
    assert buffers.keys() == buffers_ref.keys()
    for key, b in buffers.items():
        assert b.device == DEVICE1, key
        np.testing.assert_allclose(_host(b), buffers_ref[key], rtol=1e-12, atol=1e-14, err_msg=key)
    if "num_batches_tracked" in buffers:
        assert int(buffers["num_batches_tracked"]) == 3
        assert buffers["num_batches_tracked"].dtype == xs.int64
    reference.eval()
    layer.eval()
    x = rng.normal(size=shape)
    np.testing.assert_allclose(
        _host(layer(xs.asarray(x, device=DEVICE1))), reference(x), rtol=1e-12, atol=1e-12
    )


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
