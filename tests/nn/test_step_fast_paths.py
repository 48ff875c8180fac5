"""The training-step shortcuts change no number: batch norm fused with the activation after it
(:func:`normlab.nn.fuse`), and a first layer that skips its input gradient (``requires_input_grad_(False)``).

Both are compared bit for bit with the plain path, under the numba kernels and under the reference, for a
few training steps (outputs, every parameter gradient, running statistics) and an eval pass.
"""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from normlab import kernels, nn, optim


@pytest.fixture(autouse=True)
def restore_selection():
    yield
    kernels.use()


def _mlp(dtype) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(12, 9, rng=0, dtype=dtype),
        nn.BatchNorm1d(9, dtype=dtype),
        nn.ReLU(),
        nn.Linear(9, 7, rng=1, dtype=dtype),
        nn.BatchNorm1d(7, dtype=dtype),
        nn.Sigmoid(),
        nn.Linear(7, 3, rng=2, dtype=dtype),
    )


def _cnn(dtype) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, rng=0, dtype=dtype),
        nn.BatchNorm2d(4, dtype=dtype),
        nn.Sigmoid(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 5, 3, rng=1, dtype=dtype),
        nn.BatchNorm2d(5, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(5, 3, rng=2, dtype=dtype),
    )


MODELS = {"mlp": (_mlp, (10, 12)), "cnn": (_cnn, (6, 2, 9, 9))}


def _train(
    model: nn.Sequential, shape, dtype, steps: int = 3, source: nn.Module | None = None
) -> list[tuple[str, np.ndarray]]:
    """A few SGD steps and an eval pass; everything observable, in order.  ``source``: the model whose
    parameter and buffer names to report (``model`` is made from it by ``nn.fuse``), else ``model``."""
    source = model if source is None else source
    rng = np.random.default_rng(0)
    opt = optim.SGD(model.parameters(), lr=0.1)
    record = []
    for step in range(steps):
        x = rng.normal(1.0, 2.0, size=shape).astype(dtype)
        opt.zero_grad()
        y = model(x)
        dx = model.backward(rng.normal(size=y.shape).astype(dtype))
        record.append((f"y {step}", y))
        if dx is not None:
            record.append((f"dx {step}", dx))
        record += [(f"grad {n} {step}", p.grad.copy()) for n, p in source.named_parameters()]
        opt.step()
    record += [(f"buffer {n}", np.asarray(b)) for n, b in source.named_buffers()]
    model.eval()
    with nl.no_grad():
        record.append(("eval y", model(rng.normal(size=shape).astype(dtype))))
    return record


def _same(a: list, b: list) -> None:
    assert [k for k, _ in a] == [k for k, _ in b]
    for (what, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=what)


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_batch_norm_activation_changes_no_number(name, dtype, backend):
    kernels.use(backend)
    build, shape = MODELS[name]
    source = build(dtype)
    fused = nn.fuse(source)
    assert sum(isinstance(layer, nn.BatchNormAct) for layer in fused) == 2
    plain = build(dtype)
    _same(_train(fused, shape, dtype, source=source), _train(plain, shape, dtype))


def test_fusion_skips_the_activation_layer_and_backward_follows_the_forward():
    kernels.use("numba")
    source = _mlp(np.float32)
    model = nn.fuse(source)
    y = model(np.ones((4, 12), np.float32) + np.arange(12, dtype=np.float32))
    assert (
        source[2]._cache is None and source[5]._cache is None
    )  # ReLU, Sigmoid: folded into the BN
    model.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="backward needs a forward pass first"):
        model.backward(np.ones_like(y))


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_skipping_the_input_gradient_changes_no_parameter_gradient(name, backend):
    kernels.use(backend)
    build, shape = MODELS[name]
    with_dx = _train(build(np.float64), shape, np.float64)
    without = _train(build(np.float64).requires_input_grad_(False), shape, np.float64)
    assert any(k.startswith("dx") for k, _ in with_dx)
    _same([r for r in with_dx if not r[0].startswith("dx")], without)


def test_requires_input_grad_reaches_the_first_layer_only():
    model = _mlp(np.float32).requires_input_grad_(False)
    assert not model.requires_input_grad and not model[0].requires_input_grad
    assert all(layer.requires_input_grad for layer in list(model)[1:])
    assert model(np.ones((4, 12), np.float32)).shape == (4, 3)
    assert model.backward(np.ones((4, 3), np.float32)) is None
    model.requires_input_grad_(True)
    model(np.ones((4, 12), np.float32))
    assert model.backward(np.ones((4, 3), np.float32)).shape == (4, 12)


def test_fit_skips_the_input_gradient_and_restores_the_setting():
    model = _mlp(np.float32)
    seen = []
    backward = model[0].backward
    model[0].backward = lambda g: seen.append(model[0].requires_input_grad) or backward(g)
    x = np.random.default_rng(0).normal(size=(16, 12)).astype(np.float32)
    nl.fit(model, x, np.arange(16) % 3, optimizer=optim.SGD(model.parameters()), verbose=0)
    assert seen and not any(seen)
    assert model.requires_input_grad and model[0].requires_input_grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_numba_and_reference_train_the_same_model(name, dtype):
    """Every layer's fast path against the reference, inside a model: to rounding (float32 1e-4, float64
    1e-10; the convolution products sum in another order, the sigmoid's exp differs by ulps)."""
    build, shape = MODELS[name]
    runs = []
    for backend in ("numba", "reference"):
        kernels.use(backend)
        runs.append(_train(build(dtype), shape, dtype))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert [k for k, _ in runs[0]] == [k for k, _ in runs[1]]
    for (what, a), (_, e) in zip(*runs, strict=True):
        scale = max(1.0, float(np.max(np.abs(e))))
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol * scale, err_msg=what)


def test_layers_keep_the_cache_of_the_selected_ops():
    from normlab import functional as F
    from normlab.kernels import layers as K

    x = np.random.default_rng(0).normal(size=(2, 2, 6, 6)).astype(np.float32)
    conv = nn.Conv2d(2, 3, 3, rng=0)
    for backend, expected in (("numba", K.FastConv2dCache), ("reference", F.Conv2dCache)):
        kernels.use(backend)
        conv(x)
        cache, backward, _ = conv._cache  # (op's cache, op's backward, the weight's cache)
        assert isinstance(cache, expected)
        assert backward is kernels.resolve("conv2d", x).backward
        assert conv.backward(np.ones((2, 3, 4, 4), np.float32)).shape == x.shape
