"""The figures a reader looks at: every curve's first point inside the axes, a marker on a one-point curve,
no legend over data (tests/helpers/plots.py).  Each case draws an experiment's figure from numbers shaped
like the tiny run that showed the problem."""

from __future__ import annotations

import numpy as np

from helpers.plots import CaptureContext, problems
from normlab.lab.experiments import (
    accumulation,
    batch_size,
    bn_paper_mnist,
    ghost_bn,
    landscape,
    lenet_bn,
    regularization,
    renorm,
)


def test_regularization_legends_leave_low_curves_visible() -> None:
    # an untrained run: both curves near chance, where "lower right" put the legend
    flat = (np.array([0.095, 0.096, 0.097, 0.1]), np.array([0.118, 0.117, 0.119, 0.121]))
    curves = dict.fromkeys(regularization.PALETTE, flat)
    ctx = CaptureContext()
    regularization._plot(ctx, curves, dict.fromkeys(curves, -0.02))
    fig = ctx.figures["train_and_validation_accuracy"]
    assert problems(fig) == []
    bars = fig.axes[-1]
    labels = [t.get_text() for t in bars.get_xticklabels()]
    assert all(len(line) <= 12 for label in labels for line in label.split("\n")), labels


def test_bn_paper_accuracy_legend_leaves_the_plain_curve_visible() -> None:
    steps = np.arange(10, 70, 10)
    base = {"steps": steps, "percentiles": np.zeros((len(steps), 3, 4))}
    histories = {
        bn_paper_mnist.PLAIN: base
        | {"test_accuracy": np.array([0.11, 0.10, 0.10, 0.11, 0.13, 0.11])},
        bn_paper_mnist.BN: base | {"test_accuracy": np.array([0.11, 0.45, 0.62, 0.64, 0.71, 0.73])},
    }
    ctx = CaptureContext({"percentiles": [15, 50, 85]})
    bn_paper_mnist._plot(ctx, histories, {bn_paper_mnist.PLAIN: 0, bn_paper_mnist.BN: 1}, 0.9)
    assert problems(ctx.figures["fig1_accuracy_and_input_percentiles"]) == []


def test_lenet_curves_of_one_epoch_are_drawn() -> None:
    one_epoch = [{"epoch": 1, "train_loss": 2.6, "train_accuracy": 0.1, "test_accuracy": 0.1}]
    ctx = CaptureContext()
    lenet_bn._plot(ctx, dict.fromkeys(lenet_bn.MODELS, one_epoch), 0.9)
    assert problems(ctx.figures["lenet_training"]) == []


def test_batch_size_legends_cover_no_line() -> None:
    errors = {
        "cnn": {"bn": {2: 0.52, 8: 0.47}, "gn": {2: 0.60, 8: 0.57}},
        "mlp": {
            "bn": {2: 0.82, 8: 0.51},
            "gn": {2: 0.44, 8: 0.48},
            "renorm": {2: 0.62, 8: 0.61},
            "ghost": {2: 0.82, 8: 0.78},
        },
    }
    ctx = CaptureContext()
    batch_size._plot(ctx, errors, [2, 8])
    assert problems(ctx.figures["val_error_vs_batch_size"]) == []


def test_landscape_log_axis_has_plain_tick_labels() -> None:
    records = []
    for variant, (loss, spread) in zip(landscape.VARIANTS, [(2.3, 0.01), (1.5, 0.8)], strict=True):
        for step in (1, 2, 3):
            records.append(
                {
                    "variant": variant,
                    "step": step,
                    "loss": loss - spread / step,
                    "loss_eta0.1": loss,
                    "grad_change_eta0.1": spread,
                    "grad_change_eta0.2": 2 * spread,
                    "beta": 10 * spread,
                }
            )
    ctx = CaptureContext()
    landscape._plot(ctx, records)
    fig = ctx.figures["landscape"]
    assert problems(fig) == []
    loss_axis = fig.axes[0].yaxis
    labels = [t.get_text() for t in loss_axis.get_ticklabels(which="both")]
    assert labels and not any("times" in t or "$" in t for t in labels), labels


def test_accumulation_curves_and_differences_are_all_visible() -> None:
    steps = 12
    full = np.linspace(2.4, 0.5, steps)
    losses = {
        "full": full,
        "ghost": full + 0.05,
        "exact": full + 3e-8,
        "reversed": full,  # exactly equal: drawn at the floor of the log axis
    }
    per_step = {"ghost": np.full(steps, 0.03), "exact": np.zeros(steps)}
    ctx = CaptureContext()
    accumulation._plot(ctx, losses, per_step, 4, 32)
    fig = ctx.figures["loss_curves"]
    assert problems(fig) == []
    assert fig.axes[1].get_ylim()[0] <= accumulation.ZERO_AT  # the zeros are on the axis


def test_renorm_legend_covers_no_bar() -> None:
    # full mode: every accuracy above 80 %, the bars reach the top of the axes
    accuracy = {
        "iid": {"bn": 0.954, "renorm": 0.955, "gn": 0.9485},
        "small": {"bn": 0.9245, "renorm": 0.923, "gn": 0.949},
        "noniid": {"bn": 0.856, "renorm": 0.838, "gn": 0.9145},
    }
    ctx = CaptureContext()
    renorm._plot(ctx, accuracy, ["bn", "renorm", "gn"])
    assert problems(ctx.figures["test_accuracy_by_setting"]) == []


def test_ghost_bn_legend_covers_no_bar() -> None:
    results = {  # full mode: the large-batch runs reach 100 % training accuracy
        "small": {"train_accuracy": 0.989, "test_accuracy": 0.954, "gap": 0.035},
        "large-bn": {"train_accuracy": 1.0, "test_accuracy": 0.958, "gap": 0.042},
        "large-ghost": {"train_accuracy": 1.0, "test_accuracy": 0.955, "gap": 0.045},
    }
    ctx = CaptureContext()
    ghost_bn._plot(ctx, results)
    assert problems(ctx.figures["generalisation_gap"]) == []


def test_landscape_log_axis_over_several_decades_has_readable_labels() -> None:
    # full mode: the loss range spans 0.005 to 7, three decades
    records = []
    for variant, (low, high) in zip(landscape.VARIANTS, [(0.2, 7.0), (0.005, 2.0)], strict=True):
        for step in range(0, 450, 25):
            records.append(
                {
                    "variant": variant,
                    "step": step,
                    "loss": low,
                    "loss_eta0.1": high,
                    "grad_change_eta0.1": 1.0,
                    "grad_change_eta0.2": 2.0,
                    "beta": 12.0,
                }
            )
    ctx = CaptureContext()
    landscape._plot(ctx, records)
    assert problems(ctx.figures["landscape"]) == []
