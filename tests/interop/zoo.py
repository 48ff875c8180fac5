"""The networks the interop tests run through: every model in examples/ and the lab's networks, each with
non-trivial normalization state (random running statistics and affine parameters)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from normlab import nn
from normlab.config import build_model, load_config
from normlab.lab.common import mlp
from normlab.lab.experiments import batch_size, cnn_trio, eval_pitfalls, lenet_bn

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FLAT, IMAGE = (784,), (1, 28, 28)


def randomize_norm_state(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics (as after training) and affine parameters on every normalization layer,
    so that folding and conversion have something to get wrong.  Returns ``model``."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        w, b = m._parameters.get("weight"), m._parameters.get("bias")
        is_norm = isinstance(m, nn.Module) and "Norm" in type(m).__name__
        if is_norm and w is not None:
            w.data = rng.uniform(0.5, 1.5, w.shape).astype(w.dtype)
        if is_norm and b is not None:
            b.data = rng.normal(0, 0.3, b.shape).astype(b.dtype)
        if m._buffers.get("running_mean") is not None:
            m.running_mean = rng.normal(0, 0.5, m.running_mean.shape).astype(m.running_mean.dtype)
            m.running_var = rng.uniform(0.5, 2.0, m.running_var.shape).astype(m.running_var.dtype)
            m.num_batches_tracked = np.array(5, dtype=np.int64)
    return model


def _example(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return build_model(load_config(EXAMPLES / name), 784, 10)

    return build


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


# name -> (builder, input shape without the batch axis)
NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "example:mlp_batchnorm": (_example("mlp_batchnorm.toml"), FLAT),
    "example:cnn_groupnorm": (_example("cnn_groupnorm.toml"), IMAGE),
    "bn-vs-plain:bn": (lambda: mlp([784, 128, 64, 10], norm="bn", rng=_rng()), FLAT),
    "bn-vs-plain:plain": (lambda: mlp([784, 128, 64, 10], rng=_rng()), FLAT),
    "mlp:ln-tanh": (lambda: mlp([784, 32, 10], norm="ln", activation="tanh", rng=_rng()), FLAT),
    "bn-paper-mnist:bn": (
        lambda: mlp(
            [784, 100, 100, 100, 10], norm="bn", activation="sigmoid", weight_std=0.1, rng=_rng()
        ),
        FLAT,
    ),
    "lenet-bn": (lambda: lenet_bn.lenet(batch_norm=True, rng=_rng()), IMAGE),
    "lenet": (lambda: lenet_bn.lenet(batch_norm=False, rng=_rng()), IMAGE),
    "cnn-trio:logistic+bn": (
        lambda: cnn_trio.build_model("logistic", True, cnn_trio.TINY, rng=_rng()),
        IMAGE,
    ),
    "cnn-trio:wide+bn": (
        lambda: cnn_trio.build_model("wide", True, cnn_trio.TINY, rng=_rng()),
        IMAGE,
    ),
    "cnn-trio:deep+bn": (
        lambda: cnn_trio.build_model("deep", True, cnn_trio.TINY, rng=_rng()),
        IMAGE,
    ),
    **{
        f"batch-size:{kind}": (
            (lambda kind=kind: batch_size.small_cnn(kind, [8, 16], 4, rng=_rng())),
            IMAGE,
        )
        for kind in ("bn", "gn", "ln", "in")
    },
    "eval-pitfalls:cnn": (lambda: eval_pitfalls.small_cnn([8, 16], _rng()), IMAGE),
}

# networks with a layer that has no PyTorch/ONNX counterpart (the lab's own PadBottomRight)
NOT_CONVERTIBLE = {"cnn-trio:deep+bn": "PadBottomRight"}


def network(name: str, dtype: type = np.float32) -> tuple[nn.Module, tuple[int, ...]]:
    build, shape = NETWORKS[name]
    model = build().to(dtype)
    return randomize_norm_state(model), shape


def inputs(
    shape: tuple[int, ...], batch: int = 7, dtype: type = np.float32, seed: int = 1
) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype(dtype)
