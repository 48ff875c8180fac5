"""Building blocks the experiments share: data as the experiments want it, the MLP builder (the one of
:mod:`normlab.config`), training through :func:`normlab.fit` with measurements in callbacks, accuracy.
Only normlab's public API is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import normlab as nl
from normlab import nn
from normlab.backend import to_host
from normlab.callbacks import FitRun
from normlab.config import ACTIVATIONS, mlp  # noqa: F401  (re-exported: the one MLP builder)
from normlab.data import DataLoader, Labeled, flatten, load_mnist, scale_01
from normlab.lab.base import RunContext
from normlab.optim import Optimizer
from normlab.train.batches import on_device


@dataclass
class MnistData:
    """MNIST as flat float32 vectors in [0, 1] (``x``: (N, 784)) or images (N, 1, 28, 28); from
    :func:`images`, also Fashion-MNIST (N, 1, 28, 28) or CIFAR-10 (N, 3, 32, 32)."""

    train: Labeled
    val: Labeled
    test: Labeled
    source: str  # a sentence for the report: which data this is
    name: str = "MNIST"  # the data set's name, for notes and titles
    class_names: tuple[str, ...] = tuple(str(d) for d in range(10))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image (for images; flat vectors have no image shape)."""
        if self.train.x.ndim != 4:
            raise ValueError(f"{self.name}: flat vectors have no image shape")
        c, h, w = self.train.x.shape[1:]
        return c, h, w


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


# the report's wording of each downloaded image set (``normlab data download NAME``)
_IMAGE_SETS = {
    "cifar10": "CIFAR-10 (40,000 train / 10,000 validation / 10,000 test 32 x 32 RGB images, 10 classes)",
    "fashion-mnist": "Fashion-MNIST (50,000 train / 10,000 validation / 10,000 test 28 x 28 grayscale "
    "images of clothing, 10 classes)",
}


def images(ctx: RunContext) -> MnistData:
    """The images for ``ctx.data``, float32 NCHW in [0, 1]: MNIST (``sample``/``full``, as :func:`mnist` with
    ``images=True``), or the downloaded Fashion-MNIST / CIFAR-10 (``normlab data download NAME``; a missing or
    corrupt file is a ``DataError`` that says so)."""
    if ctx.data not in _IMAGE_SETS:
        return mnist(ctx, images=True)
    from normlab.data.color_datasets import REMOTES, load_named

    splits = load_named(ctx.data, "full")

    def prepare(part: Labeled) -> Labeled:
        x = scale_01(part.x)
        return Labeled(np.ascontiguousarray(x if x.ndim == 4 else x[:, None]), part.y)

    remote = REMOTES[ctx.data]
    return MnistData(
        prepare(splits.train),
        prepare(splits.val),
        prepare(splits.test),
        _IMAGE_SETS[ctx.data],
        name=remote.name,
        class_names=tuple(remote.class_names),
    )


def sample_grid(ctx: RunContext, data: MnistData, per_class: int = 2) -> Path:
    """A PNG of the first ``per_class`` training images of each class with their labels (``samples.png``),
    so that the report shows what the experiment trained on."""
    from normlab.data.show import write_grid

    labels = data.train.y
    chosen = [i for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:per_class]]
    pixels = np.round(np.asarray(data.train.x[chosen]) * 255).astype(np.uint8)
    names = [data.class_names[int(labels[i])] for i in chosen]
    title = f"{data.name}: training images"
    return write_grid(
        pixels, names, ctx.out_dir / "samples.png", title=title, columns=2 * per_class * 5
    )


def first(part: Labeled, count: int | None) -> Labeled:
    """The first ``count`` samples of ``part`` (all of them for ``None``), in file order."""
    return part if count is None else Labeled(part.x[:count], part.y[:count])


def train_model(
    model: nn.Module,
    batches: DataLoader | Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    optimizer: Optimizer,
    loss: nn.Module,
    epochs: int,
    callbacks: Sequence[nl.Callback] = (),
    stop_when_diverged: bool = False,
) -> nl.History:
    """Train ``model`` through :func:`normlab.fit` on the experiment's own batches (its loader, or a list of
    ``(x, y)`` pairs): silent, no metrics, one update per batch for ``epochs`` epochs.  A NaN/inf loss is recorded, not raised (a
    diverging network is part of what some experiments measure); with ``stop_when_diverged`` training stops
    after that step (the epoch's callbacks still run).  What an experiment records, it records in
    ``callbacks`` (see :class:`Measure`)."""
    stop = [nl.TerminateOnNaN()] if stop_when_diverged else []
    return nl.fit(
        model,
        batches,
        optimizer=optimizer,
        loss=loss,
        epochs=epochs,
        metrics=(),
        callbacks=[*callbacks, *stop],
        verbose=0,
        nonfinite_loss="continue",
    )


class Measure(nl.Callback):
    """Call ``each_step(run, step)`` after every training step, ``each_epoch(run, epoch)`` after every epoch
    and ``before_epoch(run, epoch)`` before it, steps and epochs counted from 1: how an experiment takes its
    measurements while ``fit`` trains.  ``run.step`` holds the step's outputs, targets and loss (see
    :class:`normlab.train.Step`)."""

    def __init__(
        self,
        each_step: Callable[[FitRun, int], None] | None = None,
        each_epoch: Callable[[FitRun, int], None] | None = None,
        *,
        before_epoch: Callable[[FitRun, int], None] | None = None,
    ) -> None:
        self.each_step, self.each_epoch, self.before_epoch = each_step, each_epoch, before_epoch
        self.steps = 0

    def on_epoch_begin(self, run: FitRun, epoch: int) -> None:
        if self.before_epoch is not None:
            self.before_epoch(run, epoch + 1)

    def on_train_begin(self, run: FitRun) -> None:
        self.steps = 0

    def on_batch_end(self, run: FitRun, logs: dict[str, float]) -> None:
        self.steps += 1
        if self.each_step is not None:
            self.each_step(run, self.steps)

    def on_epoch_end(self, run: FitRun, epoch: int, logs: dict[str, float]) -> None:
        if self.each_epoch is not None:
            self.each_epoch(run, epoch + 1)


def correct_predictions(outputs: np.ndarray, targets: np.ndarray) -> int:
    """How many rows of ``outputs`` (N, classes) have their largest value at the class ``targets`` (N,)
    (arrays on a device are read through the host)."""
    return int(np.sum(np.argmax(to_host(outputs), axis=1) == to_host(targets)))


def model_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Classification accuracy of ``model`` on inputs ``x`` and classes ``y``, in eval mode, in batches of
    ``batch_size`` (the model's mode is restored afterwards; a model on a device gets the batches there)."""
    was_training = model.training
    where = next((p.data for p in model.parameters()), None)
    model.eval()
    try:
        with nl.no_grad():
            correct = sum(
                correct_predictions(
                    model(on_device(x[i : i + batch_size], where)), y[i : i + batch_size]
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


def trailing_mean(values: Sequence[float], window: int) -> np.ndarray:
    """The mean of the last ``window`` values at every position, over the values there are at the start
    (position ``i < window`` averages ``values[:i + 1]``): as long as ``values``, so a plotted moving
    average keeps its first point."""
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"trailing_mean: window must be >= 1, got {window}")
    sums = np.cumsum(np.concatenate([[0.0], v]))
    ends = np.arange(1, len(v) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def accuracy_axis(values: Sequence[float], pad: float = 0.02) -> tuple[float, float]:
    """A y range for accuracies that shows every value: from just below the lowest (at least 0) to 1."""
    finite = [float(v) for v in values if np.isfinite(v)]
    low = min(finite, default=0.0)
    return max(0.0, low - pad), 1.0
