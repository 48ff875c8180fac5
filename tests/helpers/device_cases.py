"""The device suite's cases, shared by the tests on array-api-strict's ``device1`` (every CI run) and on a
real GPU with CuPy (``tests/gpu/test_cuda_models.py``, skipped without one): the same layers and networks, the
same comparison with NumPy, only the device and the tolerances differ.

A :class:`helpers.devices.Device` says how to reach the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import normlab as nl
from helpers.devices import Device
from normlab import config, nn, optim
from normlab import functional as F
from normlab.backend import namespace
from normlab.lab.experiments import (
    accumulation,
    batch_size,
    bn_order,
    cnn_trio,
    eval_pitfalls,
    ghost_bn,
    landscape,
    lenet_bn,
    renorm,
    sync_bn,
)


@dataclass(frozen=True)
class Tolerance:
    """rtol of outputs (and buffers), of gradients, and of trained parameters; atol alongside."""

    output: float = 1e-12
    grad: float = 1e-10
    trained: float = 1e-10
    atol: float = 1e-12


def randomized(model: nn.Module, seed: int) -> nn.Module:
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


def check_layer(name: str, device: Device, tol: Tolerance = Tolerance()) -> None:
    """Layer ``name`` (float64) on ``device`` over 3 training steps and an eval call equals the NumPy
    layer: outputs, input and parameter gradients, buffers (``num_batches_tracked`` included)."""
    make, shape = LAYERS[name]
    reference = randomized(make().to(np.float64), 1)
    layer = randomized(make().to(np.float64), 1).to(device.target)
    rng = np.random.default_rng(2)
    for step in range(3):
        x = rng.normal(loc=step, scale=1 + step, size=shape)
        dy = rng.normal(size=shape)
        y_ref, y = reference(x), layer(device.put(x))
        assert device.holds(y)
        np.testing.assert_allclose(device.get(y), y_ref, rtol=tol.output, atol=tol.atol)
        dx_ref, dx = reference.backward(dy), layer.backward(device.put(dy))
        assert device.holds(dx)
        np.testing.assert_allclose(device.get(dx), dx_ref, rtol=tol.grad, atol=tol.atol)
        for p_ref, p in zip(reference.parameters(), layer.parameters(), strict=True):
            assert device.holds(p.grad)
            np.testing.assert_allclose(device.get(p.grad), p_ref.grad, rtol=tol.grad, atol=tol.atol)
        reference.zero_grad()
        layer.zero_grad()
    buffers_ref, buffers = dict(reference.named_buffers()), dict(layer.named_buffers())
    assert buffers.keys() == buffers_ref.keys()
    for key, b in buffers.items():
        assert device.holds(b), key
        np.testing.assert_allclose(
            device.get(b), buffers_ref[key], rtol=tol.output, atol=tol.atol * 1e-2, err_msg=key
        )
    if "num_batches_tracked" in buffers:
        count = buffers["num_batches_tracked"]
        assert int(count) == 3 and count.dtype == namespace(count).int64
    reference.eval()
    layer.eval()
    x = rng.normal(size=shape)
    np.testing.assert_allclose(
        device.get(layer(device.put(x))), reference(x), rtol=tol.output, atol=tol.atol
    )


IMAGE, FLAT = (1, 28, 28), (784,)

# name -> (builder of the network from an rng, the shape of one input)
NETWORKS: dict[str, tuple[Callable[[np.random.Generator], nn.Module], tuple[int, ...]]] = {
    "mlp-bn": (lambda rng: config.mlp([784, 32, 16, 10], norm="bn", rng=rng), FLAT),
    "mlp-ln-gelu": (
        lambda rng: config.mlp([784, 16, 10], norm="ln", activation="tanh", rng=rng),
        FLAT,
    ),
    "cnn-trio-logistic": (
        lambda rng: cnn_trio.build_model("logistic", True, cnn_trio.TINY, rng=rng),
        IMAGE,
    ),
    "cnn-trio-wide": (
        lambda rng: cnn_trio.build_model("wide", True, cnn_trio.TINY, rng=rng),
        IMAGE,
    ),
    "cnn-trio-deep": (
        lambda rng: cnn_trio.build_model("deep", False, cnn_trio.TINY, rng=rng),
        IMAGE,
    ),
    "lenet-bn": (lambda rng: lenet_bn.lenet(batch_norm=True, rng=rng), IMAGE),
    **{
        f"batch-size-cnn-{norm}": (
            lambda rng, norm=norm: batch_size.small_cnn(norm, [4, 8], 2, rng=rng),
            IMAGE,
        )
        for norm in ("bn", "gn", "gn-ws", "ln", "in", "renorm", "ghost")
    },
    **{
        f"batch-size-mlp-{norm}": (
            lambda rng, norm=norm: batch_size.small_mlp(
                norm, {"hidden": [16, 8], "groups": 4, "ghost_batch": 2}, rng=rng
            ),
            FLAT,
        )
        for norm in ("bn", "renorm", "ghost", "gn", "ln")
    },
    "renorm-schedule": (
        lambda rng: renorm.build("renorm", renorm.TINY | {"hidden": [16, 8]}, 3, rng=rng),
        FLAT,
    ),
    "bn-order-cnn-after": (
        lambda rng: bn_order.build("cnn", "after", bn_order.TINY | {"channels": [4, 8]}, rng=rng),
        IMAGE,
    ),
    "eval-pitfalls-cnn": (lambda rng: eval_pitfalls.small_cnn([4, 8], rng), IMAGE),
    "ghost-bn": (lambda rng: ghost_bn.build([16, 8], 2, rng=rng), FLAT),
    "landscape-bn": (lambda rng: landscape.build("bn", [16, 8], rng=rng), FLAT),
    "accumulation": (lambda rng: accumulation.build([16, 8], rng), FLAT),
    "sync-bn-gn": (lambda rng: sync_bn.mlp("gn", 4, 16, 4, rng=rng), FLAT),
}


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> nl.History:
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return nl.fit(model, x, y, optimizer=opt, epochs=1, batch_size=8, seed=4, verbose=0)


def check_network(name: str, device: Device, tol: Tolerance = Tolerance()) -> None:
    """Lab network ``name`` (float64) trained for one epoch by ``fit`` on ``device`` (momentum SGD, three
    batches) equals the NumPy run: logged loss, every parameter and buffer, ``predict``'s outputs."""
    build, shape = NETWORKS[name]
    reference = build(np.random.default_rng(0)).to(np.float64)
    model = build(np.random.default_rng(0)).to(np.float64).to(device.target)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(24, *shape)), rng.integers(0, 10, 24)

    history_ref, history = _train(reference, x, y), _train(model, x, y)

    np.testing.assert_allclose(
        history.epochs[0]["loss"], history_ref.epochs[0]["loss"], rtol=tol.trained
    )
    for (key, value), (key_ref, value_ref) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert key == key_ref
        np.testing.assert_allclose(
            device.get(value), value_ref, rtol=tol.trained, atol=tol.atol, err_msg=key
        )
    assert all(device.holds(p.data) for p in model.parameters())
    np.testing.assert_allclose(
        nl.predict(model, x), nl.predict(reference, x), rtol=tol.trained, atol=tol.atol
    )
