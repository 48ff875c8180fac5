"""activations: batch norm keeps the distributions of hidden activations well scaled.

Saito, *Deep Learning from Scratch*, ch. 6 (``weight_init_activation_histogram.py``) draws
histograms of the activations of five hidden layers of 100 units: with sigmoid and weights of std 1
they pile up at 0 and 1 (saturation, vanishing gradients); with ReLU and std 0.01 they collapse
towards 0.  The
chapter then introduces batch norm as the remedy.  We take the two badly scaled initialisations (our
choice: std 1 for sigmoid, std 0.01 for ReLU, Saito's first and ReLU examples), build the MLP
784 -> 5 x [100] -> 10 with and without batch norm after each hidden affine layer, and record the
activations on MNIST images at initialisation and after training.
"""

from __future__ import annotations

import numpy as np

import normlab as nl
from normlab import nn, optim
from normlab.backend import to_host
from normlab.config import mlp
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import first, mnist, model_accuracy, train_model
from normlab.train.batches import on_device

FULL = {
    "hidden": [100, 100, 100, 100, 100],
    "activations": ["sigmoid", "relu"],
    "weight_std": {"sigmoid": 1.0, "relu": 0.01},  # the badly scaled inits of Saito's histograms
    "histogram_images": 1000,  # the first training images, one batch (Saito used 1,000 inputs)
    "optimizer": "Adam",
    "lr": 1e-3,
    "batch_size": 100,
    "epochs": 10,
    "train_limit": None,  # use every training image
    # the decision (fixed before the first run), on the last hidden layer:
    "saturation_bounds": [0.01, 0.99],  # a sigmoid output outside these bounds is saturated
    "max_saturated_fraction": 0.05,  # well scaled (sigmoid): at most this fraction saturated
    "relu_std_range": [0.1, 10.0],  # well scaled (ReLU): the activations' std within this range
}
QUICK = FULL | {"epochs": 3}
TINY = FULL | {"epochs": 1, "train_limit": 500, "histogram_images": 200}

MOMENTS = ("initialisation", "after training")


@register(
    "activations",
    claim="Batch norm keeps activation distributions well scaled: with it, the hidden activations "
    "of a badly initialised MLP neither saturate (sigmoid) nor collapse (ReLU), at initialisation "
    "and after training.",
    source="Saito, Deep Learning from Scratch, ch. 6 (weight_init_activation_histogram.py)",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x, y = first(data.train, cfg["train_limit"])
    probe = x[: cfg["histogram_images"]]

    activations: dict[tuple[str, str, str], list[np.ndarray]] = {}
    records, accuracies = [], {}
    for i, act in enumerate(cfg["activations"]):
        for norm in (None, "bn"):
            config = configuration_label(act, norm)
            ctx.log(f"activations: {config}")
            # the same initial weights with and without batch norm
            model = mlp(
                [x.shape[1], *cfg["hidden"], 10],
                norm=norm,
                activation=act,
                weight_std=cfg["weight_std"][act],
                rng=ctx.rng(i),
            )
            ctx.place(model)
            activations[(act, config, MOMENTS[0])] = hidden_activations(model, probe)
            train_network(model, x, y, cfg, ctx.seed + i)
            activations[(act, config, MOMENTS[1])] = hidden_activations(model, probe)
            accuracies[config] = model_accuracy(model, data.val.x, data.val.y)
    for (act, config, moment), layers in activations.items():
        for depth, a in enumerate(layers, start=1):
            records.append(
                {"configuration": config, "moment": moment, "layer": depth}
                | layer_statistics(a, act, cfg["saturation_bounds"])
            )
    ctx.save_metrics("activation_statistics", records)

    last = {
        (act, norm, moment): health(
            activations[(act, configuration_label(act, norm), moment)][-1], act, cfg
        )
        for act in cfg["activations"]
        for norm in (None, "bn")
        for moment in MOMENTS
    }
    holds, measured = decide(last, cfg["activations"])
    figures = [_plot(ctx, activations, cfg)]
    table = Table(
        "Last hidden layer: the decision statistic, and validation accuracy after training",
        ["configuration", "statistic", *MOMENTS, "well scaled (init / trained)", "val accuracy"],
        [
            [
                configuration_label(act, norm),
                STATISTIC[act],
                last[(act, norm, MOMENTS[0])][0],
                last[(act, norm, MOMENTS[1])][0],
                " / ".join("yes" if last[(act, norm, m)][1] else "no" for m in MOMENTS),
                accuracies[configuration_label(act, norm)],
            ]
            for act in cfg["activations"]
            for norm in (None, "bn")
        ],
    )
    std = cfg["weight_std"]
    low, high = cfg["relu_std_range"]
    notes = [
        f"Data: {data.source}; training on {len(y)} images; the histograms use the first "
        f"{len(probe)} of them as one batch.",
        f"Initialisation (our choice, from Saito's examples): every Linear weight ~ N(0, std^2), "
        f"std {std['sigmoid']} for the sigmoid networks and {std['relu']} for the ReLU networks; "
        "biases 0.  With and without batch norm the networks start from the same weights.",
        "Saito's histograms use 1,000 Gaussian inputs of 100 features and no training; ours use "
        "MNIST images (784 features) and add the state after training (our choice: "
        f"{cfg['optimizer']} lr {cfg['lr']}, batch {cfg['batch_size']}, {cfg['epochs']} epochs).",
        "Activations are measured in training mode (batch statistics over the probe batch, as the "
        "layers see them while learning); the running statistics are restored afterwards.",
        f"Decision, fixed before the first run, on the last hidden layer: a sigmoid layer is well "
        f"scaled if at most {cfg['max_saturated_fraction']:.0%} of its outputs are below "
        f"{cfg['saturation_bounds'][0]} or above {cfg['saturation_bounds'][1]}; a ReLU layer if "
        f"the std of its outputs lies in [{low}, {high}].  "
        "The claim holds if, for both activations, the batch-norm network is well scaled at "
        "initialisation and after training and the plain network is not at initialisation.",
        "ReLU histograms leave out the exact zeros (their share is printed in each panel) and clip "
        "values above the plotted range into the last bin.",
    ]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=figures,
        notes=notes,
        summary={
            "last_layer": {
                f"{configuration_label(act, norm)}, {moment}": value
                for (act, norm, moment), (value, _) in last.items()
            },
            "val_accuracy": accuracies,
        },
    )


STATISTIC = {"sigmoid": "saturated fraction", "relu": "std"}


def configuration_label(activation: str, norm: str | None) -> str:
    return f"{activation}, {'batch norm' if norm else 'plain'}"


def train_network(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: dict, seed: int) -> None:
    loader = DataLoader(x, y, batch_size=cfg["batch_size"], shuffle=True, seed=seed)
    opt = optim.Adam(model.parameters(), lr=cfg["lr"])
    train_model(model, loader, optimizer=opt, loss=nn.CrossEntropyLoss(), epochs=cfg["epochs"])


def hidden_activations(model: nn.Sequential, x: np.ndarray) -> list[np.ndarray]:
    """The output of every hidden activation layer for the batch ``x``, in training mode (batch
    statistics), as NumPy arrays; the model's state and mode are left as they were."""
    saved, was_training = model.state_dict(), model.training
    outputs = []
    model.train()
    with nl.no_grad():
        h = on_device(x, next(p.data for p in model.parameters()))  # where the model lives
        for layer in model:
            h = layer(h)
            if isinstance(layer, (nn.Sigmoid, nn.ReLU)):
                outputs.append(to_host(h))
    model.load_state_dict(saved)
    model.train(was_training)
    return outputs


def layer_statistics(a: np.ndarray, activation: str, saturation_bounds: list[float]) -> dict:
    """Summary of one layer's activations (N, units)."""
    lo, hi = saturation_bounds
    stats = {"mean": float(np.mean(a)), "std": float(np.std(a))}
    if activation == "sigmoid":
        stats["saturated_fraction"] = float(np.mean((a < lo) | (a > hi)))
    else:
        stats["zero_fraction"] = float(np.mean(a == 0))
        stats["dead_unit_fraction"] = float(np.mean(np.all(a == 0, axis=0)))
    return stats


def health(a: np.ndarray, activation: str, cfg: dict) -> tuple[float, bool]:
    """The decision statistic of a layer's activations and whether it counts as well scaled."""
    stats = layer_statistics(a, activation, cfg["saturation_bounds"])
    if activation == "sigmoid":
        saturated = stats["saturated_fraction"]
        return saturated, saturated <= cfg["max_saturated_fraction"]
    low, high = cfg["relu_std_range"]
    return stats["std"], bool(low <= stats["std"] <= high)


def decide(
    last: dict[tuple[str, str | None, str], tuple[float, bool]], activations: list[str]
) -> tuple[bool, str]:
    """``last[(activation, norm, moment)]`` = (statistic, well scaled) of the last hidden layer.
    The claim holds if, for every activation, the batch-norm network is well scaled at
    initialisation and after training while the plain network is not well scaled at
    initialisation."""
    holds = True
    parts = []
    for act in activations:
        bn_ok = all(last[(act, "bn", m)][1] for m in MOMENTS)
        plain_bad = not last[(act, None, MOMENTS[0])][1]
        holds = holds and bn_ok and plain_bad
        values = ", ".join(
            f"{'batch norm' if norm else 'plain'} {last[(act, norm, m)][0]:.3g} ({m})"
            for norm in (None, "bn")
            for m in MOMENTS
        )
        parts.append(f"{act}, {STATISTIC[act]} of the last hidden layer: {values}")
    return holds, "; ".join(parts)


def _plot(ctx: RunContext, activations: dict, cfg: dict):
    """One panel per hidden layer (rows) and configuration (columns); the histogram at
    initialisation filled, after training as an outline.  Bars are fractions of all activations."""
    columns = [
        (act, configuration_label(act, norm)) for act in cfg["activations"] for norm in (None, "bn")
    ]
    depth = len(cfg["hidden"])
    fig, axes = ctx.figure(
        depth, len(columns), size=(3.1 * len(columns), 1.8 * depth), squeeze=False, sharex="col"
    )
    styles = {
        MOMENTS[0]: {"histtype": "stepfilled", "color": "#9db8e0"},
        MOMENTS[1]: {"histtype": "step", "color": "#c05020", "linewidth": 1.2},
    }
    for col, (act, config) in enumerate(columns):
        x_max = 1.0 if act == "sigmoid" else RELU_PLOT_MAX
        for row in range(depth):
            ax = axes[row, col]
            lines = []
            for moment in MOMENTS:
                values = activations[(act, config, moment)][row].ravel()
                shown = values if act == "sigmoid" else values[values > 0]
                weights = np.full(shown.size, 1 / values.size)
                ax.hist(
                    np.clip(shown, 0, x_max),
                    bins=30,
                    range=(0, x_max),
                    weights=weights,
                    label=moment,
                    **styles[moment],
                )
                lines.append(
                    f"{'init' if moment == MOMENTS[0] else 'trained'}: "
                    + _panel_text(values, act, cfg)
                )
            ax.text(
                0.97,
                0.95,
                "\n".join(lines),
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=6.5,
            )
            ax.set_ylim(0, ax.get_ylim()[1] * 1.45)  # headroom for the text
            ax.tick_params(labelsize=7)
            if row == 0:
                std = cfg["weight_std"][act]
                ax.set_title(f"{config} (init std {std:g})", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"layer {row + 1}\nfraction", fontsize=8)
            if row == depth - 1:
                ax.set_xlabel(
                    "activation" + (" (zeros left out)" if act == "relu" else ""), fontsize=8
                )
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    fig.suptitle(
        "Hidden-layer activations of the probe batch: at initialisation and after training"
    )
    return ctx.save_figure(fig, "activation_histograms")


RELU_PLOT_MAX = 3.0  # ReLU histograms show (0, 3]; larger values are clipped into the last bin


def _panel_text(values: np.ndarray, activation: str, cfg: dict) -> str:
    if activation == "sigmoid":
        lo, hi = cfg["saturation_bounds"]
        return f"std {values.std():.2g}, saturated {np.mean((values < lo) | (values > hi)):.0%}"
    return f"std {values.std():.2g}, zeros {np.mean(values == 0):.0%}"
