"""bn-paper-mnist: batch norm stabilises the distribution of the inputs to a layer (Ioffe & Szegedy 2015, fig. 1).

The paper's MNIST experiment: three fully connected hidden layers of 100 sigmoid units, weights drawn from a
small Gaussian, a 10-way softmax with cross-entropy, mini-batches of 60, 50,000 training steps; the same network
with batch norm before every hidden sigmoid.  Fig. 1(a) plots test accuracy against steps; fig. 1(b, c) plot the
15th, 50th and 85th percentiles of the input to one sigmoid of the last hidden layer over training, without and
with batch norm.  For the batch-norm network that input is the batch-norm output.

The paper gives neither the optimizer nor the learning rate nor the init's standard deviation: we use plain SGD
(lr 0.1) and N(0, 0.1^2), chosen before running and stated in the report's notes.

Drift of a unit: the range over training of its median input, divided by the mean width of its 15-85 band.
The claim holds if the batch-norm network's median drift over the 100 last-layer units is the smaller, and it
reaches the accuracy threshold in fewer steps and ends at least as accurate.
"""

from __future__ import annotations

import math

import numpy as np

import normlab as nl
from normlab import nn, optim
from normlab.config import ACTIVATIONS, mlp
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import Measure, first, first_reaching, mnist, train_model

FULL = {
    "hidden": [100, 100, 100],
    "activation": "sigmoid",
    "weight_std": 0.1,  # "small random Gaussian values": the paper gives no std; our choice
    "optimizer": "SGD",  # the paper does not say; our choice
    "lr": 0.1,  # the paper does not say; our choice
    "batch_size": 60,
    "steps": 50_000,
    "record_every": 250,  # steps between measurements of test accuracy and percentiles
    "percentiles": [15, 50, 85],
    "percentile_images": 1000,  # test images the input percentiles are computed over
    "accuracy_threshold": 0.9,  # "earlier" = fewer steps to reach this test accuracy
    "train_limit": None,  # use every training image
}
QUICK = FULL | {"steps": 3000, "record_every": 50}
TINY = FULL | {"steps": 60, "record_every": 10, "percentile_images": 200, "train_limit": 600}

PLAIN, BN = "plain", "batch norm"


def percentile_drift(low: np.ndarray, median: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Drift of each unit's input distribution over training: the range of its median divided by the mean
    width of its low-high percentile band.  Arrays are (records, units); returns one drift per unit."""
    band_width = np.mean(high - low, axis=0)
    return (np.max(median, axis=0) - np.min(median, axis=0)) / band_width


def decide(
    drift: dict[str, float],
    steps_to_threshold: dict[str, int | None],
    final_accuracy: dict[str, float],
    threshold: float,
) -> tuple[bool, str]:
    """The claim holds if batch norm's input distribution drifts less (median drift over the last hidden
    layer's units), batch norm reaches ``threshold`` test accuracy in fewer steps (or plain never does), and
    batch norm's final test accuracy is at least the plain network's.  Returns (holds, measured)."""
    steadier = bool(drift[BN] < drift[PLAIN])
    bn_steps, plain_steps = steps_to_threshold[BN], steps_to_threshold[PLAIN]
    earlier = bn_steps is not None and (plain_steps is None or bn_steps < plain_steps)
    at_least_as_accurate = bool(final_accuracy[BN] >= final_accuracy[PLAIN])

    def reach(steps: int | None) -> str:
        return "never" if steps is None else f"after {steps} steps"

    measured = (
        f"median drift of the last hidden layer's sigmoid inputs (range of the median / mean 15-85 band "
        f"width): batch norm {drift[BN]:.3f}, plain {drift[PLAIN]:.3f}; {threshold:.0%} test accuracy "
        f"reached by batch norm {reach(bn_steps)}, plain {reach(plain_steps)}; final test accuracy batch "
        f"norm {final_accuracy[BN]:.4f}, plain {final_accuracy[PLAIN]:.4f}"
    )
    return steadier and earlier and at_least_as_accurate, measured


@register(
    "bn-paper-mnist",
    claim="Batch norm stabilises the distribution of layer inputs during training, and the network with it "
    "reaches higher test accuracy sooner (Ioffe & Szegedy 2015, fig. 1).",
    source="Ioffe & Szegedy 2015, Batch Normalization, section 4.1 and fig. 1 (MNIST)",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x, y = first(data.train, cfg["train_limit"])
    histories = {
        label: _train(ctx, norm, x, y, data.test.x, data.test.y)
        for norm, label in ((None, PLAIN), ("bn", BN))
    }

    low, mid, high = (0, 1, 2)  # rows of the percentile arrays: 15th, 50th, 85th
    drifts = {
        label: percentile_drift(
            h["percentiles"][:, low], h["percentiles"][:, mid], h["percentiles"][:, high]
        )
        for label, h in histories.items()
    }
    median_drift = {label: float(np.median(d)) for label, d in drifts.items()}
    # the unit drawn in fig. 1(b, c): a typical one, the unit whose drift is the median of its layer
    typical_unit = {label: int(np.argsort(d)[len(d) // 2]) for label, d in drifts.items()}
    threshold = cfg["accuracy_threshold"]
    reach = {
        label: first_reaching(h["steps"], h["test_accuracy"], threshold)
        for label, h in histories.items()
    }
    final = {label: h["test_accuracy"][-1] for label, h in histories.items()}
    holds, measured = decide(median_drift, reach, final, threshold)

    _save_metrics(ctx, histories, drifts, typical_unit)
    table = Table(
        "Test accuracy and the drift of the last hidden layer's sigmoid inputs",
        [
            "model",
            f"steps to {threshold:.0%}",
            "final test acc",
            "median drift (100 units)",
            "drift of the plotted unit",
            "mean 15-85 band width",
        ],
        [
            [
                label,
                "never" if reach[label] is None else reach[label],
                final[label],
                median_drift[label],
                float(drifts[label][typical_unit[label]]),
                float(np.mean(h["percentiles"][:, high] - h["percentiles"][:, low])),
            ]
            for label, h in histories.items()
        ],
    )
    notes = [
        f"Data: {data.source}; trained on {len(y)} images, test accuracy on all {len(data.test.y)} test "
        f"images, input percentiles over the first {cfg['percentile_images']} of them.",
        "Not given in the paper, chosen before running: SGD without momentum, lr "
        f"{cfg['lr']}; weights from N(0, {cfg['weight_std']}^2), biases 0; batch norm momentum 0.1, eps 1e-5.",
        "Percentiles and test accuracy are measured in eval mode (batch norm uses its running statistics), "
        f"every {cfg['record_every']} steps from step {cfg['record_every']} on, so that batch norm's running "
        "statistics describe the network rather than their initial values.",
        "The plotted unit is, in each network, the last-hidden-layer unit whose drift is the median of the "
        "layer; the verdict uses the median drift over all 100 units, not one unit.",
    ]
    if cfg["steps"] != 50_000:
        notes.append(f"Shortened run: {cfg['steps']} steps instead of the paper's 50,000.")
    if ctx.data == "sample":
        notes.append(
            "The paper trained on the 60,000 MNIST training images and tested on the official test set; "
            f"here all images come from the official test split, so {cfg['steps']} steps of 60 are "
            f"{cfg['steps'] * 60 / len(y):.0f} passes over {len(y)} training images."
        )
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, histories, typical_unit, threshold)],
        notes=notes,
        summary={
            "median_drift_bn": median_drift[BN],
            "median_drift_plain": median_drift[PLAIN],
            "steps_to_threshold_bn": reach[BN],
            "steps_to_threshold_plain": reach[PLAIN],
            "final_test_accuracy_bn": final[BN],
            "final_test_accuracy_plain": final[PLAIN],
        },
    )


def _train(ctx: RunContext, norm, x, y, x_test, y_test) -> dict:
    """Train one network; every ``record_every`` steps measure test accuracy and the percentiles of each
    last-hidden-layer unit's input over the probe images."""
    cfg = ctx.config
    label = BN if norm else PLAIN
    ctx.log(f"bn-paper-mnist: {label}")
    # the same initial weights and the same batches for both networks: only batch norm differs
    model = mlp(
        [x.shape[1], *cfg["hidden"], 10],
        norm=norm,
        activation=cfg["activation"],
        weight_std=cfg["weight_std"],
        rng=ctx.rng(1),
    )
    ctx.place(model)  # the probes read it through predict, which returns NumPy
    last_activation = max(
        i for i, layer in enumerate(model) if isinstance(layer, ACTIVATIONS[cfg["activation"]])
    )
    below, above = model[:last_activation], model[last_activation:]
    loader = DataLoader(
        x, y, batch_size=cfg["batch_size"], seed=ctx.seed
    )  # a new shuffle every epoch
    history: dict = {"steps": [], "test_accuracy": [], "loss": [], "percentiles": []}
    losses: list[float] = []

    def each_step(run, step: int) -> None:
        losses.append(run.step.loss)
        if step % cfg["record_every"] == 0:
            accuracy, percentiles = _probe(below, above, x_test, y_test, cfg)
            history["steps"].append(step)
            history["test_accuracy"].append(accuracy)
            history["loss"].append(float(np.mean(losses)))
            history["percentiles"].append(percentiles)
            losses.clear()
        if step == cfg["steps"]:  # the paper counts steps, not epochs
            run.stop_training = True

    train_model(
        model,
        loader,
        optimizer=optim.SGD(model.parameters(), lr=cfg["lr"]),
        loss=nn.CrossEntropyLoss(),
        epochs=math.ceil(cfg["steps"] / len(loader)),
        callbacks=[Measure(each_step)],
    )
    history["percentiles"] = np.array(history["percentiles"])  # (records, 3, units)
    return history


def _probe(below, above, x_test, y_test, cfg) -> tuple[float, np.ndarray]:
    """Test accuracy and the (3, units) percentiles of the last hidden layer's pre-activations, in eval mode.
    ``below`` and ``above`` are the two halves of the model around its last activation (sharing its layers)."""
    pre_activation = nl.predict(below, x_test, batch_size=len(x_test))  # one batch, eval mode
    logits = nl.predict(above, pre_activation, batch_size=len(pre_activation))
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y_test))
    probe = pre_activation[: cfg["percentile_images"]]
    return accuracy, np.percentile(probe, cfg["percentiles"], axis=0)


def _save_metrics(ctx: RunContext, histories, drifts, typical_unit) -> None:
    curves = []
    for label, h in histories.items():
        unit = typical_unit[label]
        for i, step in enumerate(h["steps"]):
            p15, p50, p85 = h["percentiles"][i, :, unit]
            curves.append(
                {
                    "model": label,
                    "step": step,
                    "train_loss": h["loss"][i],
                    "test_accuracy": h["test_accuracy"][i],
                    "unit": unit,
                    "p15": float(p15),
                    "p50": float(p50),
                    "p85": float(p85),
                }
            )
    ctx.save_metrics("curves", curves)
    ctx.save_metrics(
        "unit_drift",
        [
            {"model": label, "unit": unit, "drift": float(d)}
            for label, unit_drifts in drifts.items()
            for unit, d in enumerate(unit_drifts)
        ],
    )


def _plot(ctx: RunContext, histories, typical_unit, threshold):
    fig, axes = ctx.figure(1, 3, size=(14, 4.2))
    colors = {PLAIN: "#c05020", BN: "#1f5fbf"}
    ax_acc = axes[0]
    for label, h in histories.items():
        ax_acc.plot(h["steps"], h["test_accuracy"], label=label, color=colors[label])
    ax_acc.axhline(threshold, color="gray", linewidth=0.8, linestyle=":")
    lowest = min(min(h["test_accuracy"]) for h in histories.values())
    ax_acc.set(
        xlabel="training step",
        ylabel="test accuracy",
        title="(a) test accuracy",
        ylim=(max(0.0, lowest - 0.02), 1.0),
    )
    ax_acc.legend(loc="best")  # "lower right" covered the plain network's curve near chance
    percentile_axes = {PLAIN: axes[1], BN: axes[2]}
    # one y range for both panels (NaN from a diverged network is left out)
    shown = np.concatenate(
        [h["percentiles"][:, :, typical_unit[k]].ravel() for k, h in histories.items()]
    )
    shown = shown[np.isfinite(shown)]
    y_range = (shown.min() - 0.2, shown.max() + 0.2) if shown.size else (-1.0, 1.0)
    for tag, (label, h) in zip("bc", histories.items(), strict=True):
        ax = percentile_axes[label]
        unit = typical_unit[label]
        for row, style in zip(range(3), (":", "-", ":"), strict=True):
            ax.plot(
                h["steps"],
                h["percentiles"][:, row, unit],
                style,
                color=colors[label],
                label=f"{ctx.config['percentiles'][row]}th percentile",
            )
        ax.set(
            xlabel="training step",
            ylabel="input to the sigmoid",
            title=f"({tag}) {label}: unit {unit} of the last hidden layer",
            ylim=y_range,
        )
        # below the panel: the band fills the axes
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    for ax in axes:
        ax.grid(alpha=0.3)
    return ctx.save_figure(fig, "fig1_accuracy_and_input_percentiles")
