"""The layers give the same results with the numba kernels as with the reference: outputs, input and parameter
gradients, and running statistics after several training steps, then eval outputs.

Tolerances: ``helpers.parity.KERNELS``.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.parity import KERNELS, assert_parity
from normlab import kernels, nn
from normlab.functional.norm import NormCache
from normlab.kernels.norm import KernelNormCache

LAYERS = {
    "bn1d": (lambda dt: nn.BatchNorm1d(7, dtype=dt), (16, 7)),
    "bn1d_3d": (lambda dt: nn.BatchNorm1d(7, momentum=None, dtype=dt), (8, 7, 5)),
    "bn1d_biased": (
        lambda dt: nn.BatchNorm1d(7, running_var="biased", affine=False, dtype=dt),
        (9, 7),
    ),
    "bn2d": (lambda dt: nn.BatchNorm2d(7, dtype=dt), (3, 7, 5, 5)),
    "bn2d_no_stats": (
        lambda dt: nn.BatchNorm2d(7, track_running_stats=False, dtype=dt),
        (3, 7, 5, 5),
    ),
    "bn3d": (lambda dt: nn.BatchNorm3d(4, momentum=0.3, dtype=dt), (2, 4, 3, 2, 2)),
    "in2d": (
        lambda dt: nn.InstanceNorm2d(7, affine=True, track_running_stats=True, dtype=dt),
        (3, 7, 5, 5),
    ),
    "in1d_unbatched": (lambda dt: nn.InstanceNorm1d(7, affine=True, dtype=dt), (7, 5)),
    "ln": (lambda dt: nn.LayerNorm((5, 5), dtype=dt), (3, 7, 5, 5)),
    "ln_no_bias": (lambda dt: nn.LayerNorm(7, bias=False, dtype=dt), (4, 3, 7)),
    "gn": (lambda dt: nn.GroupNorm(3, 6, dtype=dt), (3, 6, 5, 5)),
    "rms": (lambda dt: nn.RMSNorm(7, dtype=dt), (5, 7)),
}


@pytest.fixture
def restore_selection():
    yield
    kernels.use()  # back to what NORMLAB_KERNELS says


def close(a, e, dtype, what):
    assert_parity(a, e, KERNELS, what, dtype=dtype)


def run_steps(backend, make_layer, shape, dtype, steps=4):
    """Train ``steps`` forward/backward passes, then one eval pass; return everything observable."""
    kernels.use(backend)
    layer = make_layer(dtype)
    rng = np.random.default_rng(0)
    record = []
    for _ in range(steps):
        x = rng.normal(2.0, 3.0, size=shape).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        y = layer(x)
        cache_type = type(layer._cache)
        dx = layer.backward(dy)
        record += [("y", y), ("dx", dx)]
    record += [(f"grad {n}", p.grad) for n, p in layer.named_parameters()]
    record += [(f"buffer {n}", np.asarray(b)) for n, b in layer.named_buffers()]
    layer.eval()
    record.append(("eval y", layer(rng.normal(2.0, 3.0, size=shape).astype(dtype))))
    return record, cache_type


@pytest.mark.usefixtures("restore_selection")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_same_with_kernels_and_reference(name, dtype):
    make_layer, shape = LAYERS[name]
    fast, fast_cache = run_steps("numba", make_layer, shape, dtype)
    ref, ref_cache = run_steps("reference", make_layer, shape, dtype)
    assert fast_cache is KernelNormCache and ref_cache is NormCache
    assert [k for k, _ in fast] == [k for k, _ in ref]
    for (what, a), (_, e) in zip(fast, ref, strict=True):
        if what.startswith("buffer num_batches"):
            assert a == e
        else:
            close(a, e, dtype, what)


@pytest.mark.usefixtures("restore_selection")
def test_backward_uses_the_ops_of_its_forward():
    """Switching ops between forward and backward is harmless: the cache carries its own backward."""
    x = np.random.default_rng(1).normal(size=(8, 3, 4)).astype(np.float32)
    dy = np.ones_like(x)
    dxs = []
    for first, second in (("reference", "numba"), ("numba", "reference")):
        bn = nn.BatchNorm1d(3)
        kernels.use(first)
        bn(x)
        kernels.use(second)
        dxs.append(bn.backward(dy))
    close(dxs[0], dxs[1], np.float32, "dx")


@pytest.mark.usefixtures("restore_selection")
def test_nan_batch_leaves_running_stats_alone_with_kernels():
    kernels.use("numba")
    bn = nn.BatchNorm1d(3)
    x = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
    x[0, 1] = np.nan
    with pytest.warns(RuntimeWarning, match=r"channel\(s\) \[1\]"):
        y = bn(x)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3, np.float32))
    assert int(bn.num_batches_tracked) == 0


@pytest.mark.usefixtures("restore_selection")
def test_empty_batch_with_kernels():
    kernels.use("numba")
    bn = nn.BatchNorm2d(3)
    y = bn(np.empty((0, 3, 4, 4), np.float32))
    assert y.shape == (0, 3, 4, 4)
    assert bn.backward(np.empty_like(y)).shape == y.shape
    assert int(bn.num_batches_tracked) == 0
