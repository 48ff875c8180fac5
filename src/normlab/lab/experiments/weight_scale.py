"""weight-scale: batch norm makes a deep network insensitive to the scale of its initial weights.

CS231n assignment 2 (BatchNormalization.ipynb, "Batch normalization and initialization"): a fully connected net
with seven hidden layers of 50 ReLU units, with and without batch norm after each hidden affine layer, every
weight drawn from N(0, w^2) for 20 scales w in logspace(-4, 0), trained on 1,000 training images with Adam
(lr 1e-3) for 10 epochs of mini-batches of 50.  The assignment's Solver draws each batch with replacement
(1,000 / 50 = 20 batches an epoch) and checks training accuracy (on the 1,000 images) and validation accuracy
before training and after every epoch.  Plots against w: best validation accuracy, best training accuracy, and
the final training loss (mean of the last 100 losses).

The claim holds if the best validation accuracy varies less across scales with batch norm than without (a
smaller max - min), and batch norm learns (best validation accuracy at least the threshold) at no fewer scales.
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
    "hidden": [50] * 7,
    "weight_scales": np.logspace(-4, 0, 20).tolist(),
    "optimizer": "Adam",
    "lr": 1e-3,
    "epochs": 10,
    "batch_size": 50,
    "sampling": "with replacement",  # CS231n's Solver: np.random.choice(num_train, batch_size)
    "loss_window": 100,  # final training loss = mean of the last this many losses
    "learned_threshold": 0.5,  # a network "learns" at a scale if its best validation accuracy reaches this
}
# every other scale of the published grid, and its last one (w = 1)
QUICK = FULL | {"weight_scales": np.logspace(-4, 0, 20)[np.r_[0:20:2, 19]].tolist()}
TINY = FULL | {"train_images": 200, "weight_scales": [1e-4, 1.0], "epochs": 2, "loss_window": 8}

PLAIN, BN = "baseline", "batch norm"


def decide(best_val: dict[str, np.ndarray], learned_threshold: float) -> tuple[bool, str]:
    """``best_val[label]`` holds the best validation accuracy at each weight scale.  The claim holds if batch
    norm's spread (max - min over scales) is smaller than the baseline's and batch norm reaches
    ``learned_threshold`` at no fewer scales.  Returns (holds, measured)."""
    spread = {label: float(np.max(acc) - np.min(acc)) for label, acc in best_val.items()}
    learned = {
        label: int(np.sum(np.asarray(acc) >= learned_threshold)) for label, acc in best_val.items()
    }
    scales = len(best_val[BN])
    holds = spread[BN] < spread[PLAIN] and learned[BN] >= learned[PLAIN]
    measured = (
        f"best validation accuracy across {scales} weight scales: batch norm {np.min(best_val[BN]):.3f} to "
        f"{np.max(best_val[BN]):.3f} (spread {spread[BN]:.3f}), baseline {np.min(best_val[PLAIN]):.3f} to "
        f"{np.max(best_val[PLAIN]):.3f} (spread {spread[PLAIN]:.3f}); best validation accuracy >= "
        f"{learned_threshold:.0%} at {learned[BN]} scales with batch norm vs {learned[PLAIN]} without"
    )
    return holds, measured


@register(
    "weight-scale",
    claim="Batch norm makes a deep network's training insensitive to the weight initialisation scale "
    "(7 hidden layers, Adam).",
    source="CS231n assignment 2, BatchNormalization.ipynb (batch normalization and initialization)",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x, y = first(data.train, cfg["train_images"])
    scales = cfg["weight_scales"]
    results: dict[tuple[int, str], dict] = {}
    records = []
    for i, w in enumerate(scales):
        for norm, label in ((None, PLAIN), ("bn", BN)):
            ctx.log(f"weight-scale: w={w:.2e} {label}")
            run_result = _train(ctx, norm, w, i, x, y, data.val.x, data.val.y)
            results[(i, label)] = run_result
            records += [
                {
                    "weight_scale": w,
                    "model": label,
                    "epoch": e,
                    "train_accuracy": tr,
                    "val_accuracy": va,
                }
                for e, (tr, va) in enumerate(
                    zip(run_result["train_acc"], run_result["val_acc"], strict=True)
                )
            ]
    ctx.save_metrics("accuracy_per_epoch", records)

    summary_rows = []
    per_scale: dict[str, dict[str, np.ndarray]] = {
        "best_val": {},
        "best_train": {},
        "final_loss": {},
    }
    for label in (PLAIN, BN):
        runs = [results[(i, label)] for i in range(len(scales))]
        per_scale["best_val"][label] = np.array([max(r["val_acc"]) for r in runs])
        per_scale["best_train"][label] = np.array([max(r["train_acc"]) for r in runs])
        per_scale["final_loss"][label] = np.array(
            [np.mean(r["losses"][-cfg["loss_window"] :]) for r in runs]
        )
    for i, w in enumerate(scales):
        for label in (PLAIN, BN):
            summary_rows.append(
                {
                    "weight_scale": w,
                    "model": label,
                    "best_val_accuracy": per_scale["best_val"][label][i],
                    "best_train_accuracy": per_scale["best_train"][label][i],
                    "final_train_loss": per_scale["final_loss"][label][i],
                }
            )
    ctx.save_metrics("per_scale", summary_rows)

    holds, measured = decide(per_scale["best_val"], cfg["learned_threshold"])
    table = Table(
        "Best validation / training accuracy and final training loss per weight scale",
        [
            "weight scale",
            "best val (baseline)",
            "best val (BN)",
            "best train (baseline)",
            "best train (BN)",
            "final loss (baseline)",
            "final loss (BN)",
        ],
        [
            [
                f"{w:.2e}",
                *(
                    float(per_scale[key][label][i])
                    for key in ("best_val", "best_train")
                    for label in (PLAIN, BN)
                ),
                *(_loss_cell(per_scale["final_loss"][label][i]) for label in (PLAIN, BN)),
            ]
            for i, w in enumerate(scales)
        ],
    )
    iterations = cfg["epochs"] * _batches_per_epoch(cfg)
    notes = [
        f"Data: the first {len(y)} training images of the {data.source}; validation accuracy on all "
        f"{len(data.val.y)} validation images.",
        "CS231n used CIFAR-10 (3,072 mean-subtracted features); offline we use MNIST (784 pixels in [0, 1]), "
        "so the absolute accuracies differ from the assignment's.  The inputs are also about 50 times "
        "smaller in standard deviation than CIFAR-10's 0-255 values, which matters at the smallest weight "
        "scales: there the pre-activation variance approaches batch norm's eps (1e-5), which then damps "
        "the normalisation.",
        f"Each run is {cfg['epochs']} epochs x {_batches_per_epoch(cfg)} batches = {iterations} Adam steps; "
        f"the final training loss is the mean of the last {min(cfg['loss_window'], iterations)} losses "
        "(NaN/inf where the loss diverged).",
        "Both networks start from the same weights at each scale (batch norm's scale 1, shift 0) and see "
        "the same batches.",
    ]
    if len(scales) != 20:
        notes.append(f"Shortened: {len(scales)} of the 20 weight scales.")
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, scales, per_scale)],
        notes=notes,
        summary={
            "best_val_bn": per_scale["best_val"][BN].tolist(),
            "best_val_baseline": per_scale["best_val"][PLAIN].tolist(),
        },
    )


def _batches_per_epoch(cfg) -> int:
    return max(cfg["train_images"] // cfg["batch_size"], 1)


def _train(ctx: RunContext, norm, w, scale_index, x, y, x_val, y_val) -> dict:
    """Train one network as CS231n's Solver does; returns per-iteration losses and per-check accuracies."""
    cfg = ctx.config
    # the same initial weights (and batches) for both networks at a given scale
    model = ctx.place(
        mlp([x.shape[1], *cfg["hidden"], 10], norm=norm, weight_std=w, rng=ctx.rng(scale_index))
    )
    loader = DataLoader(
        x,
        y,
        batch_size=cfg["batch_size"],
        replacement=True,
        num_batches=_batches_per_epoch(cfg),
        seed=ctx.seed + scale_index,
    )
    losses: list[float] = []
    train_acc, val_acc = [model_accuracy(model, x, y)], [model_accuracy(model, x_val, y_val)]

    def each_epoch(run, epoch: int) -> None:
        train_acc.append(model_accuracy(model, x, y))
        val_acc.append(model_accuracy(model, x_val, y_val))

    train_model(
        model,
        loader,
        optimizer=optim.Adam(model.parameters(), lr=cfg["lr"]),
        loss=nn.CrossEntropyLoss(),
        epochs=cfg["epochs"],
        callbacks=[Measure(lambda run, _: losses.append(run.step.loss), each_epoch)],
    )
    return {"losses": losses, "train_acc": train_acc, "val_acc": val_acc}


def _loss_cell(loss: float) -> float | str:
    return float(loss) if np.isfinite(loss) else "diverged (NaN/inf)"


def _plot(ctx: RunContext, scales, per_scale):
    fig, axes = ctx.figure(3, 1, size=(7.5, 10), sharex=True)
    styles = {PLAIN: dict(color="#c05020", marker="o"), BN: dict(color="#1f5fbf", marker="s")}
    panels = (
        ("best_val", "best validation accuracy"),
        ("best_train", "best training accuracy"),
        ("final_loss", "final training loss"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        for label in (PLAIN, BN):
            values = np.asarray(per_scale[key][label], dtype=float)
            ax.plot(scales, values, label=label, **styles[label])
        ax.set(xscale="log", title=f"{title} vs weight initialisation scale", ylabel=title)
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes[:2]:
        ax.set_ylim(0, 1.02)
    loss_ax = axes[2]
    loss_ax.set_yscale("log")
    _mark_diverged(loss_ax, scales, per_scale["final_loss"], styles)
    loss_ax.set_xlabel("weight initialisation scale (std of every weight)")
    return ctx.save_figure(fig, "weight_scale")


def _mark_diverged(ax, scales, final_loss, styles) -> None:
    """Draw an x at the top of the loss axis where a network's loss became NaN/inf."""
    top = ax.get_ylim()[1]
    for label in (PLAIN, BN):
        diverged = [
            w for w, loss in zip(scales, final_loss[label], strict=True) if not np.isfinite(loss)
        ]
        if diverged:
            ax.plot(
                diverged,
                [top] * len(diverged),
                "x",
                color=styles[label]["color"],
                markersize=9,
                label=f"{label}: loss NaN/inf",
                clip_on=False,
            )
            ax.legend()
