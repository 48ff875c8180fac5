"""Every network the lab builds trains on a second device as it does on NumPy.

array-api-strict's ``device1`` stands in for a GPU (it refuses NumPy conversions and mixing devices).  Each
builder's network, in float64, is moved there with ``Module.to`` and trained for one epoch by ``fit``
(momentum SGD, reference kernels, three batches); the parameters, the running statistics and ``predict``'s
outputs must equal the same run on NumPy to 1e-10.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import normlab as nl
from helpers.devices import DEVICE1
from helpers.devices import host_copy as _host
from normlab import config, kernels, nn, optim
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


@pytest.fixture(autouse=True)
def reference_kernels():
    kernels.use("reference")
    yield
    kernels.use()


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> nn.History:
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return nl.fit(model, x, y, optimizer=opt, epochs=1, batch_size=8, seed=4, verbose=0)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_lab_network_trains_on_device1_as_on_numpy(name: str) -> None:
    build, shape = NETWORKS[name]
    reference = build(np.random.default_rng(0)).to(np.float64)
    model = build(np.random.default_rng(0)).to(np.float64).to(DEVICE1)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(24, *shape)), rng.integers(0, 10, 24)

    history_ref, history = _train(reference, x, y), _train(model, x, y)

    np.testing.assert_allclose(history.epochs[0]["loss"], history_ref.epochs[0]["loss"], rtol=1e-10)
    for (key, value), (key_ref, value_ref) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert key == key_ref
        np.testing.assert_allclose(_host(value), value_ref, rtol=1e-10, atol=1e-12, err_msg=key)
    assert all(p.data.device == DEVICE1 for p in model.parameters())
    np.testing.assert_allclose(
        nl.predict(model, x), nl.predict(reference, x), rtol=1e-10, atol=1e-12
    )
