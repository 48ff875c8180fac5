"""init-scale: batch norm makes training insensitive to the scale of the initial weights.

Saito, *Deep Learning from Scratch*, ch. 6 (the seed 000's experiment): an MLP 784 -> 5 x [100, ReLU] -> 10
is trained with and without batch norm after each hidden affine layer, for 16 weight scales w (every weight
drawn from N(0, w^2)), and the training accuracy on the 1,000 training images is recorded every epoch.
"""

from __future__ import annotations

import numpy as np

from normlab import nn, optim
from normlab.config import mlp
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import Measure, first, mnist, model_accuracy, train_model

FULL = {
    "train_images": 1000,
    "hidden": [100, 100, 100, 100, 100],
    "weight_scales": np.logspace(0, -4, 16).tolist(),
    "optimizer": "SGD",
    "lr": 0.01,
    "batch_size": 100,
    "sampling": "with replacement",
    "iterations_per_epoch": 10,
    "epochs": 20,
    "learned_threshold": 0.5,  # a network "learns" at a scale if its final training accuracy reaches this
}
QUICK = FULL | {"weight_scales": np.logspace(0, -4, 16)[::2].tolist()}
TINY = FULL | {"train_images": 200, "weight_scales": [1.0, 0.01], "epochs": 2}


@register(
    "init-scale",
    claim="Batch norm makes training insensitive to the weight initialisation scale.",
    source="seed 000; Saito, Deep Learning from Scratch, ch. 6 (batch_norm_test.py)",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x, y = first(data.train, cfg["train_images"])
    sizes = [x.shape[1], *cfg["hidden"], 10]
    records = []
    curves: dict[tuple[float, str], list[float]] = {}
    for i, w in enumerate(cfg["weight_scales"]):
        for norm in (None, "bn"):
            label = "batch norm" if norm else "plain"
            ctx.log(f"init-scale: w={w:.2e} {label}")
            # the same weights for both networks at a given scale: only batch norm differs
            model = mlp(sizes, norm=norm, weight_std=w, rng=ctx.rng(i))
            accs = _train(ctx, model, i, x, y)
            curves[(w, label)] = accs
            records += [
                {"weight_scale": w, "model": label, "epoch": e, "train_accuracy": a}
                for e, a in enumerate(accs)
            ]
    ctx.save_metrics("train_accuracy", records)

    scales = cfg["weight_scales"]
    final = {
        label: np.array([curves[(w, label)][-1] for w in scales])
        for label in ("plain", "batch norm")
    }
    bn_wins = int(np.sum(final["batch norm"] >= final["plain"]))
    threshold = cfg["learned_threshold"]
    learns = {label: int(np.sum(acc >= threshold)) for label, acc in final.items()}
    holds = bn_wins >= 0.75 * len(scales) and learns["batch norm"] > learns["plain"]

    figures = [_plot(ctx, scales, curves)]
    table = Table(
        "Final training accuracy per weight scale",
        ["weight std", "plain", "batch norm"],
        [
            [f"{w:.2e}", float(a), float(b)]
            for w, a, b in zip(scales, final["plain"], final["batch norm"], strict=True)
        ],
    )
    measured = (
        f"batch norm ended at least as accurate as the plain network at {bn_wins} of {len(scales)} scales; "
        f"final training accuracy >= {threshold:.0%} at {learns['batch norm']} scales with batch norm vs "
        f"{learns['plain']} without (batch norm: min {final['batch norm'].min():.3f}, "
        f"max {final['batch norm'].max():.3f}; plain: min {final['plain'].min():.3f}, "
        f"max {final['plain'].max():.3f})"
    )
    notes = [f"Data: the first {len(y)} training images of the {data.source}."]
    if ctx.data == "sample":
        notes.append(
            "Saito used the first 1,000 images of the MNIST training split; these come from the test split."
        )
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=figures,
        notes=notes,
        summary={
            "bn_at_least_as_good": bn_wins,
            "scales": len(scales),
            "learned_bn": learns["batch norm"],
            "learned_plain": learns["plain"],
            "final_bn": final["batch norm"].tolist(),
            "final_plain": final["plain"].tolist(),
        },
    )


def _train(ctx: RunContext, model, scale_index: int, x, y) -> list[float]:
    """SGD on batches drawn with replacement; the training accuracy before training and after each epoch."""
    cfg = ctx.config
    loader = DataLoader(
        x,
        y,
        batch_size=cfg["batch_size"],
        replacement=True,
        num_batches=cfg["iterations_per_epoch"],
        seed=ctx.seed + scale_index,
    )
    accs = [model_accuracy(model, x, y)]
    train_model(
        model,
        loader,
        optimizer=optim.SGD(model.parameters(), lr=cfg["lr"]),
        loss=nn.CrossEntropyLoss(),
        epochs=cfg["epochs"],
        callbacks=[Measure(each_epoch=lambda run, _: accs.append(model_accuracy(model, x, y)))],
    )
    return accs


def _plot(ctx: RunContext, scales, curves):
    n = len(scales)
    cols = 4 if n >= 4 else n
    rows = -(-n // cols)
    fig, axes = ctx.figure(rows, cols, size=(3.0 * cols, 2.4 * rows), sharex=True, sharey=True)
    for ax, w in zip(np.ravel(axes), scales, strict=False):
        ax.plot(curves[(w, "batch norm")], label="batch norm", color="#1f5fbf")
        ax.plot(curves[(w, "plain")], label="plain", color="#c05020", linestyle="--")
        ax.set_title(f"w = {w:.2e}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in np.ravel(axes)[n:]:
        ax.set_visible(False)
    first = np.ravel(axes)[0]
    first.legend(fontsize=8, loc="upper left")
    fig.supxlabel("epoch")
    fig.supylabel("training accuracy")
    return ctx.save_figure(fig, "train_accuracy_grid")
