"""batch-size: batch norm degrades at small batch sizes, group norm does not.

Wu & He, *Group Normalization* (ECCV 2018), fig. 1 / table 2: ResNet-50 on ImageNet, top-1 validation error
with BN 23.6 / 23.7 / 24.8 / 27.3 / 34.7 % and with GN 24.1 / 24.2 / 24.0 / 24.2 / 24.1 % at 32 / 16 / 8 / 4 / 2
images per GPU.  BN's statistics come from the batch, so they get noisy when the batch is small, and the
running averages used at test time stop matching what the network saw in training; GN (and LN, IN) compute
statistics per sample and do not depend on the batch at all.

Here (our choice, the paper has no MNIST setup): a small CNN on MNIST, conv3x3(1 -> 8, pad 1) -> norm -> ReLU
-> maxpool 2 -> conv3x3(8 -> 16, pad 1) -> norm -> ReLU -> maxpool 2 -> flatten -> linear(16·7·7 -> 10), with
the normalizer none / BatchNorm2d / GroupNorm(4 groups) / LayerNorm (GroupNorm(1, C): over C, H, W) /
InstanceNorm2d (affine), trained with SGD + momentum for the same number of epochs at batch sizes 2 ... 64,
the learning rate scaled linearly with the batch size (Goyal et al. 2017, as Wu & He do).  We compare the
validation error each normalizer reaches at each batch size.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from normlab import nn, optim
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import Measure, first, is_finite_loss, mnist, model_accuracy, train_model

FULL = {
    "channels": [8, 16],
    "norms": ["none", "bn", "gn", "ln", "in"],
    "groups": 4,  # GroupNorm's groups (LayerNorm is GroupNorm with 1 group, InstanceNorm with C)
    "batch_sizes": [2, 4, 8, 16, 32, 64],
    "optimizer": "SGD",
    "momentum": 0.9,
    "base_lr": 0.05,  # at base_batch_size; lr = base_lr * batch_size / base_batch_size
    "base_batch_size": 32,
    "epochs": 2,
    "train_images": None,  # None: every training image
    "val_images": None,  # None: every validation image
    "margin": 0.01,  # validation error, as a fraction: 1 percentage point
}
QUICK = FULL | {
    "norms": ["none", "bn", "gn"],
    "batch_sizes": [2, 8, 32],
    "epochs": 1,
    "train_images": 1500,
    "val_images": 1000,
}
TINY = FULL | {
    "norms": ["none", "bn", "gn"],
    "batch_sizes": [2, 8],
    "train_images": 64,
    "val_images": 100,
}

NORM_NAMES = {
    "none": "no normalization",
    "bn": "BatchNorm",
    "gn": "GroupNorm",
    "ln": "LayerNorm",
    "in": "InstanceNorm",
}
NORM_COLORS = {
    "none": "#777777",
    "bn": "#1f5fbf",
    "gn": "#c05020",
    "ln": "#3a9a3a",
    "in": "#8a4fb0",
}
CHANCE_ERROR = 0.9  # the validation error recorded for a run whose loss became NaN/inf (10 classes)

# Wu & He 2018, table 2 (ResNet-50, ImageNet, top-1 validation error in %, by images per GPU)
PUBLISHED_BATCH_SIZES = [32, 16, 8, 4, 2]
PUBLISHED_ERROR = {
    "bn": [23.6, 23.7, 24.8, 27.3, 34.7],
    "gn": [24.1, 24.2, 24.0, 24.2, 24.1],
}


@register(
    "batch-size",
    claim="Batch norm degrades at small batch sizes; group norm does not.",
    source="Wu & He, Group Normalization (ECCV 2018), fig. 1 and table 2",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx, images=True)
    x, y = first(data.train, cfg["train_images"])
    x_val, y_val = first(data.val, cfg["val_images"])

    records = []
    errors: dict[str, dict[int, float]] = {norm: {} for norm in cfg["norms"]}
    for norm in cfg["norms"]:
        for batch_size in cfg["batch_sizes"]:
            lr = cfg["base_lr"] * batch_size / cfg["base_batch_size"]
            ctx.log(f"batch-size: {NORM_NAMES[norm]}, batch {batch_size}, lr {lr:g}")
            # the same initial weights for every run: only the normalizer and the batch size differ
            model = small_cnn(norm, cfg["channels"], cfg["groups"], rng=ctx.rng(1))
            outcome = train(model, x, y, batch_size, lr, cfg, seed=ctx.seed)
            val_error = (
                CHANCE_ERROR if outcome["diverged"] else 1.0 - model_accuracy(model, x_val, y_val)
            )
            errors[norm][batch_size] = val_error
            records.append(
                {
                    "norm": norm,
                    "batch_size": batch_size,
                    "lr": lr,
                    "steps": outcome["steps"],
                    "final_train_loss": outcome["epoch_losses"][-1],
                    "diverged": outcome["diverged"],
                    "val_error": val_error,
                }
            )
    ctx.save_metrics("val_error", records)

    holds, measured = decide(errors["bn"], errors["gn"], cfg["margin"])
    batch_sizes = cfg["batch_sizes"]
    # the steps a run takes if it does not diverge: the same for every normalizer
    steps = {b: cfg["epochs"] * (len(y) // b) for b in batch_sizes}
    table = Table(
        "Validation error (%) by batch size (images per step)",
        ["normalizer", *[str(b) for b in batch_sizes], "smallest batch - best (pp)"],
        [
            [
                NORM_NAMES[norm],
                *[round(100 * errors[norm][b], 2) for b in batch_sizes],
                round(100 * degradation(errors[norm]), 2),
            ]
            for norm in cfg["norms"]
        ]
        + [["SGD steps", *[steps[b] for b in batch_sizes], ""]],
    )
    diverged = [f"{r['norm']} at batch {r['batch_size']}" for r in records if r["diverged"]]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, errors, batch_sizes)],
        notes=_notes(cfg, data.source, len(y), len(y_val), diverged),
        summary={
            "val_error": {
                norm: {str(b): e for b, e in errs.items()} for norm, errs in errors.items()
            },
            "degradation_bn": degradation(errors["bn"]),
            "degradation_gn": degradation(errors["gn"]),
        },
    )


def decide(
    bn_errors: Mapping[int, float], gn_errors: Mapping[int, float], margin: float
) -> tuple[bool, str]:
    """The verdict, from validation errors (fractions) by batch size.

    A normalizer's degradation is its error at the smallest batch size minus its lowest error at any batch
    size (Wu & He's reference is their best batch, 32; at equal epochs our largest batches take the fewest
    steps, so the largest batch is not a fair reference).  The claim holds if BN degrades by more than
    ``margin``, by more than GN does plus ``margin``, and GN degrades by at most ``margin``.
    """
    bn, gn = degradation(bn_errors), degradation(gn_errors)
    holds = bn > margin and bn - gn > margin and gn <= margin
    small = min(bn_errors)

    def describe(name: str, errors: Mapping[int, float], change: float) -> str:
        best = min(errors, key=errors.__getitem__)
        return (
            f"{name} {100 * errors[small]:.2f} % at batch {small} vs {100 * errors[best]:.2f} % at its "
            f"best batch {best} ({100 * change:+.2f} pp)"
        )

    measured = (
        f"validation error {describe('BN', bn_errors, bn)}, {describe('GN', gn_errors, gn)}; BN's "
        f"degradation minus GN's {100 * (bn - gn):+.2f} pp (criterion: BN degrades by more than "
        f"{100 * margin:g} pp and by more than GN plus {100 * margin:g} pp, GN by at most "
        f"{100 * margin:g} pp)"
    )
    return holds, measured


def degradation(errors: Mapping[int, float]) -> float:
    """Error at the smallest batch size minus the lowest error at any batch size (>= 0)."""
    return float(errors[min(errors)] - min(errors.values()))


def norm_layer(kind: str, channels: int, groups: int) -> nn.Module | None:
    """The normalizer ``kind`` for ``channels`` feature maps, or ``None`` for no normalization."""
    if kind == "none":
        return None
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(groups, channels)
    if kind == "ln":
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W), with a per-channel affine
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"batch-size: unknown normalizer {kind!r}")


def small_cnn(
    norm: str, channels: list[int], groups: int, *, rng: np.random.Generator
) -> nn.Sequential:
    """conv3x3 -> norm -> ReLU -> maxpool, twice, then a linear classifier, for 28 x 28 images."""
    layers: list[nn.Module] = []
    in_channels = 1
    for out_channels in channels:
        layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1, rng=rng))
        normalizer = norm_layer(norm, out_channels, groups)
        if normalizer is not None:
            layers.append(normalizer)
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = out_channels
    side = 28 // 2 ** len(channels)
    layers += [nn.Flatten(), nn.Linear(in_channels * side * side, 10, rng=rng)]
    return nn.Sequential(*layers)


def train(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int, lr: float, cfg, seed: int
) -> dict:
    """SGD with momentum for ``cfg["epochs"]`` epochs; stops early (and says so) if the loss diverges."""
    opt = optim.SGD(model.parameters(), lr=lr, momentum=cfg["momentum"])
    # every step sees exactly ``batch_size`` images; the same shuffles for every normalizer
    loader = DataLoader(x, y, batch_size=batch_size, shuffle=True, drop_last=True, seed=seed)
    losses: list[float] = []
    epoch_losses: list[float] = []

    def each_epoch(run, epoch: int) -> None:
        epoch_losses.append(float(np.mean(losses)))
        losses.clear()

    history = train_model(
        model,
        loader,
        optimizer=opt,
        loss=nn.CrossEntropyLoss(),
        epochs=cfg["epochs"],
        callbacks=[Measure(lambda run, _: losses.append(run.step.loss), each_epoch)],
        stop_when_diverged=True,
    )
    return {
        "steps": len(history.iterations),
        "epoch_losses": epoch_losses,
        "diverged": not is_finite_loss(history.iterations[-1]["loss"]),
    }


def _notes(cfg, source: str, n_train: int, n_val: int, diverged: list[str]) -> list[str]:
    channels = " -> ".join(str(c) for c in cfg["channels"])
    notes = [
        f"Data: {n_train} training and {n_val} validation images of the {source}.",
        "Wu & He's setup (ResNet-50, ImageNet, 8 GPUs, 100 epochs) is out of reach offline; the model here "
        f"is our choice: two conv3x3 -> norm -> ReLU -> maxpool 2 blocks with {channels} channels, then "
        "a linear classifier.",
        f"GroupNorm uses {cfg['groups']} groups; LayerNorm is GroupNorm(1, C) (statistics over C, H, W); "
        "InstanceNorm2d is affine and, like PyTorch's default, keeps no running statistics.",
        f"SGD with momentum {cfg['momentum']}, lr = {cfg['base_lr']} x batch size / "
        f"{cfg['base_batch_size']} (linear scaling, our base lr), {cfg['epochs']} epoch(s) at every batch "
        "size, so small batches take more steps; incomplete last batches are dropped.",
        "Published reference (Wu & He 2018, table 2, ResNet-50 ImageNet top-1 error at 32/16/8/4/2 images "
        "per GPU): BN 23.6/23.7/24.8/27.3/34.7 %, GN 24.1/24.2/24.0/24.2/24.1 %.",
        "Validation error is measured in eval mode: BN uses its running statistics.",
        "BN's statistics at batch size N are over N x H x W values per channel: N x 784 after the first "
        "convolution and N x 196 after the second here, against N x 49 in ResNet-50's last stage.",
    ]
    if diverged:
        notes.append(
            f"Diverged (NaN/inf loss; error recorded as {CHANCE_ERROR:.0%}, chance level): "
            + ", ".join(diverged)
        )
    return notes


def _plot(ctx: RunContext, errors: dict[str, dict[int, float]], batch_sizes: list[int]):
    fig, (ax_ours, ax_paper) = ctx.figure(1, 2, size=(11, 4.2))
    for norm, errs in errors.items():
        ax_ours.plot(
            batch_sizes,
            [100 * errs[b] for b in batch_sizes],
            marker="o",
            label=NORM_NAMES[norm],
            color=NORM_COLORS[norm],
        )
    ax_ours.set(
        title="This run: small CNN, MNIST",
        xlabel="batch size (images per step)",
        ylabel="validation error (%)",
    )
    for norm in ("bn", "gn"):
        ax_paper.plot(
            PUBLISHED_BATCH_SIZES,
            PUBLISHED_ERROR[norm],
            marker="o",
            label=NORM_NAMES[norm],
            color=NORM_COLORS[norm],
        )
    ax_paper.set(
        title="Published: Wu & He 2018, ResNet-50, ImageNet",
        xlabel="batch size (images per GPU)",
        ylabel="top-1 validation error (%)",
    )
    for ax, ticks in ((ax_ours, batch_sizes), (ax_paper, PUBLISHED_BATCH_SIZES)):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return ctx.save_figure(fig, "val_error_vs_batch_size")
