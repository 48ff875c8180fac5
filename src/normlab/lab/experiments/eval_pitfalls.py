"""eval-pitfalls: the classic ways batch norm breaks at inference.

The seed 004 collects the complaints of users whose batch norm "works in training and fails in
testing": the moving statistics were not updated during training, not saved with the weights, or
not restored at prediction time, and the model was evaluated with batch statistics (training mode)
instead of the population statistics.  We train one small CNN with batch norm on MNIST and
evaluate the same weights in each of these ways:

* correctly, in eval mode (running statistics);
* in training mode by mistake, with test batches of 1 and 8 images, the whole test set as one batch,
  and class-sorted batches (each batch holds a single digit);
* in eval mode after such a mistaken training-mode pass over the class-sorted batches overwrote the
  running statistics;
* after a reload that kept only the parameters (running statistics back at their initial 0 / 1: what
  a model whose statistics were never updated, saved or restored computes);
* after recomputing the population statistics from training batches on that reloaded model
  (``normlab.recalibrate_batch_norm``, "precise BN").

The trained state is copied with ``state_dict`` and restored before every evaluation, so one mistake
never leaks into the next row (except in the row that measures exactly that leak).
"""

from __future__ import annotations

import itertools

import numpy as np

import normlab as nl
from normlab import nn, optim
from normlab.config import mlp
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import (
    Measure,
    correct_predictions,
    first,
    mnist,
    model_accuracy,
    train_model,
)
from normlab.train.batches import on_device

FULL = {
    "channels": [8, 16],  # Conv 5x5/2 -> BN -> ReLU -> Conv 3x3/2 -> BN -> ReLU -> Linear
    "optimizer": "Adam",
    "lr": 1e-3,
    "batch_size": 64,
    "epochs": 3,
    "train_limit": None,  # use every training image
    "test_limit": None,  # use every test image
    "train_mode_batch_sizes": [1, 8],  # plus the whole test set as one batch
    "class_sorted_batch_size": 100,  # batches of one digit each, at most this many images
    "recalibration_batches": 50,  # training batches of batch_size images for precise BN
    "margin": 0.02,  # a pitfall must cost at least this much accuracy against eval mode
    "tolerance": 0.01,  # recalibration must land this close to the eval-mode accuracy
}
QUICK = FULL | {"epochs": 1}
TINY = FULL | {"epochs": 1, "train_limit": 300, "test_limit": 200, "recalibration_batches": 4}

CORRECT = "eval mode (running statistics)"
RECALIBRATED = "reloaded, then recalibrated from training batches (precise BN)"
LOST = "reloaded without running statistics (still 0 / 1)"
LEAKED = "eval mode after a training-mode pass over class-sorted test batches"
FULL_BATCH = "training mode, the whole test set as one batch"
SORTED = "training mode, class-sorted batches"


def train_mode_label(batch_size: int) -> str:
    return f"training mode, batch size {batch_size}"


@register(
    "eval-pitfalls",
    claim="Batch norm breaks at inference when the model is evaluated in training mode on small or "
    "class-sorted batches, or with running statistics that were lost or overwritten; eval mode and "
    "recalibrated statistics give the correct accuracy.",
    source="seed 004 (moving statistics not updated, saved or restored); "
    "Wu & Johnson 2021, 'Rethinking batch in BatchNorm' (precise BN)",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx, images=True)
    x, y = first(data.train, cfg["train_limit"])
    x_test, y_test = first(data.test, cfg["test_limit"])

    model = ctx.place(small_cnn(cfg["channels"], ctx.rng(0)))
    history = train(model, x, y, cfg, ctx)
    ctx.save_metrics("training", history)
    trained = model.state_dict()  # copies: every evaluation below starts from this state

    accuracies: dict[str, float] = {CORRECT: model_accuracy(model, x_test, y_test)}
    for batch_size in cfg["train_mode_batch_sizes"]:
        ctx.log(f"eval-pitfalls: training mode, batch size {batch_size}")
        model.load_state_dict(trained)
        accuracies[train_mode_label(batch_size)] = train_mode_accuracy(
            model, in_batches(x_test, y_test, batch_size)
        )
    model.load_state_dict(trained)
    accuracies[FULL_BATCH] = train_mode_accuracy(model, [(x_test, y_test)])
    model.load_state_dict(trained)
    sorted_batches = class_sorted_batches(x_test, y_test, cfg["class_sorted_batch_size"])
    accuracies[SORTED] = train_mode_accuracy(model, sorted_batches)
    # the same mistaken pass also moved the running statistics (momentum 0.1 per batch)
    accuracies[LEAKED] = model_accuracy(model, x_test, y_test)

    ctx.log("eval-pitfalls: reload without running statistics, then recalibrate")
    reloaded = ctx.place(small_cnn(cfg["channels"], ctx.rng(1)))
    load_parameters_only(reloaded, trained)
    accuracies[LOST] = model_accuracy(reloaded, x_test, y_test)
    loader = DataLoader(x, y, batch_size=cfg["batch_size"], shuffle=True, seed=ctx.seed + 1)
    batches = [xb for xb, _ in itertools.islice(loader, cfg["recalibration_batches"])]
    nl.recalibrate_batch_norm(reloaded, batches)
    accuracies[RECALIBRATED] = model_accuracy(reloaded, x_test, y_test)

    model.load_state_dict(trained)
    restored = model_accuracy(model, x_test, y_test)
    error = batch_norm_1d_batch_of_one_error(x_test, ctx.rng(2))

    pitfalls = [
        *(train_mode_label(b) for b in cfg["train_mode_batch_sizes"]),
        SORTED,
        LEAKED,
        LOST,
    ]
    holds, measured = decide(accuracies, pitfalls, cfg["margin"], cfg["tolerance"])
    ctx.save_metrics(
        "accuracy",
        [
            {"evaluation": k, "test_accuracy": v, "pitfall": k in pitfalls}
            for k, v in accuracies.items()
        ],
    )
    table = _table(accuracies, pitfalls, error)
    c1, c2 = cfg["channels"]
    notes = [
        f"Data: {data.source}; trained on {len(y)} images, evaluated on {len(y_test)} test images.",
        f"Model (our choice; the seed gives none): Conv 5x5 stride 2 (1 -> {c1}) -> BatchNorm2d -> "
        f"ReLU -> Conv 3x3 stride 2 ({c1} -> {c2}) -> BatchNorm2d -> ReLU -> Linear(10).  "
        "BatchNorm2d normalizes over the batch and the spatial positions, so training mode with "
        "one image still runs (per-image statistics).",
        f"Training (our choice): {cfg['optimizer']} lr {cfg['lr']}, batch {cfg['batch_size']}, "
        f"{cfg['epochs']} epoch(s); final training loss {history[-1]['train_loss']:.4f}.",
        "Criterion, fixed before the first run: every pitfall row at least "
        f"{cfg['margin']:.0%} below eval mode, and precise BN within {cfg['tolerance']:.0%} of it.",
        "Not a pitfall but a control: training mode on the whole test set as one batch uses the "
        "statistics of a large mixed batch, close to the population's; the criterion ignores it.",
        "Precise BN: running statistics recomputed as a cumulative average over "
        f"{len(batches)} shuffled training batches of {cfg['batch_size']} images.",
        "The trained state was copied with state_dict before the mistaken passes and restored "
        f"after each: eval-mode accuracy after restoring {restored:.4f} (before: "
        f"{accuracies[CORRECT]:.4f}).",
        f"A BatchNorm1d layer (here in an MLP) cannot run in training mode on one sample: {error}",
    ]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, accuracies, pitfalls, cfg["margin"])],
        notes=notes,
        summary={"accuracy": accuracies, "restored_eval_accuracy": restored},
    )


def small_cnn(channels: list[int], rng: np.random.Generator) -> nn.Sequential:
    """28 x 28 images -> Conv 5x5/2 -> BN -> ReLU (14 x 14) -> Conv 3x3/2 -> BN -> ReLU (7 x 7) ->
    Flatten -> Linear -> 10 logits."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 5, stride=2, padding=2, rng=rng),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1, rng=rng),
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * 7 * 7, 10, rng=rng),
    )


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: dict, ctx: RunContext) -> list:
    loader = DataLoader(x, y, batch_size=cfg["batch_size"], shuffle=True, seed=ctx.seed)
    history: list[dict] = []
    losses: list[float] = []

    def each_step(run, step: int) -> None:
        losses.append(run.step.loss)

    def each_epoch(run, epoch: int) -> None:
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses))})
        losses.clear()

    train_model(
        model,
        loader,
        optimizer=optim.Adam(model.parameters(), lr=cfg["lr"]),
        loss=nn.CrossEntropyLoss(),
        epochs=cfg["epochs"],
        callbacks=[
            Measure(
                each_step,
                each_epoch,
                before_epoch=lambda run, n: ctx.log(f"eval-pitfalls: training epoch {n}"),
            )
        ],
    )
    return history


def in_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def class_sorted_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches that each hold images of one digit only, digit 0 first: the order of a test set
    stored class by class."""
    batches = []
    for digit in np.unique(y):
        rows = np.flatnonzero(y == digit)
        batches += in_batches(x[rows], y[rows], batch_size)
    return batches


def train_mode_accuracy(model: nn.Module, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Accuracy with the model left in training mode, as by mistake: batch norm normalizes each
    batch with its own statistics and also updates its running statistics."""
    model.train()
    where = next(p.data for p in model.parameters())  # a model on a device gets the batches there
    correct = total = 0
    with nl.no_grad():
        for xb, yb in batches:
            correct += correct_predictions(model(on_device(xb, where)), yb)
            total += len(yb)
    return correct / total


def load_parameters_only(model: nn.Module, state: dict) -> None:
    """Load the learned parameters of ``state`` and nothing else: what a checkpoint that saved only
    the trainable variables (the seed's TensorFlow ``trainable_variables()``) restores."""
    names = {name for name, _ in model.named_parameters()}
    model.load_state_dict({k: v for k, v in state.items() if k in names}, strict=False)


def batch_norm_1d_batch_of_one_error(x: np.ndarray, rng: np.random.Generator) -> str:
    """What a BatchNorm1d network says when run in training mode on a batch of one sample."""
    net = mlp([x[0].size, 32, 10], norm="bn", rng=rng)
    net.train()
    try:
        with nl.no_grad():
            net(x[:1].reshape(1, -1))
    except ValueError as e:
        return f"ValueError: {e}"
    return "no error was raised"


def decide(
    accuracies: dict[str, float], pitfalls: list[str], margin: float, tolerance: float
) -> tuple[bool, str]:
    """The claim holds if every pitfall row is at least ``margin`` below the eval-mode accuracy, and
    the recalibrated model is within ``tolerance`` of it."""
    correct, recalibrated = accuracies[CORRECT], accuracies[RECALIBRATED]
    drops = {name: correct - accuracies[name] for name in pitfalls}
    broken = [name for name, drop in drops.items() if drop >= margin]
    recovers = abs(recalibrated - correct) <= tolerance
    holds = len(broken) == len(pitfalls) and recovers
    worst = max(drops, key=drops.get)
    mildest = min(drops, key=drops.get)
    measured = (
        f"eval mode {correct:.4f}; {len(broken)} of {len(pitfalls)} pitfalls cost at least "
        f"{margin:.0%} accuracy (largest drop: {worst}, {accuracies[worst]:.4f}; smallest: "
        f"{mildest}, {accuracies[mildest]:.4f}); recalibrated {recalibrated:.4f} "
        f"({'within' if recovers else 'not within'} {tolerance:.0%} of eval mode)"
    )
    return holds, measured


def _table(accuracies: dict[str, float], pitfalls: list[str], error: str) -> Table:
    correct = accuracies[CORRECT]

    def kind(name: str) -> str:
        if name in pitfalls:
            return "pitfall"
        return "control" if name == FULL_BATCH else "correct"

    rows = [
        [name, acc, correct - acc if name != CORRECT else 0.0, kind(name)]
        for name, acc in accuracies.items()
    ]
    rows.append(
        [
            "training mode, batch size 1, BatchNorm1d MLP",
            "raises ValueError" if error.startswith("ValueError") else error,
            "-",
            "pitfall (not scored)",
        ]
    )
    return Table(
        "Test accuracy of one trained model, evaluated in each way",
        ["evaluation", "test accuracy", "drop vs eval mode", "kind"],
        rows,
    )


def _plot(ctx: RunContext, accuracies: dict[str, float], pitfalls: list[str], margin: float):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    palette = {"correct": "#1f5fbf", "pitfall": "#c05020", "control": "#888888"}
    names = list(accuracies)
    kinds = [
        "pitfall" if n in pitfalls else "control" if n == FULL_BATCH else "correct" for n in names
    ]
    fig, ax = ctx.figure(size=(9.5, 5.0))
    positions = np.arange(len(names))[::-1]
    values = [accuracies[n] for n in names]
    ax.barh(positions, values, color=[palette[k] for k in kinds])
    for pos, value in zip(positions, values, strict=True):
        ax.text(
            value - 0.01, pos, f"{value:.3f}", va="center", ha="right", color="white", fontsize=8
        )
    correct = accuracies[CORRECT]
    ax.axvline(correct, color="black", linestyle=":", linewidth=1)
    ax.axvline(correct - margin, color="#c05020", linestyle="--", linewidth=1)
    ax.set_yticks(positions, names, fontsize=8)
    ax.set(xlim=(0, 1), xlabel="test accuracy", title="One trained BN model, evaluated in each way")
    handles = [Patch(color=c, label=k) for k, c in palette.items()]
    handles += [
        Line2D([], [], color="black", linestyle=":", label="eval-mode accuracy"),
        Line2D([], [], color="#c05020", linestyle="--", label=f"eval mode - {margin}"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=5, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return ctx.save_figure(fig, "accuracy_by_evaluation")
