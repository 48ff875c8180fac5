"""End-to-end rows: one training epoch on the bundled MNIST sample, normlab against PyTorch.

Two models, each built twice with the same initial weights (normlab's state dict is copied into the PyTorch
model, which also checks that the keys match):

* ``MLP epoch``: the ``bn-vs-plain`` experiment's network 784 -> 128 -> BN -> ReLU -> 64 -> BN -> ReLU -> 10,
  Adam (lr 1e-3), batch 32 (188 steps over the 6,000 training images);
* ``LeNet-BN epoch``: the ``lenet-bn`` experiment's d2l LeNet with a BatchNorm before each sigmoid, SGD
  (lr 1.0), batch 256 (24 steps).

Both libraries see the same batches in the same order (drawn once, as contiguous float32 arrays; PyTorch gets
zero-copy tensors of them), float32, the same thread count (set by the runner), cross-entropy loss.  One call
of an implementation is one epoch: for each batch ``zero_grad``, forward, loss, backward, ``step``, and the
loss read back as a Python float (as every training loop does).  Successive calls keep training the same
model, which does not change the work per step.

Before timing, :func:`check` trains fresh copies of both models for one epoch and compares them (not timed):
the mean training loss over the epoch and the loss of the trained model on the first 1,000 training images
must agree within a tolerance, which catches a benchmark that times two different computations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.registry import Case

SEED = 0
# loss agreement after one epoch: float32 training of the same model on the same batches drifts apart only by
# rounding (different summation orders), which the chaotic early steps amplify a little
LOSS_RTOL = 0.05


@dataclass(frozen=True)
class Setup:
    """One model family: how to build it in both libraries, its optimizer and its batches."""

    name: str
    batch_size: int
    images: bool  # (N, 1, 28, 28) input instead of (N, 784)
    build: Callable[[np.random.Generator], Any]  # rng -> normlab model
    build_torch: Callable[[], Any]  # -> torch model with the same layers (weights copied in)
    optimizer: Callable[[Any], Any]  # normlab params -> optimizer
    optimizer_torch: Callable[[Any], Any]  # torch params -> optimizer


def _mlp(rng: np.random.Generator):
    from normlab.lab.common import mlp

    return mlp([784, 128, 64, 10], norm="bn", rng=rng)


def _mlp_torch():
    import torch.nn as T

    return T.Sequential(
        T.Linear(784, 128),
        T.BatchNorm1d(128),
        T.ReLU(),
        T.Linear(128, 64),
        T.BatchNorm1d(64),
        T.ReLU(),
        T.Linear(64, 10),
    )


def _lenet(rng: np.random.Generator):
    from normlab.lab.experiments.lenet_bn import lenet

    return lenet(batch_norm=True, rng=rng)


def _lenet_torch():
    import torch.nn as T

    return T.Sequential(
        T.Conv2d(1, 6, 5),
        T.BatchNorm2d(6),
        T.Sigmoid(),
        T.AvgPool2d(2, 2),
        T.Conv2d(6, 16, 5),
        T.BatchNorm2d(16),
        T.Sigmoid(),
        T.AvgPool2d(2, 2),
        T.Flatten(),
        T.Linear(256, 120),
        T.BatchNorm1d(120),
        T.Sigmoid(),
        T.Linear(120, 84),
        T.BatchNorm1d(84),
        T.Sigmoid(),
        T.Linear(84, 10),
    )


def _adam(params):
    from normlab import optim

    return optim.Adam(params, lr=1e-3)


def _adam_torch(params):
    import torch

    return torch.optim.Adam(params, lr=1e-3)


def _sgd(params):
    from normlab import optim

    return optim.SGD(params, lr=1.0)


def _sgd_torch(params):
    import torch

    return torch.optim.SGD(params, lr=1.0)


MLP = Setup("MLP epoch", 32, False, _mlp, _mlp_torch, _adam, _adam_torch)
LENET = Setup("LeNet-BN epoch", 256, True, _lenet, _lenet_torch, _sgd, _sgd_torch)


def batches(images: bool, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch of shuffled batches of the MNIST sample's 6,000 training images, float32 in [0, 1]."""
    from normlab.data import flatten, load_mnist, scale_01

    train = load_mnist("sample").train
    x = scale_01(train.x)
    x = x[:, None] if images else flatten(x)
    order = np.random.default_rng(SEED).permutation(len(train.y))
    cuts = range(0, len(order), batch_size)  # as the DataLoader: full batches, then the remainder
    return [
        (np.ascontiguousarray(x[order[i : i + batch_size]]), train.y[order[i : i + batch_size]])
        for i in cuts
    ]


def build_pair(setup: Setup) -> tuple[Any, Any]:
    """The normlab model and a PyTorch model with the same initial weights and buffers."""
    import torch

    ours = setup.build(np.random.default_rng(SEED))
    theirs = setup.build_torch()
    state = {k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=True)
    return ours, theirs


def normlab_epoch(setup: Setup, model, data) -> Callable[[], float]:
    """A callable training ``model`` for one epoch over ``data``; returns the mean loss.

    As normlab's own training loops (``fit``, the lab) run it: batch norm + activation pairs fused
    (:func:`normlab.nn.fuse`: the fused model shares ``model``'s layers), the model told that its input is
    data (the first layer skips dL/dx, as PyTorch does for an input that does not require grad), and BLAS on
    one thread while the numba kernels use all of them (:func:`normlab.kernels.training_threads`).
    """
    from normlab import kernels, nn

    opt = setup.optimizer(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    model = nn.fuse(model)
    model.requires_input_grad_(False)

    def epoch() -> float:
        total = 0.0
        with kernels.training_threads():
            for xb, yb in data:
                opt.zero_grad()
                loss = loss_fn(model(xb), yb)
                model.backward(loss_fn.backward())
                opt.step()
                total += float(loss)
        return total / len(data)

    return epoch


def torch_epoch(setup: Setup, model, data, device: str = "cpu") -> Callable[[], float]:
    """The same epoch in PyTorch (the batches moved to ``device`` once, as the model should be)."""
    import torch

    opt = setup.optimizer_torch(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    tdata = [(torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device)) for xb, yb in data]

    def epoch() -> float:
        total = 0.0
        for xb, yb in tdata:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item()
        return total / len(tdata)

    return epoch


def _trained_loss(ours, theirs, data) -> tuple[float, float]:
    """Cross-entropy of both trained models in eval mode (running statistics) on the first 1,000 images."""
    import torch

    from normlab import functional as F
    from normlab import no_grad

    x = np.concatenate([xb for xb, _ in data])[:1000]
    y = np.concatenate([yb for _, yb in data])[:1000]
    ours.eval()
    theirs.eval()
    with no_grad():
        a = float(F.cross_entropy_forward(ours(x), y)[0])
    with torch.no_grad():
        b = float(
            torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y))
        )
    ours.train()
    theirs.train()
    return a, b


def check(setup: Setup) -> str:
    """Train fresh copies of both models for one epoch; compare their losses (raises if they disagree)."""
    data = batches(setup.images, setup.batch_size)
    ours, theirs = build_pair(setup)
    mean_ours = normlab_epoch(setup, ours, data)()
    mean_theirs = torch_epoch(setup, theirs, data)()
    after_ours, after_theirs = _trained_loss(ours, theirs, data)
    line = (
        f"{setup.name}: mean training loss normlab {mean_ours:.4f}, torch {mean_theirs:.4f}; "
        f"eval loss after the epoch (1,000 training images) normlab {after_ours:.4f}, "
        f"torch {after_theirs:.4f}"
    )
    for a, b in ((mean_ours, mean_theirs), (after_ours, after_theirs)):
        if not abs(a - b) <= LOSS_RTOL * abs(b):
            raise AssertionError(f"the two epochs disagree: {line}")
    return line


def epoch_case(setup: Setup) -> Case:
    def run():
        data = batches(setup.images, setup.batch_size)
        ours, theirs = build_pair(setup)
        return {
            "normlab": normlab_epoch(setup, ours, data),
            "torch": torch_epoch(setup, theirs, data),
        }

    shape = (6000, 784) if not setup.images else (6000, 1, 28, 28)
    return Case(setup.name, "epoch", shape, 0, run, check=lambda: check(setup))


def cases(quick: bool = False) -> list[Case]:
    """One epoch of the MLP and of LeNet-BN."""
    return [epoch_case(MLP), epoch_case(LENET)]
