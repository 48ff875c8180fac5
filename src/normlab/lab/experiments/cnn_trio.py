"""cnn-trio: batch norm helps some models and not others.

Seed 001 (a Keras tutorial, "BatchNormalization使用技巧") trains three models on 224 x 224 cats-vs-dogs images
for 200 epochs, each starting with a BatchNormalization layer on the input, and concludes that batch norm
helps in particular models and data sets but not in all cases:

* logistic regression: BN -> Flatten -> Dense softmax, Adam lr 0.01;
* wide: BN -> Conv 100 filters 2 x 2, ReLU -> MaxPool 16 x 16 -> Flatten -> Dense softmax, Adam lr 0.001;
* deep: BN -> 7 x [Conv 20 filters 2 x 2 'same', ReLU -> MaxPool 2 x 2] -> Flatten -> Dense softmax,
  Adam lr 0.01.

The tutorial only shows the models with BN.  To test the claim we train each model with and without the
input BN (same initial weights) and compare their final validation accuracy.  Offline we use MNIST
(28 x 28, one channel, ten classes); ``--data cifar10`` (32 x 32 RGB) or ``fashion-mnist`` run it on those
once downloaded.  The pooling of the wide model and the depth of the deep one are scaled to the smaller
image (see the notes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from normlab import nn, optim
from normlab.backend import device_of, namespace
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import (
    Measure,
    correct_predictions,
    first,
    images,
    is_finite_loss,
    model_accuracy,
    sample_grid,
    train_model,
)

MODELS = ("logistic", "wide", "deep")
MODEL_NAMES = {"logistic": "logistic regression", "wide": "wide", "deep": "deep"}

FULL = {
    "lr": {"logistic": 0.01, "wide": 0.001, "deep": 0.01},
    "optimizer": "Adam",
    "adam_eps": 1e-7,  # Keras's default
    "batch_size": 10,  # the tutorial's generators yield batches of 10
    "epochs": 5,  # the tutorial: 200 (see the notes)
    "wide_filters": 100,
    "wide_kernel": 2,
    "wide_pool": 2,  # the tutorial: 16 on 224 x 224 images (see the notes)
    "deep_filters": 20,
    "deep_kernel": 2,
    "deep_blocks": 4,  # the tutorial: 7 on 224 x 224 images (see the notes)
    "bn_momentum_keras": 0.99,  # Keras BatchNormalization defaults
    "bn_eps": 1e-3,
    "train_images": None,  # None: every training image
    "val_images": None,
    "margin": 0.01,  # validation accuracy, as a fraction: 1 percentage point
}
QUICK = FULL | {"epochs": 2, "train_images": 1000, "val_images": 500}
TINY = FULL | {"epochs": 1, "train_images": 50, "val_images": 100}


@register(
    "cnn-trio",
    claim="Batch norm on the input helps some models and not others.",
    source="seed 001 (Keras tutorial: logistic regression, wide and deep CNN with BatchNormalization)",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    data=("sample", "full", "cifar10", "fashion-mnist"),
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = images(ctx)
    x, y = first(data.train, cfg["train_images"])
    x_val, y_val = first(data.val, cfg["val_images"])

    records = []
    histories: dict[tuple[str, bool], list[float]] = {}
    diverged = []
    for i, kind in enumerate(MODELS):
        for input_bn in (False, True):
            ctx.log(f"cnn-trio: {MODEL_NAMES[kind]}, input BN {'on' if input_bn else 'off'}")
            # the same initial weights with and without BN: only the input BN differs
            model = ctx.place(
                build_model(kind, input_bn, cfg, rng=ctx.rng(i), image_shape=data.image_shape)
            )
            epochs = train(model, x, y, x_val, y_val, cfg["lr"][kind], cfg, seed=ctx.seed)
            histories[(kind, input_bn)] = [e["val_accuracy"] for e in epochs]
            if epochs[-1]["diverged"]:
                diverged.append(f"{MODEL_NAMES[kind]} {'with' if input_bn else 'without'} BN")
            records += [{"model": kind, "input_bn": input_bn, **e} for e in epochs]
    ctx.save_metrics("per_epoch", records)

    final = {key: accs[-1] for key, accs in histories.items()}
    effects = {kind: final[(kind, True)] - final[(kind, False)] for kind in MODELS}
    holds, measured = decide(effects, cfg["margin"])
    table = Table(
        "Final validation accuracy with and without the input batch norm",
        [
            "model",
            "without BN",
            "with BN",
            "BN - without (pp)",
            f"BN helps (> {cfg['margin']:.0%})",
        ],
        [
            [
                MODEL_NAMES[kind],
                round(final[(kind, False)], 4),
                round(final[(kind, True)], 4),
                round(100 * effects[kind], 2),
                "yes" if effects[kind] > cfg["margin"] else "no",
            ]
            for kind in MODELS
        ],
    )
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, histories), sample_grid(ctx, data)],
        notes=_notes(cfg, data, len(y), len(y_val), diverged),
        summary={
            "final_val_accuracy": {
                f"{kind} {'bn' if bn else 'plain'}": acc for (kind, bn), acc in final.items()
            },
            "bn_effect": effects,
        },
    )


def decide(effects: Mapping[str, float], margin: float) -> tuple[bool, str]:
    """The verdict, from each model's final validation accuracy with BN minus without (fractions).

    BN "helps" a model if it raises its accuracy by more than ``margin``.  The claim holds if BN helps at
    least one model and does not help at least one other (a change of at most ``margin``, or a loss).
    """
    helped = [kind for kind, effect in effects.items() if effect > margin]
    not_helped = [kind for kind, effect in effects.items() if effect <= margin]
    holds = bool(helped) and bool(not_helped)
    changes = ", ".join(
        f"{MODEL_NAMES.get(kind, kind)} {100 * effect:+.2f} pp" for kind, effect in effects.items()
    )
    measured = (
        f"final validation accuracy with the input BN minus without: {changes}; BN helps (> "
        f"{100 * margin:g} pp) {len(helped)} model(s) ({', '.join(helped) or 'none'}) and not "
        f"{len(not_helped)} ({', '.join(not_helped) or 'none'})"
    )
    return holds, measured


class PadBottomRight(nn.CachedLayer):
    """Zero-pad the bottom and the right of (N, C, H, W) by one row and one column.

    Before a 2 x 2 convolution without padding this is Keras's ``padding='same'``: TensorFlow splits the one
    row (column) of padding an even kernel needs as 0 on top (left) and 1 at the bottom (right).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x) if isinstance(x, (list, tuple)) else x
        xp = namespace(x)  # written with the Array API: the model also trains on a device
        n, c, h, w = x.shape
        y = xp.zeros((n, c, h + 1, w + 1), dtype=x.dtype, device=device_of(x))
        y[:, :, :h, :w] = x
        self._keep(True, y)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        dy, _ = self._take_cache(grad_output)
        return namespace(dy).asarray(dy[:, :, :-1, :-1], copy=True)


def build_model(
    kind: str,
    input_bn: bool,
    cfg,
    *,
    rng: np.random.Generator,
    image_shape: tuple[int, int, int] = (1, 28, 28),
) -> nn.Sequential:
    """One of the three models for square ``image_shape`` (C, H, W) images (MNIST's 1 x 28 x 28 by default;
    CIFAR-10's 3 x 32 x 32), with Keras's default initialization (Glorot uniform weights, zero biases) and, if
    ``input_bn``, Keras's BatchNormalization on the input."""
    in_channels, height, width = image_shape
    if height != width:
        raise ValueError(f"cnn-trio: image_shape must be square, got {image_shape}")
    layers: list[nn.Module] = []
    if input_bn:
        momentum = nn.momentum_from_keras(cfg["bn_momentum_keras"])
        layers.append(nn.BatchNorm2d(in_channels, eps=cfg["bn_eps"], momentum=momentum))
    if kind == "logistic":
        layers += [nn.Flatten(), nn.Linear(in_channels * height * width, 10, rng=rng)]
    elif kind == "wide":
        k, pool = cfg["wide_kernel"], cfg["wide_pool"]
        side = (height - k + 1) // pool
        layers += [
            nn.Conv2d(in_channels, cfg["wide_filters"], k, rng=rng),
            nn.ReLU(),
            nn.MaxPool2d(pool),
            nn.Flatten(),
            nn.Linear(cfg["wide_filters"] * side * side, 10, rng=rng),
        ]
    elif kind == "deep":
        channels, side = in_channels, height
        for _ in range(cfg["deep_blocks"]):
            layers += [
                PadBottomRight(),
                nn.Conv2d(channels, cfg["deep_filters"], cfg["deep_kernel"], rng=rng),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels, side = cfg["deep_filters"], side // 2
        layers += [nn.Flatten(), nn.Linear(channels * side * side, 10, rng=rng)]
    else:
        raise ValueError(f"cnn-trio: unknown model {kind!r}")
    model = nn.Sequential(*layers)
    _keras_init(model, rng)
    return model


def _keras_init(model: nn.Sequential, rng: np.random.Generator) -> None:
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            layer.weight.data = nn.init.xavier_uniform(layer.weight.shape, rng)
            layer.bias.data = np.zeros_like(layer.bias.data)


def train(model, x, y, x_val, y_val, lr: float, cfg, seed: int) -> list[dict]:
    """Adam for ``cfg["epochs"]`` epochs, like Keras's ``fit``: training loss and accuracy averaged over the
    epoch's batches, validation accuracy (eval mode) after each epoch.  Stops early if the loss diverges."""
    opt = optim.Adam(model.parameters(), lr=lr, eps=cfg["adam_eps"])
    loader = DataLoader(x, y, batch_size=cfg["batch_size"], shuffle=True, seed=seed)
    epochs: list[dict] = []
    losses: list[float] = []
    counts = {"correct": 0, "seen": 0}

    def each_step(run, step: int) -> None:
        losses.append(run.step.loss)
        counts["correct"] += correct_predictions(run.step.outputs, run.step.targets)
        counts["seen"] += len(run.step)

    def each_epoch(run, epoch: int) -> None:
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "train_accuracy": counts["correct"] / counts["seen"],
                "val_accuracy": model_accuracy(model, x_val, y_val),
                "diverged": not is_finite_loss(losses[-1]),
            }
        )
        losses.clear()
        counts.update(correct=0, seen=0)

    train_model(
        model,
        loader,
        optimizer=opt,
        loss=nn.CrossEntropyLoss(),
        epochs=cfg["epochs"],
        callbacks=[Measure(each_step, each_epoch)],
        stop_when_diverged=True,
    )
    return epochs


def _notes(cfg, data, n_train: int, n_val: int, diverged: list[str]) -> list[str]:
    _, side, _ = data.image_shape
    pooled = (side - cfg["wide_kernel"] + 1) // cfg["wide_pool"]
    notes = [
        f"{data.name} instead of the tutorial's Kaggle cats-vs-dogs images (224 x 224 x 3, 2 classes): "
        f"{n_train} training and {n_val} validation images of the {data.source}; 10-way softmax.",
        "The tutorial only trains the models with BN; the comparison without BN (same initial weights) is "
        "ours, since the claim is about where BN helps.",
        f"Wide model: the tutorial's 16 x 16 max pooling turns its 223 x 223 convolution output into "
        f"13 x 13; here a {cfg['wide_pool']} x {cfg['wide_pool']} pooling turns "
        f"{side - cfg['wide_kernel'] + 1} x {side - cfg['wide_kernel'] + 1} into {pooled} x {pooled} "
        "(16 x 16 would leave one or two positions).",
        f"Deep model: the tutorial's 7 blocks take 224 x 224 down to 1 x 1; {cfg['deep_blocks']} blocks "
        f"take {side} x {side} down to {side // 2 ** cfg['deep_blocks']} x {side // 2 ** cfg['deep_blocks']} "
        "(a fifth pooling would have (almost) nothing to pool).",
        "Keras's padding='same' with the even 2 x 2 kernel pads one row and column at the bottom and right "
        "only; we do exactly that (zero-pad bottom/right, then a 2 x 2 convolution without padding), so "
        "every block keeps its input size before pooling.",
        f"{cfg['epochs']} epochs instead of the tutorial's 200 (these models converge within a few epochs, "
        "and 200 epochs of the NumPy convolution would take hours); batch 10 as the tutorial's generators.",
        f"Keras defaults kept: BatchNormalization momentum {cfg['bn_momentum_keras']} (normlab momentum "
        f"{nn.momentum_from_keras(cfg['bn_momentum_keras']):g}) and eps {cfg['bn_eps']:g}; Adam eps "
        f"{cfg['adam_eps']:g}; Glorot-uniform weights and zero biases.",
        "Validation accuracy is measured after each epoch in eval mode (BN uses its running statistics), as "
        "Keras's fit does with validation_data; the verdict uses the last epoch's.",
    ]
    if diverged:
        notes.append("Diverged (NaN/inf loss, training stopped): " + ", ".join(diverged))
    return notes


def _plot(ctx: RunContext, histories: dict[tuple[str, bool], list[float]]):
    from matplotlib.ticker import MaxNLocator  # matplotlib only when drawing

    fig, axes = ctx.figure(1, len(MODELS), size=(4.0 * len(MODELS), 3.8), sharey=True)
    for ax, kind in zip(np.ravel(axes), MODELS, strict=True):
        for input_bn, color, style in ((False, "#c05020", "--"), (True, "#1f5fbf", "-")):
            accs = histories[(kind, input_bn)]
            ax.plot(
                range(1, len(accs) + 1),
                accs,
                marker="o",
                color=color,
                linestyle=style,
                label="input BN" if input_bn else "no BN",
            )
        ax.set_title(MODEL_NAMES[kind])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    np.ravel(axes)[0].set_ylabel("validation accuracy")
    return ctx.save_figure(fig, "val_accuracy")
