"""init-scale: batch norm makes training insensitive to the scale of the initial weights.

Saito, *Deep Learning from Scratch*, ch. 6 (the seed 000's experiment): an MLP 784 -> 5 x [100, ReLU] -> 10
is trained with and without batch norm after each hidden affine layer, for 16 weight scales w (every weight
drawn from N(0, w^2)), and the training accuracy on the 1,000 training images is recorded every epoch.
The source's BatchNormalization layer adds eps = 1e-6 to the variance (normlab's default is 1e-5, PyTorch's);
the published run uses the source's eps (``eps``).

Where the insensitivity ends: a hidden layer's pre-activation variance scales with w^2, and once it falls
below eps, BN divides by sqrt(var + eps) ~ sqrt(eps) instead of sqrt(var), so its output shrinks by
sqrt(var / (var + eps)) and the signal fades layer after layer.  The eps sweep trains the BN network at
every scale for each eps of ``eps_sweep`` and records, per scale, the first BN layer's input variance at
initialisation; the report states, per eps, the smallest scale at which BN still learns and the variance
there, from the numbers.
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
    "eps": 1e-6,  # the source's BatchNormalization eps (normlab's default: 1e-5)
    "eps_sweep": [1e-3, 1e-5, 1e-6, 1e-8],  # BN networks trained again at every scale with these
}
# quick (what `normlab demo` runs): one sweep eps, the largest, where the effect of eps shows first
QUICK = FULL | {"weight_scales": np.logspace(0, -4, 16)[::2].tolist(), "eps_sweep": [1e-3]}
TINY = FULL | {
    "train_images": 200,
    "weight_scales": [1.0, 0.01],
    "epochs": 2,
    "eps_sweep": [1e-3],
}


@register(
    "init-scale",
    claim="Batch norm makes training insensitive to the weight initialisation scale.",
    source="seed 000; Saito, Deep Learning from Scratch, ch. 6 (batch_norm_test.py)",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
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
            model = with_eps(mlp(sizes, norm=norm, weight_std=w, rng=ctx.rng(i)), cfg["eps"])
            accs = _train(ctx, ctx.place(model), i, x, y)
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
    threshold = cfg["learned_threshold"]
    holds, measured, bn_wins, learns = decide(final["plain"], final["batch norm"], threshold)

    sweep, variances = _eps_sweep(ctx, x, y, sizes, final["batch norm"])
    ctx.save_metrics("eps_sweep", sweep)
    limits = {
        eps: rescue_limit(
            scales, [r["final_train_accuracy"] for r in sweep if r["eps"] == eps], threshold
        )
        for eps in cfg["eps_sweep"]
    }
    finding = eps_finding(limits, scales, variances, threshold)
    figures = [_plot(ctx, scales, curves), _plot_sweep(ctx, sweep, variances, cfg)]
    table = Table(
        "Final training accuracy per weight scale",
        ["weight std", "plain", "batch norm"],
        [
            [f"{w:.2e}", float(a), float(b)]
            for w, a, b in zip(scales, final["plain"], final["batch norm"], strict=True)
        ],
    )
    sweep_table = Table(
        "eps sweep: final training accuracy of the BN network per weight scale and eps, and the first BN "
        "layer's input variance at initialisation",
        ["weight std", "input variance", *[f"eps {e:g}" for e in cfg["eps_sweep"]]],
        [
            [
                f"{w:.2e}",
                f"{variances[i]:.3g}",
                *[
                    next(
                        r["final_train_accuracy"]
                        for r in sweep
                        if r["eps"] == e and r["scale_index"] == i
                    )
                    for e in cfg["eps_sweep"]
                ],
            ]
            for i, w in enumerate(scales)
        ],
    )
    notes = [
        f"Data: the first {len(y)} training images of the {data.source}.",
        f"BatchNorm eps {cfg['eps']:g} (the source's layer); the eps sweep retrains the BN network with "
        f"eps in {cfg['eps_sweep']}. Where batch norm stops rescuing training: {finding}",
    ]
    if ctx.data == "sample":
        notes.append(
            "Saito used the first 1,000 images of the MNIST training split; these come from the test split."
        )
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table, sweep_table],
        figures=figures,
        notes=notes,
        summary={
            "bn_at_least_as_good": bn_wins,
            "scales": len(scales),
            "learned_bn": learns["batch norm"],
            "learned_plain": learns["plain"],
            "final_bn": final["batch norm"].tolist(),
            "final_plain": final["plain"].tolist(),
            "first_bn_input_variance": variances,
            "smallest_learning_scale_by_eps": {str(e): v for e, v in limits.items()},
        },
    )


def decide(
    final_plain: np.ndarray, final_bn: np.ndarray, threshold: float
) -> tuple[bool, str, int, dict[str, int]]:
    """Holds if batch norm ends at least as accurate as plain at >= 75 % of the scales and learns (final
    training accuracy >= ``threshold``) at more scales than plain."""
    final_plain, final_bn = np.asarray(final_plain), np.asarray(final_bn)
    bn_wins = int(np.sum(final_bn >= final_plain))
    learns = {
        "batch norm": int(np.sum(final_bn >= threshold)),
        "plain": int(np.sum(final_plain >= threshold)),
    }
    holds = bn_wins >= 0.75 * len(final_bn) and learns["batch norm"] > learns["plain"]
    measured = (
        f"batch norm ended at least as accurate as the plain network at {bn_wins} of {len(final_bn)} scales; "
        f"final training accuracy >= {threshold:.0%} at {learns['batch norm']} scales with batch norm vs "
        f"{learns['plain']} without (batch norm: min {final_bn.min():.3f}, max {final_bn.max():.3f}; "
        f"plain: min {final_plain.min():.3f}, max {final_plain.max():.3f})"
    )
    return holds, measured, bn_wins, learns


def with_eps(model: nn.Module, eps: float) -> nn.Module:
    """Set every BatchNorm layer's eps (the MLP builder uses the layer's default)."""
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm1d):
            layer.eps = float(eps)
    return model


def first_bn_input_variance(model: nn.Module, x: np.ndarray) -> float:
    """The variance (over the batch, averaged over features) of the input of ``model``'s first BatchNorm1d,
    from the layers before it, without touching any state (those layers are Linear only)."""
    import normlab as nl

    h = x
    with nl.no_grad():
        for layer in model.children():
            if isinstance(layer, nn.BatchNorm1d):
                return float(np.mean(np.var(np.asarray(h, np.float64), axis=0)))
            h = layer(h)
    raise ValueError("first_bn_input_variance: the model has no BatchNorm1d")


def rescue_limit(scales, finals, threshold: float) -> float | None:
    """The smallest weight scale from which on (towards larger scales) batch norm learns at every scale:
    walking from the largest scale down, the last one whose final accuracy reaches ``threshold`` before
    the first that does not; ``None`` if it fails at the largest."""
    order = np.argsort(scales)[::-1]
    limit = None
    for i in order:
        if finals[i] < threshold:
            break
        limit = float(scales[i])
    return limit


def eps_finding(limits, scales, variances, threshold: float) -> str:
    """One sentence per eps, from the numbers: down to which scale BN learns, the variance there vs eps."""
    parts = []
    for eps, limit in limits.items():
        if limit is None:
            parts.append(
                f"eps {eps:g}: BN does not reach {threshold:.0%} even at the largest scale"
            )
            continue
        i = list(scales).index(limit)
        below = [j for j, w in enumerate(scales) if w < limit]
        tail = (
            f"; at the next smaller scale {scales[below[0]]:.2e} (variance {variances[below[0]]:.3g}) it does not"
            if below and below[0] == i + 1
            else ""
        )
        parts.append(
            f"eps {eps:g}: BN learns (>= {threshold:.0%}) down to w = {limit:.2e}, where the first BN "
            f"layer's input variance is {variances[i]:.3g} ({variances[i] / eps:.3g} x eps){tail}"
        )
    return "; ".join(parts) + "."


def _eps_sweep(ctx: RunContext, x, y, sizes, final_bn) -> tuple[list[dict], list[float]]:
    """The BN network at every scale for each eps of the sweep (the published eps reuses its run)."""
    cfg = ctx.config
    records, variances = [], []
    for i, w in enumerate(cfg["weight_scales"]):
        variances.append(
            first_bn_input_variance(mlp(sizes, norm="bn", weight_std=w, rng=ctx.rng(i)), x)
        )
        for eps in cfg["eps_sweep"]:
            if eps == cfg["eps"]:
                acc = float(final_bn[i])
            else:
                ctx.log(f"init-scale: eps sweep w={w:.2e} eps={eps:g}")
                model = with_eps(mlp(sizes, norm="bn", weight_std=w, rng=ctx.rng(i)), eps)
                acc = _train(ctx, ctx.place(model), i, x, y)[-1]
            records.append(
                {
                    "weight_scale": w,
                    "scale_index": i,
                    "eps": eps,
                    "first_bn_input_variance": variances[-1],
                    "variance_over_eps": variances[-1] / eps,
                    "final_train_accuracy": acc,
                }
            )
    return records, variances


def _plot_sweep(ctx: RunContext, sweep, variances, cfg):
    fig, (ax_acc, ax_var) = ctx.figure(1, 2, size=(11, 4))
    scales = cfg["weight_scales"]
    for eps in cfg["eps_sweep"]:
        accs = [r["final_train_accuracy"] for r in sweep if r["eps"] == eps]
        ax_acc.plot(scales, accs, marker="o", label=f"eps {eps:g}")
    ax_acc.axhline(cfg["learned_threshold"], color="gray", linestyle=":", linewidth=0.8)
    ax_acc.set(
        xscale="log", xlabel="weight std w", ylabel="final training accuracy (BN)", ylim=(0, 1.02)
    )
    ax_var.plot(
        scales, variances, marker="o", color="black", label="first BN layer's input variance"
    )
    for eps in cfg["eps_sweep"]:
        ax_var.axhline(eps, linestyle="--", linewidth=0.8, label=f"eps {eps:g}")
    ax_var.set(
        xscale="log", yscale="log", xlabel="weight std w", ylabel="variance at initialisation"
    )
    for ax in (ax_acc, ax_var):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return ctx.save_figure(fig, "eps_sweep")


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
