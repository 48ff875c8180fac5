"""Building blocks the experiments share: data as the experiments want it, MLPs with or without a
normalizer, a plain training step, accuracy, and small plotting helpers.  Only normlab's public API is used.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import normlab as nl
from normlab import nn
from normlab.data import Labeled, flatten, load_mnist, scale_01
from normlab.lab.base import RunContext

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


@dataclass
class MnistData:
    """MNIST as flat float32 vectors in [0, 1] (``x``: (N, 784)) or images (N, 1, 28, 28)."""

    train: Labeled
    val: Labeled
    test: Labeled
    source: str  # a sentence for the report: which data this is


def mnist(ctx: RunContext, *, images: bool = False) -> MnistData:
    """The MNIST parts for ``ctx.data``: the bundled sample (6,000 / 2,000 / 2,000 images of the official
    test split) or the full data set (50,000 / 10,000 / 10,000), scaled to [0, 1]."""
    splits = load_mnist(ctx.data)

    def prepare(part: Labeled) -> Labeled:
        x = scale_01(part.x)
        x = x[:, None, :, :] if images else flatten(x)
        return Labeled(np.ascontiguousarray(x), part.y)

    source = (
        "bundled MNIST sample (official test split: 6,000 train / 2,000 validation / 2,000 test images)"
        if ctx.data == "sample"
        else "full MNIST (50,000 train / 10,000 validation / 10,000 test images)"
    )
    return MnistData(prepare(splits.train), prepare(splits.val), prepare(splits.test), source)


def first(part: Labeled, count: int | None) -> Labeled:
    """The first ``count`` samples of ``part`` (all of them for ``None``), in file order."""
    return part if count is None else Labeled(part.x[:count], part.y[:count])


def mlp(
    sizes: Sequence[int],
    *,
    norm: str | None = None,
    activation: str = "relu",
    weight_std: float | None = None,
    dropout: float = 0.0,
    rng: np.random.Generator,
) -> nn.Sequential:
    """An MLP ``sizes[0] -> ... -> sizes[-1]``: each hidden layer is Linear [-> norm] -> activation
    [-> Dropout].  ``norm`` is ``None``, ``"bn"`` (BatchNorm1d) or ``"ln"`` (LayerNorm).  ``weight_std``
    draws every Linear weight from N(0, std^2) with zero bias (the seeds' ``weight_init_std``); ``None``
    keeps the default init."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(n_in, n_out, rng=rng)
        if weight_std is not None:
            linear.weight.data = nn.init.normal((n_out, n_in), rng, std=weight_std)
            linear.bias.data = np.zeros(n_out, np.float32)
        layers.append(linear)
        if i == len(sizes) - 2:
            break
        if norm == "bn":
            layers.append(nn.BatchNorm1d(n_out))
        elif norm == "ln":
            layers.append(nn.LayerNorm(n_out))
        elif norm is not None:
            raise ValueError(f"mlp: unknown norm {norm!r}")
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout, seed=int(rng.integers(2**31))))
    return nn.Sequential(*layers)


def train_step(
    model: nn.Module, loss_fn: nn.Module, optimizer, x: np.ndarray, y: np.ndarray
) -> float:
    """One step of gradient descent on a batch: forward, loss, backward, update.  Returns the loss."""
    model.requires_input_grad_(False)  # the input is data: the first layer may skip dL/dx
    optimizer.zero_grad()
    loss = float(loss_fn(model(x), y))
    model.backward(loss_fn.backward())
    optimizer.step()
    return loss


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Classification accuracy in eval mode (the model's mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        with nl.no_grad():
            correct = sum(
                int(
                    np.sum(np.argmax(model(x[i : i + batch_size]), axis=1) == y[i : i + batch_size])
                )
                for i in range(0, len(y), batch_size)
            )
    finally:
        model.train(was_training)
    return correct / len(y)


def first_reaching(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """The first step at which ``values`` reaches ``threshold``, or ``None`` if it never does."""
    for step, value in zip(steps, values, strict=True):
        if value >= threshold:
            return int(step)
    return None


def is_finite_loss(loss: float) -> bool:
    return bool(np.isfinite(loss))


def he_normal_init(model: nn.Module, rng: np.random.Generator) -> nn.Module:
    """Redraw every Linear weight of ``model`` from He's N(0, 2 / fan_in) and zero its bias: *Deep Learning
    from Scratch*'s ``weight_init_std="relu"``, applied to every layer.  Returns ``model``."""
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            layer.weight.data = nn.init.kaiming_normal(layer.weight.shape, rng, nonlinearity="relu")
            layer.bias.data = np.zeros(layer.weight.shape[0], np.float32)
    return model
