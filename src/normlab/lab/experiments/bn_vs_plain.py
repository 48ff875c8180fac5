"""bn-vs-plain: batch norm speeds up convergence.

The seed tutorials' Keras/PyTorch example (seeds 002, 003): an MLP 784 -> 128 -> BN -> ReLU -> 64 -> BN -> ReLU
-> 10 and the same network without batch norm, trained with Adam (lr 1e-3), batch 32, for 10 epochs, holding
out 20 % of the training data for validation.  We count the steps each needs to reach 95 % and 97 %
validation accuracy.
"""

from __future__ import annotations

import numpy as np
from matplotlib import ticker

from normlab import nn, optim
from normlab.config import mlp
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import (
    Measure,
    accuracy_axis,
    first,
    first_reaching,
    mnist,
    model_accuracy,
    trailing_mean,
    train_model,
)

FULL = {
    "hidden": [128, 64],
    "optimizer": "Adam",
    "lr": 1e-3,
    "batch_size": 32,
    "epochs": 10,
    "validation_split": 0.2,
    "validate_every": 25,  # steps between validation measurements
    "thresholds": [0.95, 0.97],
    "fallback_threshold": 0.90,  # used for the verdict if neither network reaches 95 %
    "train_limit": None,  # use every training image
}
QUICK = FULL | {"epochs": 3}
TINY = FULL | {"epochs": 1, "train_limit": 400, "validate_every": 5}


@register(
    "bn-vs-plain",
    claim="Batch norm speeds up convergence: the network with batch norm reaches a given validation accuracy in fewer steps.",
    source="seeds 002, 003 (Keras/PyTorch MLP with BatchNormalization on MNIST)",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x_all, y_all = first(data.train, cfg["train_limit"])
    # like Keras's validation_split: the last 20 % (before any shuffling) is held out
    cut = round(len(y_all) * (1 - cfg["validation_split"]))
    x, y, x_val, y_val = x_all[:cut], y_all[:cut], x_all[cut:], y_all[cut:]

    histories = {}
    per_step, per_epoch = [], []
    for norm, label in ((None, "plain"), ("bn", "batch norm")):
        ctx.log(f"bn-vs-plain: {label}")
        model = ctx.place(mlp([x.shape[1], *cfg["hidden"], 10], norm=norm, rng=ctx.rng(1)))
        val_steps, val_accs = _train(ctx, label, model, x, y, x_val, y_val, per_step, per_epoch)
        histories[label] = {
            "val_steps": val_steps,
            "val_accs": val_accs,
            "losses": [r["loss"] for r in per_step if r["model"] == label],
            "test_accuracy": model_accuracy(model, data.test.x, data.test.y),
            "reach": {t: first_reaching(val_steps, val_accs, t) for t in cfg["thresholds"]},
        }
    ctx.save_metrics("per_step", per_step)
    ctx.save_metrics("per_epoch", per_epoch)

    plain, bn = histories["plain"], histories["batch norm"]
    threshold = cfg["thresholds"][0]
    if plain["reach"][threshold] is None and bn["reach"][threshold] is None:
        threshold = cfg["fallback_threshold"]
    reach_plain = first_reaching(plain["val_steps"], plain["val_accs"], threshold)
    reach_bn = first_reaching(bn["val_steps"], bn["val_accs"], threshold)
    holds = reach_bn is not None and (reach_plain is None or reach_bn < reach_plain)

    def fmt(step):
        return "not reached" if step is None else f"{step} steps"

    measured = (
        f"{threshold:.0%} validation accuracy: batch norm {fmt(reach_bn)}, plain {fmt(reach_plain)}; "
        f"test accuracy batch norm {bn['test_accuracy']:.4f}, plain {plain['test_accuracy']:.4f}"
    )
    table = Table(
        "Steps to reach a validation accuracy, and final test accuracy",
        ["model", *[f"steps to {t:.0%}" for t in cfg["thresholds"]], "best val acc", "test acc"],
        [
            [
                label,
                *[fmt(h["reach"][t]) for t in cfg["thresholds"]],
                max(h["val_accs"]),
                h["test_accuracy"],
            ]
            for label, h in histories.items()
        ],
    )
    notes = [
        f"Data: {data.source}; the last {cfg['validation_split']:.0%} of the training part is the validation set "
        f"({len(y_val)} images), training uses {len(y)}.",
        f"Validation accuracy is measured every {cfg['validate_every']} steps.",
    ]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, histories, cfg["thresholds"])],
        notes=notes,
        summary={
            "threshold": threshold,
            "steps_bn": reach_bn,
            "steps_plain": reach_plain,
            "test_accuracy_bn": bn["test_accuracy"],
            "test_accuracy_plain": plain["test_accuracy"],
        },
    )


def _train(ctx: RunContext, label, model, x, y, x_val, y_val, per_step, per_epoch) -> tuple:
    """Adam on shuffled batches; appends a record per step (and the validation accuracy every
    ``validate_every`` steps) to ``per_step`` and one per epoch to ``per_epoch``.  Returns the steps at which
    validation accuracy was measured (0 = before training) and the accuracies."""
    cfg = ctx.config
    loader = DataLoader(x, y, batch_size=cfg["batch_size"], shuffle=True, seed=ctx.seed)
    val_steps, val_accs = [0], [model_accuracy(model, x_val, y_val)]
    epoch_losses: list[float] = []

    def each_step(run, step: int) -> None:
        epoch_losses.append(run.step.loss)
        record = {"model": label, "step": step, "epoch": run.epoch + 1, "loss": run.step.loss}
        if step % cfg["validate_every"] == 0:
            val_steps.append(step)
            val_accs.append(model_accuracy(model, x_val, y_val))
            record["val_accuracy"] = val_accs[-1]
        per_step.append(record)

    def each_epoch(run, epoch: int) -> None:
        per_epoch.append(
            {
                "model": label,
                "epoch": epoch,
                "step": len(run.history.iterations),
                "train_loss": float(np.mean(epoch_losses)),
                "val_accuracy": model_accuracy(model, x_val, y_val),
            }
        )
        epoch_losses.clear()

    opt = optim.Adam(model.parameters(), lr=cfg["lr"])
    train_model(
        model,
        loader,
        optimizer=opt,
        loss=nn.CrossEntropyLoss(),
        epochs=cfg["epochs"],
        callbacks=[Measure(each_step, each_epoch)],
    )
    return val_steps, val_accs


def _plot(ctx: RunContext, histories, thresholds):
    fig, (ax_loss, ax_acc) = ctx.figure(1, 2, size=(11, 4))
    colors = {"plain": "#c05020", "batch norm": "#1f5fbf"}
    for label, h in histories.items():
        losses = np.asarray(h["losses"])
        # a trailing mean as long as the losses: the curve starts at step 1, not at step ``window``
        smooth = trailing_mean(losses, max(1, len(losses) // 50))
        ax_loss.plot(np.arange(1, len(smooth) + 1), smooth, label=label, color=colors[label])
        ax_acc.plot(h["val_steps"], h["val_accs"], label=label, color=colors[label])
    for t in thresholds:
        ax_acc.axhline(t, color="gray", linewidth=0.8, linestyle=":")
    ax_loss.set(xlabel="step", ylabel="training loss (moving average)", yscale="log")
    # plain numbers on the log axis (matplotlib writes a short range's ticks as 2.4 x 10^0)
    ax_loss.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax_loss.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    # the y range holds every point, the step-0 accuracy (about chance) included
    shown = [a for h in histories.values() for a in h["val_accs"]]
    ax_acc.set(xlabel="step", ylabel="validation accuracy", ylim=accuracy_axis(shown))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return ctx.save_figure(fig, "convergence")
