"""bn-order: batch norm before or after the activation.

The seeds' readers ask whether BN belongs before the nonlinearity (Ioffe & Szegedy 2015, §3.2: "we add the
BN transform immediately before the nonlinearity", i.e. Linear -> BN -> ReLU) or after it (Linear -> ReLU ->
BN, which some practitioners report works as well or better).  There is no single published setup; ours:

- MLP track: 784 -> 100 -> 100 -> 10, each hidden layer Linear -> BN -> ReLU ("before") or Linear -> ReLU ->
  BN ("after"); SGD with momentum 0.9, lr 0.05, batch 64.
- CNN track: conv3x3(1 -> 8) -> [BN, ReLU in either order] -> maxpool 2 -> conv3x3(8 -> 16) -> [...] ->
  maxpool 2 -> linear(16·7·7 -> 10); the same optimizer.

Both orders start from the same weights and see the same batches for a given seed; several seeds give
a mean and a standard deviation of the test accuracy (eval mode: running statistics).

The test, fixed before running: with Δ = mean(after) - mean(before) and the standard error
SE = sqrt(s_before²/n + s_after²/n) (sample standard deviations over n seeds, Welch's form), a track shows
a difference when |Δ| >= 2·SE (about a two-sided 5 % test for a normal Δ); otherwise it reports "no
significant difference".  The claim "the order matters" holds if at least one track shows a difference.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from normlab import nn, optim
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import first, mnist, model_accuracy, train_model

FULL = {
    "tracks": ["mlp", "cnn"],
    "hidden": [100, 100],
    "channels": [8, 16],
    "seeds": 5,
    "optimizer": "SGD",
    "momentum": 0.9,
    "lr": 0.05,
    "batch_size": 64,
    "epochs": {"mlp": 5, "cnn": 2},
    "train_images": None,  # None: every training image
    "test_images": None,  # None: every test image
    "z": 2.0,  # a difference counts when |Δ| >= z · SE
}
QUICK = FULL | {"seeds": 3, "epochs": {"mlp": 2, "cnn": 1}, "train_images": 3000}
TINY = FULL | {
    "seeds": 2,
    "epochs": {"mlp": 1, "cnn": 1},
    "train_images": 128,
    "test_images": 200,
}

ORDERS = ("before", "after")
ORDER_NAMES = {"before": "BN -> ReLU", "after": "ReLU -> BN"}
TRACK_NAMES = {"mlp": "MLP (BatchNorm1d)", "cnn": "CNN (BatchNorm2d)"}
COLORS = {"before": "#1f5fbf", "after": "#c05020"}


@register(
    "bn-order",
    claim="The order matters: batch norm before the activation (BN -> ReLU) and after it (ReLU -> BN) "
    "reach different test accuracies.",
    source="Ioffe & Szegedy 2015 §3.2 (BN before the nonlinearity) against the practitioners' ReLU -> BN",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    records = []
    accuracies: dict[str, dict[str, list[float]]] = {}
    sources = []
    for track in cfg["tracks"]:
        data = mnist(ctx, images=track == "cnn")
        sources.append(data.source)
        x, y = first(data.train, cfg["train_images"])
        x_test, y_test = first(data.test, cfg["test_images"])
        accuracies[track] = {order: [] for order in ORDERS}
        for s in range(cfg["seeds"]):
            for order in ORDERS:
                ctx.log(f"bn-order: {track}, {ORDER_NAMES[order]}, seed {s}")
                # the same initial weights and batches for both orders at a given seed
                model = ctx.place(build(track, order, cfg, rng=ctx.rng(100 + s)))
                loss = _train(model, x, y, cfg, cfg["epochs"][track], seed=[ctx.seed, s])
                acc = model_accuracy(model, x_test, y_test)
                accuracies[track][order].append(acc)
                records.append(
                    {
                        "track": track,
                        "order": order,
                        "seed": s,
                        "final_train_loss": loss,
                        "test_accuracy": acc,
                    }
                )
    ctx.save_metrics("test_accuracy", records)

    decisions = {t: decide(a["before"], a["after"], cfg["z"]) for t, a in accuracies.items()}
    holds = any(d["different"] for d in decisions.values())
    measured = "; ".join(f"{TRACK_NAMES[t]}: {d['text']}" for t, d in decisions.items())
    table = Table(
        f"Test accuracy (%) over {cfg['seeds']} seeds, mean ± standard deviation",
        [
            "track",
            *[ORDER_NAMES[o] for o in ORDERS],
            "Δ (after - before, pp)",
            "2·SE (pp)",
            "verdict",
        ],
        [
            [
                TRACK_NAMES[t],
                *[
                    f"{100 * np.mean(accuracies[t][o]):.2f} ± {100 * _std(accuracies[t][o]):.2f}"
                    for o in ORDERS
                ],
                round(100 * d["delta"], 2),
                round(100 * cfg["z"] * d["se"], 2),
                d["winner"],
            ]
            for t, d in decisions.items()
        ],
    )
    notes = [
        f"Data: {sources[0]}; training uses the first "
        f"{cfg['train_images'] or 'all'} training images, accuracy is on the first "
        f"{cfg['test_images'] or 'all'} test images (eval mode).",
        "No single published setup exists for this question; the networks, optimizer and epochs are ours "
        f"(SGD, momentum {cfg['momentum']}, lr {cfg['lr']}, batch {cfg['batch_size']}, epochs "
        + ", ".join(f"{t} {cfg['epochs'][t]}" for t in cfg["tracks"])
        + ").",
        f"Test decided before running: a difference when |Δ| >= {cfg['z']:g}·SE, SE = sqrt(s1²/n + s2²/n) "
        "over seeds (sample standard deviations); otherwise 'no significant difference'. With few seeds "
        "this test is rough: it detects only differences large against the seed-to-seed spread.",
        "Each seed draws new initial weights and a new batch order, shared by both orders.",
    ]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, accuracies)],
        notes=notes,
        summary={
            "test_accuracy": accuracies,
            "delta": {t: d["delta"] for t, d in decisions.items()},
            "se": {t: d["se"] for t, d in decisions.items()},
            "winner": {t: d["winner"] for t, d in decisions.items()},
        },
    )


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def decide(before: Sequence[float], after: Sequence[float], z: float) -> Mapping:
    """Per-track decision from test accuracies over seeds: Δ = mean(after) - mean(before), SE from the
    sample standard deviations (Welch's form); a difference when |Δ| >= z·SE (and Δ != 0)."""
    delta = float(np.mean(after) - np.mean(before))
    se = math.sqrt(_std(before) ** 2 / len(before) + _std(after) ** 2 / len(after))
    different = delta != 0 and abs(delta) >= z * se
    if different:
        winner = f"{ORDER_NAMES['after' if delta > 0 else 'before']} wins"
    else:
        winner = "no significant difference"
    text = (
        f"BN -> ReLU {100 * np.mean(before):.2f} %, ReLU -> BN {100 * np.mean(after):.2f} %, "
        f"Δ {100 * delta:+.2f} pp against {z:g}·SE = {100 * z * se:.2f} pp: {winner}"
    )
    return {"delta": delta, "se": se, "different": different, "winner": winner, "text": text}


def build(track: str, order: str, cfg: Mapping, *, rng: np.random.Generator) -> nn.Sequential:
    """The track's network with BN before (``"before"``) or after (``"after"``) each hidden ReLU."""
    if order not in ORDERS:
        raise ValueError(f"bn-order: order must be one of {ORDERS}, got {order!r}")
    layers: list[nn.Module] = []

    def block(bn: nn.Module) -> list[nn.Module]:
        return [bn, nn.ReLU()] if order == "before" else [nn.ReLU(), bn]

    if track == "mlp":
        sizes = [784, *cfg["hidden"]]
        for n_in, n_out in itertools.pairwise(sizes):
            layers += [nn.Linear(n_in, n_out, rng=rng), *block(nn.BatchNorm1d(n_out))]
        layers.append(nn.Linear(sizes[-1], 10, rng=rng))
    elif track == "cnn":
        in_channels = 1
        for out_channels in cfg["channels"]:
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1, rng=rng))
            layers += [*block(nn.BatchNorm2d(out_channels)), nn.MaxPool2d(2)]
            in_channels = out_channels
        side = 28 // 2 ** len(cfg["channels"])
        layers += [nn.Flatten(), nn.Linear(in_channels * side * side, 10, rng=rng)]
    else:
        raise ValueError(f"bn-order: track must be 'mlp' or 'cnn', got {track!r}")
    return nn.Sequential(*layers)


def _train(model, x, y, cfg, epochs: int, seed: list[int]) -> float:
    """SGD with momentum; returns the mean training loss of the last epoch."""
    loader = DataLoader(x, y, batch_size=cfg["batch_size"], shuffle=True, seed=seed)
    opt = optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
    history = train_model(model, loader, optimizer=opt, loss=nn.CrossEntropyLoss(), epochs=epochs)
    per_epoch = len(loader)
    return float(np.mean([r["loss"] for r in history.iterations[-per_epoch:]]))


def _plot(ctx: RunContext, accuracies):
    tracks = list(accuracies)
    fig, axes = ctx.figure(1, len(tracks), size=(5 * len(tracks), 4), squeeze=False)
    for ax, track in zip(axes[0], tracks, strict=True):
        for i, order in enumerate(ORDERS):
            values = 100 * np.asarray(accuracies[track][order])
            ax.scatter(np.full(len(values), i), values, color=COLORS[order], alpha=0.6)
            ax.errorbar(
                [i + 0.15], [values.mean()], yerr=[_std(values)], fmt="o", color="black", capsize=4
            )
        ax.set_xticks(range(len(ORDERS)), [ORDER_NAMES[o] for o in ORDERS])
        ax.set_xlim(-0.5, len(ORDERS) - 0.5)
        ax.set(title=TRACK_NAMES[track], ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    return ctx.save_figure(fig, "test_accuracy_by_order")
