"""ghost-bn: Ghost Batch Norm narrows the generalisation gap of large-batch training.

Hoffer, Hubara & Soudry, *Train longer, generalize better* (NIPS 2017): large batches generalise worse; with
the learning rate scaled by the square root of the batch-size ratio (§4: the noise of the update keeps its
covariance), Ghost Batch Normalization (§4.1: batch statistics over "ghost" batches of 128 inside a batch of
4096, table 1) and more updates ("regime adaptation", §5) the gap closes.  Table 1 (e.g. ResNet-44 on CIFAR-10:
small batch 92.9 %, large batch 86.1 %, + LR scaling + GBN 89.0 %, + regime adaptation 92.7 %).

Here (offline): an MLP 784 -> 100 -> 100 -> 10 with Linear -> BatchNorm1d -> ReLU on the bundled MNIST
sample, SGD with momentum 0.9:
- small batch (32), lr ``base_lr``, ``epochs`` epochs: the reference;
- large batch (``large_batch``), lr ``base_lr · sqrt(large_batch / 32)`` (the paper's square-root scaling),
  ``large_epochs`` epochs, with plain BN and with Ghost BN (virtual batch 32, the small batch);
both large-batch runs are identical except for the virtual batch.  Generalisation gap = training accuracy
minus test accuracy, both in eval mode.

Decided before running: the claim holds if Ghost BN's gap is smaller than BN's at the large batch by more
than ``margin`` and Ghost BN's test accuracy is not lower than BN's at the large batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np

from normlab import nn, optim
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import first, mnist, model_accuracy, train_model

FULL = {
    "hidden": [100, 100],
    "optimizer": "SGD",
    "momentum": 0.9,
    "base_lr": 0.05,  # at the small batch
    "small_batch": 32,
    "large_batch": 1024,
    "ghost_batch": 32,
    "epochs": 5,  # at the small batch
    "large_epochs": 40,  # at the large batch, for both BN and Ghost BN
    "train_images": None,
    "test_images": None,
    "margin": 0.002,
}
QUICK = FULL | {"epochs": 2, "large_epochs": 16}
TINY = FULL | {
    "large_batch": 128,
    "epochs": 1,
    "large_epochs": 2,
    "train_images": 256,
    "test_images": 200,
}

RUNS = ("small", "large-bn", "large-ghost")
NAMES = {
    "small": "BN, small batch",
    "large-bn": "BN, large batch",
    "large-ghost": "Ghost BN, large batch",
}
COLORS = {"small": "#777777", "large-bn": "#1f5fbf", "large-ghost": "#3a9a3a"}
# Hoffer et al. 2017, table 1, ResNet-44 on CIFAR-10 (test accuracy, %)
PUBLISHED = {
    "small batch": 92.9,
    "large batch": 86.1,
    "+ LR scaling + GBN": 89.0,
    "+ regime adaptation": 92.7,
}


def build(hidden, virtual_batch_size: int | None, *, rng: np.random.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise([784, *hidden]):
        layers += [
            nn.Linear(n_in, n_out, rng=rng),
            nn.BatchNorm1d(n_out, virtual_batch_size=virtual_batch_size),
            nn.ReLU(),
        ]
    layers.append(nn.Linear(hidden[-1], 10, rng=rng))
    return nn.Sequential(*layers)


def large_lr(cfg: Mapping) -> float:
    """The paper's square-root scaling of the learning rate with the batch size."""
    return cfg["base_lr"] * math.sqrt(cfg["large_batch"] / cfg["small_batch"])


@register(
    "ghost-bn",
    claim="Ghost batch norm narrows the generalisation gap of large-batch training.",
    source="Hoffer, Hubara & Soudry, Train longer, generalize better (NIPS 2017), §4-4.1, table 1",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x, y = first(data.train, cfg["train_images"])
    x_test, y_test = first(data.test, cfg["test_images"])
    if cfg["large_batch"] % cfg["ghost_batch"]:
        raise ValueError(
            f"ghost-bn: large_batch ({cfg['large_batch']}) must be a multiple of ghost_batch "
            f"({cfg['ghost_batch']})"
        )

    plan = {
        "small": (cfg["small_batch"], cfg["base_lr"], cfg["epochs"], None),
        "large-bn": (cfg["large_batch"], large_lr(cfg), cfg["large_epochs"], None),
        "large-ghost": (cfg["large_batch"], large_lr(cfg), cfg["large_epochs"], cfg["ghost_batch"]),
    }
    records, results = [], {}
    for name, (batch, lr, epochs, ghost) in plan.items():
        ctx.log(f"ghost-bn: {NAMES[name]}")
        model = ctx.place(build(cfg["hidden"], ghost, rng=ctx.rng(1)))
        loader = DataLoader(x, y, batch_size=batch, shuffle=True, drop_last=True, seed=ctx.seed)
        history = train_model(
            model,
            loader,
            optimizer=optim.SGD(model.parameters(), lr=lr, momentum=cfg["momentum"]),
            loss=nn.CrossEntropyLoss(),
            epochs=epochs,
        )
        train_acc, test_acc = model_accuracy(model, x, y), model_accuracy(model, x_test, y_test)
        results[name] = {
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "gap": train_acc - test_acc,
        }
        records.append(
            {
                "run": name,
                "batch_size": batch,
                "virtual_batch_size": ghost,
                "lr": lr,
                "epochs": epochs,
                "steps": len(history.iterations),
                "final_train_loss": history.iterations[-1]["loss"],
            }
            | results[name]
        )
    ctx.save_metrics("accuracy", records)

    holds, measured = decide(results, cfg["margin"])
    table = Table(
        "Accuracy (%, eval mode) and generalisation gap (train - test, pp)",
        ["run", "batch", "lr", "steps", "train acc", "test acc", "gap"],
        [
            [
                NAMES[r["run"]],
                r["batch_size"]
                if r["virtual_batch_size"] is None
                else f"{r['batch_size']} (ghost {r['virtual_batch_size']})",
                round(r["lr"], 4),
                r["steps"],
                round(100 * r["train_accuracy"], 2),
                round(100 * r["test_accuracy"], 2),
                round(100 * r["gap"], 2),
            ]
            for r in records
        ],
    )
    notes = [
        f"Data: {data.source}; {len(y)} training and {len(y_test)} test images.",
        "Hoffer et al. train ResNets/VGG on CIFAR and ImageNet with batches of 4096 and ghost batches of 128; "
        f"offline we use an MLP 784 -> {' -> '.join(map(str, cfg['hidden']))} -> 10 on MNIST with batches of "
        f"{cfg['small_batch']} and {cfg['large_batch']} (of {len(y)} images; incomplete batches dropped) and "
        f"ghost batches of {cfg['ghost_batch']}.",
        f"Learning rate {cfg['base_lr']} at batch {cfg['small_batch']}, x sqrt({cfg['large_batch']}/"
        f"{cfg['small_batch']}) = {large_lr(cfg):.4g} at the large batch (the paper's square-root rule).",
        f"Epochs: {cfg['epochs']} at the small batch, {cfg['large_epochs']} at the large batch (partial "
        "regime adaptation: the paper trains the large batch for as many updates as the small one; that is "
        "out of reach here), the same for BN and Ghost BN.",
        "Published (table 1, ResNet-44, CIFAR-10, test %): "
        + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items())
        + ".",
    ]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, results)],
        notes=notes,
        summary={"results": results},
    )


def decide(results: Mapping[str, Mapping[str, float]], margin: float) -> tuple[bool, str]:
    """Holds if Ghost BN's gap is below large-batch BN's by more than ``margin`` and its test accuracy is
    not lower."""
    bn, ghost, small = results["large-bn"], results["large-ghost"], results["small"]
    narrower = ghost["gap"] < bn["gap"] - margin
    not_worse = ghost["test_accuracy"] >= bn["test_accuracy"]
    measured = (
        f"generalisation gap: Ghost BN {100 * ghost['gap']:.2f} pp vs BN {100 * bn['gap']:.2f} pp at the "
        f"large batch (small batch {100 * small['gap']:.2f} pp); test accuracy Ghost BN "
        f"{100 * ghost['test_accuracy']:.2f} %, BN {100 * bn['test_accuracy']:.2f} %, small batch "
        f"{100 * small['test_accuracy']:.2f} % (criterion: gap smaller by more than {100 * margin:g} pp and "
        "test accuracy not lower)"
    )
    return narrower and not_worse, measured


def _plot(ctx: RunContext, results):
    fig, (ax_acc, ax_gap) = ctx.figure(1, 2, size=(10, 4))
    xs = np.arange(len(RUNS))
    width = 0.38
    ax_acc.bar(
        xs - width / 2,
        [100 * results[r]["train_accuracy"] for r in RUNS],
        width,
        label="train",
        color="#bbbbbb",
    )
    ax_acc.bar(
        xs + width / 2,
        [100 * results[r]["test_accuracy"] for r in RUNS],
        width,
        label="test",
        color=[COLORS[r] for r in RUNS],
    )
    ax_gap.bar(xs, [100 * results[r]["gap"] for r in RUNS], color=[COLORS[r] for r in RUNS])
    for ax in (ax_acc, ax_gap):
        ax.set_xticks(xs, [NAMES[r] for r in RUNS], fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    ax_acc.set(ylabel="accuracy (%, eval mode)", ylim=(0, 100))
    # below the axes: inside, it covered the training-accuracy bars (full mode: 100 %)
    ax_acc.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2)
    ax_gap.set(ylabel="train - test accuracy (pp)")
    ax_gap.axhline(0, color="black", linewidth=0.8)
    return ctx.save_figure(fig, "generalisation_gap")
