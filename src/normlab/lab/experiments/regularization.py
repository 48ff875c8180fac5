"""regularization: batch norm acts as a regulariser.

Seeds 002 and 004 say that batch norm regularises: each mini-batch's statistics add noise to every hidden
unit, so batch norm can replace or reduce dropout and L2 weight decay.  We test it on the overfitting setup of
*Deep Learning from Scratch*, ch. 6 (overfit_weight_decay.py, overfit_dropout.py): an MLP 784 -> 6 x [100, ReLU]
-> 10 with He-normal weights, trained with plain SGD (lr 0.01) on few images (the design: 1,000) with batches
of 100 drawn with replacement, 10 batches an epoch, for 200 epochs, so that it overfits.  Five variants, from
the same initial weights and with the same batches: none, batch norm (after each hidden affine layer),
dropout (0.2 after each hidden activation, Saito's ``dropout_ratio``), L2 weight decay (lambda 0.1 on the
weights, Saito's ``weight_decay_lambda``) and batch norm + weight decay.

The generalisation gap is the training accuracy (on the training images) minus the validation accuracy after
the last epoch, both in eval mode.  The claim holds if batch norm's gap is smaller than the unregularised
network's by at least ``min_gap_reduction``.
"""

from __future__ import annotations

import textwrap

import numpy as np

from normlab import nn, optim
from normlab.config import mlp
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import Measure, first, he_normal_init, mnist, model_accuracy, train_model

NONE, BN, DROPOUT, DECAY, BN_DECAY = (
    "none",
    "batch norm",
    "dropout",
    "weight decay",
    "batch norm + weight decay",
)

FULL = {
    "train_images": 1000,
    "hidden": [100] * 6,
    "activation": "relu",
    "init": "he_normal",  # N(0, 2 / fan_in) for every weight (Saito's weight_init_std="relu"), biases 0
    "optimizer": "SGD",
    "lr": 0.01,
    "batch_size": 100,
    "sampling": "with replacement",  # Saito's Trainer: np.random.choice(train_size, batch_size)
    "iterations_per_epoch": 10,  # 1,000 images / batch 100
    "epochs": 200,  # Saito: 201 (weight decay) and 301 (dropout) epochs on 300 images
    "variants": [NONE, BN, DROPOUT, DECAY, BN_DECAY],
    "dropout": 0.2,
    "weight_decay": 0.1,  # L2 on the weights only (not biases, not batch norm's scale and shift)
    "min_gap_reduction": 0.01,  # batch norm's gap must be at least this much smaller than none's
}
QUICK = FULL | {"epochs": 50}
TINY = FULL | {"train_images": 200, "iterations_per_epoch": 2, "epochs": 3}

PALETTE = {
    NONE: "#c05020",
    BN: "#1f5fbf",
    DROPOUT: "#2a8a4a",
    DECAY: "#8a5ab0",
    BN_DECAY: "#3aa0b0",
}


def decide(gaps: dict[str, float], min_reduction: float) -> tuple[bool, str]:
    """``gaps[variant]`` = final training accuracy - validation accuracy.  The claim holds if batch norm's gap
    is at least ``min_reduction`` smaller than the unregularised network's.  Returns (holds, measured)."""
    reduction = gaps[NONE] - gaps[BN]
    holds = bool(reduction >= min_reduction)
    others = ", ".join(f"{name} {gap:.3f}" for name, gap in gaps.items() if name not in (NONE, BN))
    measured = (
        f"generalisation gap (training - validation accuracy after the last epoch): batch norm "
        f"{gaps[BN]:.3f}, none {gaps[NONE]:.3f} (batch norm changes it by {-reduction:+.3f}; "
        f"needed <= {-min_reduction:+.3f}); for comparison {others}"
    )
    return holds, measured


@register(
    "regularization",
    claim="Batch norm acts as a regulariser: with it, the gap between training and validation accuracy is "
    "smaller than without any regularisation.",
    source="seeds 002, 004; overfitting setup of Saito, Deep Learning from Scratch, ch. 6",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x, y = first(data.train, cfg["train_images"])
    curves = {}
    records = []
    for variant in cfg["variants"]:
        ctx.log(f"regularization: {variant}")
        curves[variant] = _train(ctx, variant, x, y, data.val.x, data.val.y)
        records += [
            {"variant": variant, "epoch": e, "train_accuracy": tr, "val_accuracy": va}
            for e, (tr, va) in enumerate(zip(*curves[variant], strict=True))
        ]
    ctx.save_metrics("accuracy_per_epoch", records)

    final = {variant: (train[-1], val[-1]) for variant, (train, val) in curves.items()}
    gaps = {variant: tr - va for variant, (tr, va) in final.items()}
    holds, measured = decide(gaps, cfg["min_gap_reduction"])
    table = Table(
        "Accuracy after the last epoch and the generalisation gap",
        ["variant", "train acc", "val acc", "gap (train - val)", "best val acc"],
        [
            [variant, tr, va, gaps[variant], max(curves[variant][1])]
            for variant, (tr, va) in final.items()
        ],
    )
    notes = [
        f"Data: the first {len(y)} training images of the {data.source}; validation accuracy on all "
        f"{len(data.val.y)} validation images.",
        "The design gives no hyperparameters for this claim; we take Saito's ch. 6 overfitting setup (7 "
        "layers of which 6 hidden of 100 ReLU units, SGD lr 0.01, batch 100, dropout ratio 0.2, weight decay "
        "lambda 0.1), with the design's 1,000 training images instead of Saito's 300 and "
        f"{cfg['epochs']} epochs for every variant.",
        "Saito's dropout scales by (1 - p) at test time; normlab's is inverted dropout (scales by 1/(1 - p) "
        "in training): the same network in expectation.",
        "Weight decay adds lambda * W to each weight's gradient (the gradient of lambda/2 * ||W||^2, as "
        "Saito's loss term), on the Linear weights only: not on biases, nor batch norm's scale and shift.",
        "All variants start from the same initial weights and see the same batches.",
        "Read the gap with the accuracies: a variant that does not fit the training set (training accuracy "
        "well below 100 %) has a small gap without generalising better; the table gives both.",
    ]
    if cfg["epochs"] != FULL["epochs"]:
        notes.append(f"Shortened: {cfg['epochs']} epochs instead of {FULL['epochs']}.")
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, curves, gaps)],
        notes=notes,
        summary={"gaps": gaps, "final_val_accuracy": {v: va for v, (_, va) in final.items()}},
    )


def _build(ctx: RunContext, variant: str, n_inputs: int) -> tuple[nn.Sequential, optim.SGD]:
    cfg = ctx.config
    norm = "bn" if variant in (BN, BN_DECAY) else None
    dropout = cfg["dropout"] if variant == DROPOUT else 0.0
    decay = cfg["weight_decay"] if variant in (DECAY, BN_DECAY) else 0.0
    model = mlp(
        [n_inputs, *cfg["hidden"], 10],
        norm=norm,
        activation=cfg["activation"],
        dropout=dropout,
        rng=ctx.rng(1),  # also seeds the dropout masks
    )
    he_normal_init(model, ctx.rng(2))  # its own stream: the same weights for every variant
    ctx.place(model)
    opt = optim.SGD(optim.param_groups_no_decay(model, decay), lr=cfg["lr"])
    return model, opt


def _train(ctx: RunContext, variant, x, y, x_val, y_val) -> tuple[list[float], list[float]]:
    """Train one variant; training and validation accuracy before training and after every epoch."""
    cfg = ctx.config
    model, opt = _build(ctx, variant, x.shape[1])
    loader = DataLoader(
        x,
        y,
        batch_size=cfg["batch_size"],
        replacement=True,
        num_batches=cfg["iterations_per_epoch"],
        seed=ctx.seed,
    )
    train_acc, val_acc = [model_accuracy(model, x, y)], [model_accuracy(model, x_val, y_val)]

    def each_epoch(run, epoch: int) -> None:
        train_acc.append(model_accuracy(model, x, y))
        val_acc.append(model_accuracy(model, x_val, y_val))

    train_model(
        model,
        loader,
        optimizer=opt,
        loss=nn.CrossEntropyLoss(),
        epochs=cfg["epochs"],
        callbacks=[Measure(each_epoch=each_epoch)],
    )
    return train_acc, val_acc


def _plot(ctx: RunContext, curves, gaps):
    fig, axes = ctx.figure(2, 3, size=(14, 7.6))
    panels = np.ravel(axes)
    for ax, (variant, (train, val)) in zip(panels, curves.items(), strict=False):
        color = PALETTE.get(variant, "#444444")
        ax.plot(train, color=color, label="training")
        ax.plot(val, color=color, linestyle="--", label="validation")
        ax.set(
            title=f"{variant}: gap {gaps[variant]:.3f}",
            xlabel="epoch",
            ylabel="accuracy",
            ylim=(0, 1.02),
        )
        ax.grid(alpha=0.3)
        ax.legend(
            loc="best", fontsize=8
        )  # low curves (an untrained run) sit where "lower right" was
    bar_ax = panels[-1]
    for ax in panels[len(curves) : -1]:
        ax.set_visible(False)
    names = list(gaps)
    bar_ax.bar(
        range(len(names)),
        [gaps[n] for n in names],
        color=[PALETTE.get(n, "#444444") for n in names],
    )
    # wrapped: "weight decay" and "batch norm + weight decay" ran into each other on one line
    bar_ax.set_xticks(range(len(names)), [textwrap.fill(n, 10) for n in names], fontsize=8)
    bar_ax.set(
        title="generalisation gap after the last epoch", ylabel="training - validation accuracy"
    )
    bar_ax.grid(alpha=0.3, axis="y")
    return ctx.save_figure(fig, "train_and_validation_accuracy")
