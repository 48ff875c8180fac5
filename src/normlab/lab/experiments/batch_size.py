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

Two tracks.  In the CNN, BatchNorm2d's statistics cover N x H x W values per channel, so even batch 2 gives
2 x 784 values after the first convolution: batch noise is small.  The MLP track (784 -> 100 -> 100 -> 10,
Linear -> norm -> ReLU, BatchNorm1d) has statistics over the N samples of the batch only, the case Wu & He's
argument is about.  Extra lines: Batch Renorm (fixed r_max 3, d_max 5, the paper's final limits: our runs are
far shorter than its 5k-step warm-up), GroupNorm + Weight Standardization (WSConv2d; CNN only) and Ghost BN
(virtual batch ``ghost_batch`` = 2 at every batch size: batch-of-2 statistics with the larger batch's
gradient averaging).  Each track has its own verdict from :func:`decide`; the claim holds overall if it
holds in every track.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

from normlab import nn, optim
from normlab.data import DataLoader
from normlab.functional import RenormClipping
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import (
    Measure,
    first,
    images,
    is_finite_loss,
    model_accuracy,
    sample_grid,
    train_model,
)

FULL = {
    "channels": [8, 16],
    "hidden": [100, 100],  # the MLP track
    "norms": ["none", "bn", "gn", "ln", "in", "renorm", "gn-ws", "ghost"],
    "mlp_norms": ["none", "bn", "gn", "ln", "renorm", "ghost"],
    "ghost_batch": 2,
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
    "norms": ["none", "bn", "gn", "renorm", "gn-ws", "ghost"],
    "batch_sizes": [2, 8, 32],
    "epochs": 1,
    "train_images": 1500,
    "val_images": 1000,
}
TINY = FULL | {
    "norms": ["bn", "gn"],
    "mlp_norms": ["bn", "gn", "renorm", "ghost"],
    "batch_sizes": [2, 8],
    "train_images": 32,
    "val_images": 100,
}

NORM_NAMES = {
    "none": "no normalization",
    "bn": "BatchNorm",
    "gn": "GroupNorm",
    "ln": "LayerNorm",
    "in": "InstanceNorm",
    "renorm": "Batch Renorm",
    "gn-ws": "GroupNorm + WS",
    "ghost": "Ghost BN (virtual 2)",
}
NORM_COLORS = {
    "none": "#777777",
    "bn": "#1f5fbf",
    "gn": "#c05020",
    "ln": "#3a9a3a",
    "in": "#8a4fb0",
    "renorm": "#2a9d9d",
    "gn-ws": "#d4a017",
    "ghost": "#5a5ad0",
}
TRACKS = {"cnn": "small CNN (BatchNorm2d: N x H x W values)", "mlp": "MLP (BatchNorm1d: N values)"}
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
    data=("sample", "full", "cifar10", "fashion-mnist"),
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = images(ctx)
    x, y = first(data.train, cfg["train_images"])
    x_val, y_val = first(data.val, cfg["val_images"])

    x_flat, x_val_flat = x.reshape(len(x), -1), x_val.reshape(len(x_val), -1)

    records = []
    errors: dict[str, dict[str, dict[int, float]]] = {}
    for track, norms in (("cnn", cfg["norms"]), ("mlp", cfg["mlp_norms"])):
        errors[track] = {norm: {} for norm in norms}
        xs, xvs = (x, x_val) if track == "cnn" else (x_flat, x_val_flat)
        for norm in norms:
            for batch_size in cfg["batch_sizes"]:
                lr = cfg["base_lr"] * batch_size / cfg["base_batch_size"]
                ctx.log(f"batch-size: {track}, {NORM_NAMES[norm]}, batch {batch_size}, lr {lr:g}")
                # the same initial weights for every run of a track: only normalizer and batch differ
                if track == "cnn":
                    model = small_cnn(
                        norm,
                        cfg["channels"],
                        cfg["groups"],
                        rng=ctx.rng(1),
                        ghost_batch=cfg["ghost_batch"],
                        image_shape=data.image_shape,
                    )
                else:
                    model = small_mlp(norm, cfg, rng=ctx.rng(2), n_inputs=x_flat.shape[1])
                outcome = train(ctx.place(model), xs, y, batch_size, lr, cfg, seed=ctx.seed)
                val_error = (
                    CHANCE_ERROR if outcome["diverged"] else 1.0 - model_accuracy(model, xvs, y_val)
                )
                errors[track][norm][batch_size] = val_error
                records.append(
                    {
                        "track": track,
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

    decisions = {t: decide(errors[t]["bn"], errors[t]["gn"], cfg["margin"]) for t in errors}
    holds = all(h for h, _ in decisions.values())
    measured = (
        "; ".join(f"{TRACKS[t]}: {verdict(h)} ({m})" for t, (h, m) in decisions.items())
        + "; the claim holds overall only if it holds in every track"
    )
    batch_sizes = cfg["batch_sizes"]
    # the steps a run takes if it does not diverge: the same for every normalizer
    steps = {b: cfg["epochs"] * (len(y) // b) for b in batch_sizes}
    tables = [
        Table(
            f"{TRACKS[track]}: validation error (%) by batch size; verdict {verdict(decisions[track][0])}",
            ["normalizer", *[str(b) for b in batch_sizes], "smallest batch - best (pp)"],
            [
                [
                    NORM_NAMES[norm],
                    *[round(100 * errors[track][norm][b], 2) for b in batch_sizes],
                    round(100 * degradation(errors[track][norm]), 2),
                ]
                for norm in errors[track]
            ]
            + [["SGD steps", *[steps[b] for b in batch_sizes], ""]],
        )
        for track in errors
    ]
    diverged = [
        f"{r['track']} {r['norm']} at batch {r['batch_size']}" for r in records if r["diverged"]
    ]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=tables,
        figures=[_plot(ctx, errors, batch_sizes), sample_grid(ctx, data)],
        notes=_notes(cfg, data, len(y), len(y_val), diverged),
        summary={
            "verdict_by_track": {t: verdict(h) for t, (h, _) in decisions.items()},
            "val_error": {
                t: {norm: {str(b): e for b, e in errs.items()} for norm, errs in errors[t].items()}
                for t in errors
            },
            "degradation_bn": {t: degradation(errors[t]["bn"]) for t in errors},
            "degradation_gn": {t: degradation(errors[t]["gn"]) for t in errors},
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


def norm_layer(kind: str, channels: int, groups: int, ghost_batch: int = 2) -> nn.Module | None:
    """The normalizer ``kind`` for ``channels`` feature maps, or ``None`` for no normalization."""
    if kind == "none":
        return None
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "renorm":
        return nn.BatchRenorm2d(channels, renorm_clipping=RenormClipping(r_max=3.0, d_max=5.0))
    if kind == "ghost":
        return nn.BatchNorm2d(channels, virtual_batch_size=ghost_batch)
    if kind in ("gn", "gn-ws"):
        return nn.GroupNorm(groups, channels)
    if kind == "ln":
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W), with a per-channel affine
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"batch-size: unknown normalizer {kind!r}")


def small_mlp(norm: str, cfg, *, rng: np.random.Generator, n_inputs: int = 784) -> nn.Sequential:
    """n_inputs (784 for MNIST) -> hidden -> 10 with Linear -> norm (BatchNorm1d family, GroupNorm over
    features) -> ReLU."""
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise([n_inputs, *cfg["hidden"]]):
        layers.append(nn.Linear(n_in, n_out, rng=rng))
        if norm == "bn":
            layers.append(nn.BatchNorm1d(n_out))
        elif norm == "renorm":
            layers.append(
                nn.BatchRenorm1d(n_out, renorm_clipping=RenormClipping(r_max=3.0, d_max=5.0))
            )
        elif norm == "ghost":
            layers.append(nn.BatchNorm1d(n_out, virtual_batch_size=cfg["ghost_batch"]))
        elif norm == "gn":
            layers.append(nn.GroupNorm(cfg["groups"], n_out))
        elif norm == "ln":
            layers.append(nn.LayerNorm(n_out))
        elif norm != "none":
            raise ValueError(f"batch-size: normalizer {norm!r} has no MLP form")
        layers.append(nn.ReLU())
    layers.append(nn.Linear(cfg["hidden"][-1], 10, rng=rng))
    return nn.Sequential(*layers)


def small_cnn(
    norm: str,
    channels: list[int],
    groups: int,
    *,
    rng: np.random.Generator,
    ghost_batch: int = 2,
    image_shape: tuple[int, int, int] = (1, 28, 28),
) -> nn.Sequential:
    """conv3x3 -> norm -> ReLU -> maxpool per entry of ``channels``, then a linear classifier, for
    ``image_shape`` (C, H, W) images, MNIST's 1 x 28 x 28 by default (WSConv2d for ``"gn-ws"``)."""
    layers: list[nn.Module] = []
    in_channels, height, width = image_shape
    conv = nn.WSConv2d if norm == "gn-ws" else nn.Conv2d
    for out_channels in channels:
        layers.append(conv(in_channels, out_channels, 3, padding=1, rng=rng))
        normalizer = norm_layer(norm, out_channels, groups, ghost_batch)
        if normalizer is not None:
            layers.append(normalizer)
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = out_channels
    shrink = 2 ** len(channels)
    features = in_channels * (height // shrink) * (width // shrink)
    layers += [nn.Flatten(), nn.Linear(features, 10, rng=rng)]
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


def _notes(cfg, data, n_train: int, n_val: int, diverged: list[str]) -> list[str]:
    channels = " -> ".join(str(c) for c in cfg["channels"])
    c, h, w = data.image_shape
    notes = [
        f"Data: {n_train} training and {n_val} validation images of the {data.source}.",
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
        f"MLP track: {c * h * w} -> {' -> '.join(map(str, cfg['hidden']))} -> 10, Linear -> norm -> ReLU; "
        "BatchNorm1d's "
        "statistics are over the batch's N samples only; GroupNorm there groups the features of a sample.",
        "Batch Renorm uses fixed limits r_max 3, d_max 5 (Ioffe's final values; his 5k-step warm-up is longer "
        f"than our runs); Ghost BN normalizes chunks of {cfg['ghost_batch']} samples at every batch size; "
        "GroupNorm + WS uses WSConv2d (CNN only).",
        "The tiny-mode metrics of this experiment changed with the two-track design (issue 12).",
        "BN's statistics at batch size N are over N x H x W values per channel: "
        f"N x {h * w} after the first convolution and N x {(h // 2) * (w // 2)} after the second here, "
        "against N x 49 in ResNet-50's last stage.",
    ]
    if diverged:
        notes.append(
            f"Diverged (NaN/inf loss; error recorded as {CHANCE_ERROR:.0%}, chance level): "
            + ", ".join(diverged)
        )
    return notes


def _plot(ctx: RunContext, errors: dict[str, dict[str, dict[int, float]]], batch_sizes: list[int]):
    fig, axes = ctx.figure(1, len(errors) + 1, size=(5.2 * (len(errors) + 1), 4.2))
    for ax, track in zip(axes, errors, strict=False):
        for norm, errs in errors[track].items():
            ax.plot(
                batch_sizes,
                [100 * errs[b] for b in batch_sizes],
                marker="o",
                label=NORM_NAMES[norm],
                color=NORM_COLORS[norm],
            )
        ax.set(
            title=f"This run: {TRACKS[track]}", xlabel="batch size", ylabel="validation error (%)"
        )
    ax_paper = axes[-1]
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
    for ax, ticks in [*((a, batch_sizes) for a in axes[:-1]), (ax_paper, PUBLISHED_BATCH_SIZES)]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        # below the axes: with four lines of two points each, any spot inside covered one of them
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)
    return ctx.save_figure(fig, "val_error_vs_batch_size")
