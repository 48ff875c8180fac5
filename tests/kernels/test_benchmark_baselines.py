"""The benchmark's naive NumPy baselines compute the same gradients as the reference, so the benchmark
compares equal work (nothing is timed here)."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks import epoch_cases, naive
from benchmarks.registry import IMPLEMENTATIONS, all_cases

from normlab import functional as F


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 2.0, size=shape), rng.normal(size=shape)


def _close(a, e):
    np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(16, 5), (4, 5, 3, 3)])
def test_naive_batch_norm_equals_reference(shape):
    x, dy = _data(shape)
    w, b = np.linspace(0.5, 1.5, 5), np.linspace(-1, 1, 5)
    if len(shape) == 2:
        out, cache = naive.batchnorm_forward(x, w, b)
        dx, dw, db = naive.batchnorm_backward(dy, cache)
    else:
        out, cache = naive.batchnorm2d_forward(x, w, b)
        dx, dw, db = naive.batchnorm2d_backward(dy, cache)
    y, ref_cache = F.batch_norm_forward(x, w, b, eps=naive.EPS)
    for a, e in zip((out, dx, dw, db), (y, *F.batch_norm_backward(dy, ref_cache)), strict=True):
        _close(a, e)


def test_naive_chain_equals_reference_for_layer_group_rms():
    x, dy = _data((3, 6, 4, 4))
    w = np.linspace(0.5, 1.5, 6)
    # layer norm over (C, H, W), no affine
    out, cache = naive.norm_forward(x, (1, 2, 3), 1.0, 0.0)
    y, ref = F.layer_norm_forward(x, (6, 4, 4), eps=naive.EPS)
    _close(out, y)
    _close(naive.norm_backward(dy, cache, (0,))[0], F.layer_norm_backward(dy, ref).dx)
    # group norm, 3 groups, affine per channel
    view, pview = (3, 3, 2, 16), (1, 3, 2, 1)
    out, cache = naive.norm_forward(x.reshape(view), (2, 3), w.reshape(pview), w.reshape(pview) - 1)
    y, ref = F.group_norm_forward(x, 3, w, w - 1, eps=naive.EPS)
    _close(out.reshape(x.shape), y)
    dx, dw, db = naive.norm_backward(dy.reshape(view), cache, (0, 3))
    grads = F.group_norm_backward(dy, ref)
    _close(dx.reshape(x.shape), grads.dx)
    _close(dw.reshape(-1), grads.dweight)
    _close(db.reshape(-1), grads.dbias)
    # RMS norm over the last axis
    out, cache = naive.norm_forward(x, (3,), np.ones(4), 0.0, center=False)
    y, ref = F.rms_norm_forward(x, (4,), np.ones(4), eps=naive.EPS)
    _close(out, y)
    _close(naive.norm_backward(dy, cache, (0, 1, 2))[0], F.rms_norm_backward(dy, ref).dx)


def test_every_row_names_its_implementations():
    rows = all_cases()
    assert len({r.name for r in rows}) == len(rows)
    assert {r.group for r in rows} >= {
        "batch_norm",
        "layer_norm",
        "group_norm",
        "instance_norm",
        "rms_norm",
    }
    for r in rows:
        if r.group == "epoch":  # end to end: no bandwidth, but an untimed check of the losses
            assert r.bytes_moved == 0 and r.check is not None
        elif r.bytes_moved:  # a bandwidth row: x, y, dy, dx and x again, float32
            assert r.bytes_moved == 5 * 4 * int(np.prod(r.shape))
    norm_groups = {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"}
    assert all(r.bytes_moved for r in rows if r.group in norm_groups)
    assert [r.name for r in rows if r.group == "epoch"] == ["MLP epoch", "LeNet-BN epoch"]
    assert IMPLEMENTATIONS == ("normlab", "torch", "naive")


@pytest.mark.parametrize("setup", [epoch_cases.MLP, epoch_cases.LENET], ids=lambda s: s.name)
def test_epoch_rows_time_the_same_model_in_both_libraries(setup):
    """Same initial weights, same batches: the first training forward's logits agree (float32 through five
    layers and four batch norms: 1e-3; a weight not copied would differ at order 1)."""
    import torch

    ours, theirs = epoch_cases.build_pair(setup)
    xb, yb = epoch_cases.batches(setup.images, setup.batch_size)[0]
    logits = ours(xb)
    expected = theirs(torch.from_numpy(xb)).detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3)
    assert len(epoch_cases.batches(setup.images, setup.batch_size)) == -(-6000 // setup.batch_size)
    assert yb.dtype == np.int64
