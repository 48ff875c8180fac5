"""learning-rate: batch norm lets a network train at much larger learning rates.

Ioffe & Szegedy (2015, section 4.2) trained Inception with batch norm at 5 and 30 times the original learning
rate (BN-x5, BN-x30), which the network without batch norm could not use.  The design gives no small-scale
setup, so we choose one in the lab's style (*Deep Learning from Scratch*, ch. 6): an MLP 784 -> 5 x [100, ReLU]
-> 10 with He-normal weights, with and without batch norm after each hidden affine layer, plain SGD (no
momentum) with batches of 100, the same initial weights and batches for both, over a log grid of learning
rates.  A run diverges when its training loss becomes NaN or infinite; it then stops.

A network "trains" at a learning rate if it does not diverge and ends with validation accuracy at or above
the threshold.  The claim holds if the largest learning rate at which batch norm trains is at least
``min_lr_ratio`` (5, as in BN-x5) times the largest at which the plain network trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from normlab import nn, optim
from normlab.config import mlp
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import (
    Measure,
    first,
    he_normal_init,
    is_finite_loss,
    mnist,
    model_accuracy,
    train_model,
)

FULL = {
    "hidden": [100] * 5,  # our choice: Saito's ch. 6 MLP
    "activation": "relu",
    "init": "he_normal",  # N(0, 2 / fan_in) for every weight, biases 0
    "optimizer": "SGD",
    "learning_rates": np.logspace(-3, 1.5, 10).tolist(),  # 0.001 ... 31.6, half a decade apart
    "batch_size": 100,
    "epochs": 10,
    "train_limit": None,  # use every training image
    "trained_threshold": 0.8,  # validation accuracy a non-diverged run must end with to count as trained
    "min_lr_ratio": 5.0,  # "much larger": at least BN-x5
}
QUICK = FULL | {"epochs": 3}
TINY = FULL | {"learning_rates": [0.01, 1.0, 30.0], "epochs": 1, "train_limit": 500}

PLAIN, BN = "plain", "batch norm"


def largest_trained_lr(
    learning_rates: Sequence[float],
    final_val: Sequence[float],
    diverged: Sequence[bool],
    threshold: float,
) -> float | None:
    """The largest learning rate whose run did not diverge and ended at or above ``threshold`` validation
    accuracy; ``None`` if there is none."""
    trained = [
        lr
        for lr, acc, bad in zip(learning_rates, final_val, diverged, strict=True)
        if not bad and acc >= threshold
    ]
    return max(trained) if trained else None


def decide(
    learning_rates: Sequence[float],
    final_val: dict[str, Sequence[float]],
    diverged: dict[str, Sequence[bool]],
    threshold: float,
    min_ratio: float,
) -> tuple[bool, str]:
    """The claim holds if batch norm trains at some learning rate and its largest trained learning rate is at
    least ``min_ratio`` times the plain network's (or the plain network trains at none).
    Returns (holds, measured)."""
    largest = {
        label: largest_trained_lr(learning_rates, final_val[label], diverged[label], threshold)
        for label in (PLAIN, BN)
    }
    lr_bn, lr_plain = largest[BN], largest[PLAIN]
    holds = lr_bn is not None and (lr_plain is None or lr_bn >= min_ratio * lr_plain)

    def first_divergence(label: str) -> str:
        bad = [lr for lr, d in zip(learning_rates, diverged[label], strict=True) if d]
        return f"from lr {min(bad):.3g}" if bad else "never"

    def fmt(lr: float | None) -> str:
        return "none" if lr is None else f"{lr:.3g}"

    ratio = f" (ratio {lr_bn / lr_plain:.3g})" if lr_bn is not None and lr_plain is not None else ""
    measured = (
        f"largest learning rate that trains (no NaN/inf loss, final validation accuracy >= "
        f"{threshold:.0%}): batch norm {fmt(lr_bn)}, plain {fmt(lr_plain)}{ratio}; loss diverges: "
        f"batch norm {first_divergence(BN)}, plain {first_divergence(PLAIN)}"
    )
    return holds, measured


@register(
    "learning-rate",
    claim="Batch norm tolerates much larger learning rates: the network with it still trains at a learning "
    "rate at least 5 times the largest the plain network trains at.",
    source="Ioffe & Szegedy 2015, section 4.2 (BN-x5, BN-x30); small-scale setup after Saito, Deep Learning "
    "from Scratch, ch. 6",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x, y = first(data.train, cfg["train_limit"])
    lrs = cfg["learning_rates"]
    final_val: dict[str, list[float]] = {PLAIN: [], BN: []}
    final_loss: dict[str, list[float]] = {PLAIN: [], BN: []}
    diverged: dict[str, list[bool]] = {PLAIN: [], BN: []}
    records = []
    for i, lr in enumerate(lrs):
        for norm, label in ((None, PLAIN), ("bn", BN)):
            ctx.log(f"learning-rate: lr={lr:.3g} {label}")
            history = _train(ctx, norm, lr, i, x, y, data.val.x, data.val.y)
            records += [{"lr": lr, "model": label} | r for r in history]
            final_val[label].append(history[-1]["val_accuracy"])
            final_loss[label].append(history[-1]["train_loss"])
            diverged[label].append(history[-1]["diverged"])
    ctx.save_metrics("per_epoch", records)

    threshold = cfg["trained_threshold"]
    holds, measured = decide(lrs, final_val, diverged, threshold, cfg["min_lr_ratio"])
    table = Table(
        "Final validation accuracy per learning rate (NaN/inf loss = diverged, training stopped)",
        ["learning rate", "plain", "batch norm"],
        [
            [
                f"{lr:.3g}",
                *(_cell(final_val[label][i], diverged[label][i]) for label in (PLAIN, BN)),
            ]
            for i, lr in enumerate(lrs)
        ],
    )
    notes = [
        f"Data: {data.source}; trained on {len(y)} images, validation accuracy on {len(data.val.y)}.",
        "The design gives no architecture, schedule or grid for this claim; our choices: MLP 784 -> "
        f"{len(cfg['hidden'])} x [{cfg['hidden'][0]}, ReLU] -> 10, He-normal weights, plain SGD (no "
        f"momentum, no schedule), batch {cfg['batch_size']}, {cfg['epochs']} epochs per run, learning rates "
        f"{lrs[0]:.3g} to {lrs[-1]:.3g} half a decade apart.  The paper's evidence is Inception on ImageNet.",
        "Both networks start from the same weights at each learning rate and see the same batches; "
        "validation accuracy is measured in eval mode after each epoch.",
    ]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, lrs, final_val, final_loss, diverged, threshold)],
        notes=notes,
        summary={
            "largest_trained_lr_bn": largest_trained_lr(
                lrs, final_val[BN], diverged[BN], threshold
            ),
            "largest_trained_lr_plain": largest_trained_lr(
                lrs, final_val[PLAIN], diverged[PLAIN], threshold
            ),
            "final_val_bn": final_val[BN],
            "final_val_plain": final_val[PLAIN],
        },
    )


def _train(ctx: RunContext, norm, lr, lr_index, x, y, x_val, y_val) -> list[dict]:
    """Train one network at one learning rate; one record per epoch.  Stops at the first NaN/inf loss."""
    cfg = ctx.config
    # the same initial weights and batches for both networks at a given learning rate
    rng = ctx.rng(lr_index)
    model = ctx.place(
        he_normal_init(mlp([x.shape[1], *cfg["hidden"], 10], norm=norm, rng=rng), rng)
    )
    loader = DataLoader(x, y, batch_size=cfg["batch_size"], seed=ctx.seed + lr_index)
    history = []
    losses: list[float] = []

    def each_epoch(run, epoch: int) -> None:
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "val_accuracy": model_accuracy(model, x_val, y_val),
                "diverged": not is_finite_loss(losses[-1]),
            }
        )
        losses.clear()

    train_model(
        model,
        loader,
        optimizer=optim.SGD(model.parameters(), lr=lr),
        loss=nn.CrossEntropyLoss(),
        epochs=cfg["epochs"],
        callbacks=[Measure(lambda run, _: losses.append(run.step.loss), each_epoch)],
        stop_when_diverged=True,
    )
    return history


def _cell(val_accuracy: float, diverged: bool) -> float | str:
    return "diverged" if diverged else float(val_accuracy)


def _plot(ctx: RunContext, lrs, final_val, final_loss, diverged, threshold):
    fig, (ax_acc, ax_loss) = ctx.figure(1, 2, size=(12, 4.3))
    styles = {PLAIN: dict(color="#c05020", marker="o"), BN: dict(color="#1f5fbf", marker="s")}
    for label in (PLAIN, BN):
        bad = np.asarray(diverged[label])
        acc = np.where(bad, np.nan, final_val[label])
        loss = np.where(bad, np.nan, final_loss[label])
        ax_acc.plot(lrs, acc, label=label, **styles[label])
        ax_loss.plot(lrs, loss, label=label, **styles[label])
    ax_acc.axhline(
        threshold, color="gray", linewidth=0.8, linestyle=":", label="'trains' threshold"
    )
    ax_acc.set(
        ylim=(0, 1.02),
        ylabel="final validation accuracy",
        title="final validation accuracy (x: loss became NaN/inf)",
    )
    ax_loss.set(
        yscale="log",
        ylabel="mean training loss, last epoch",
        title="training loss (x: loss became NaN/inf)",
    )
    # diverged runs: an x at the bottom of the accuracy axis and the top of the loss axis
    for ax, y_at in ((ax_acc, 0.0), (ax_loss, ax_loss.get_ylim()[1])):
        for label in (PLAIN, BN):
            bad_lrs = [lr for lr, d in zip(lrs, diverged[label], strict=True) if d]
            if bad_lrs:
                ax.plot(
                    bad_lrs,
                    [y_at] * len(bad_lrs),
                    "x",
                    color=styles[label]["color"],
                    markersize=10,
                    markeredgewidth=2,
                    clip_on=False,
                    label=f"{label}: diverged",
                )
    for ax in (ax_acc, ax_loss):
        ax.set(xscale="log", xlabel="learning rate (SGD)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return ctx.save_figure(fig, "learning_rate")
