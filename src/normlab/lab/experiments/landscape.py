"""landscape: batch norm makes the loss landscape smoother.

Santurkar, Tsipras, Ilyas & Madry, *How Does Batch Normalization Help Optimization?* (NeurIPS 2018), §3,
fig. 4: at points along training (VGG on CIFAR-10, with and without BN) they take the gradient g of the
training loss at the current weights w, move to w - η·g for a range of step sizes η, and record (a) the
range of the loss over those steps ("loss landscape"/variation), (b) the ℓ2 distance between the gradient
there and g ("gradient predictiveness"), and (c) the largest ratio ‖g(w - η·g) - g‖ / ‖η·g‖ ("effective
β-smoothness").  With BN all three are smaller and vary less.

Here (offline): an MLP 784 -> 100 -> 100 -> 100 -> 10 with (Linear -> BN -> ReLU) or without BN, the same
initial weights and batches, plain SGD at the same learning rate.  Every ``probe_every`` steps the probes
run on one fixed training batch, in train mode (the loss that training sees: BN normalizes with that batch's
statistics, as in the paper).  Each probe copies the parameters, their gradients and the buffers (BN's
running statistics, which a train-mode forward updates) and restores them afterwards, so training goes on
exactly as without probes (a test checks the loss history is identical).

Decided before running: the claim holds if, over the probe points, the median of each of the three
quantities is smaller with BN than without.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import ticker

from normlab import nn, optim
from normlab.data import DataLoader
from normlab.lab.base import Result, RunContext, Table, register, verdict
from normlab.lab.common import Measure, first, mnist, model_accuracy, train_model
from normlab.nn.host import host_copy

FULL = {
    "hidden": [100, 100, 100],
    "optimizer": "SGD",
    "lr": 0.1,
    "batch_size": 64,
    "epochs": 5,
    "step_sizes": [0.05, 0.1, 0.2, 0.4],  # η, in units of the weights per unit gradient (like lr)
    "probe_every": 25,
    "train_images": None,
}
QUICK = FULL | {"epochs": 2}
TINY = FULL | {"epochs": 1, "train_images": 192, "probe_every": 1}

VARIANTS = ("plain", "bn")
NAMES = {"plain": "standard (no BN)", "bn": "BN"}
COLORS = {"plain": "#c05020", "bn": "#1f5fbf"}
QUANTITIES = {
    "loss_range": "loss variation (max - min over η)",
    "grad_change": "gradient predictiveness: max ‖g(η) - g‖",
    "beta": "effective β-smoothness: max ‖Δg‖ / ‖Δw‖",
}


def build(variant: str, hidden: Sequence[int], *, rng: np.random.Generator) -> nn.Sequential:
    """Linear [-> BatchNorm1d] -> ReLU per hidden layer, then a Linear to 10 classes."""
    if variant not in VARIANTS:
        raise ValueError(f"landscape: variant must be one of {VARIANTS}, got {variant!r}")
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise([784, *hidden]):
        layers.append(nn.Linear(n_in, n_out, rng=rng))
        if variant == "bn":
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(hidden[-1], 10, rng=rng))
    return nn.Sequential(*layers)


def loss_and_gradient(
    model: nn.Module, x: np.ndarray, y: np.ndarray, criterion: nn.Module
) -> tuple[float, np.ndarray]:
    """The loss on ``(x, y)`` and its gradient with respect to every parameter (flattened, float64), from
    one forward and backward in the model's current mode.  Leaves the gradients in ``p.grad``."""
    model.zero_grad()
    loss = float(criterion(model(x), y))
    model.backward(criterion.backward())
    grads = [np.zeros(p.size) if p.grad is None else p.grad.ravel() for p in model.parameters()]
    return loss, np.concatenate(grads).astype(np.float64)


def probe(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    step_sizes: Sequence[float],
    criterion: nn.Module,
) -> dict[str, float | list[float]]:
    """The three quantities of Santurkar et al.'s fig. 4 at the model's current weights, on ``(x, y)`` in
    train mode.  The parameters, their gradients, the buffers and the mode are restored afterwards."""
    params = list(model.parameters())
    saved_data = [p.data.copy() for p in params]
    saved_grad = [None if p.grad is None else p.grad.copy() for p in params]
    saved_state = {k: v.copy() for k, v in model.state_dict().items()}
    was_training = model.training
    try:
        model.train()
        loss0, g0 = loss_and_gradient(model, x, y, criterion)
        norm_g0 = float(np.linalg.norm(g0))
        grads0 = [p.grad.copy() if p.grad is not None else np.zeros_like(p.data) for p in params]
        losses, changes, ratios = [], [], []
        for eta in step_sizes:
            for p, w, g in zip(params, saved_data, grads0, strict=True):
                p.data[...] = w - eta * g
            loss, g = loss_and_gradient(model, x, y, criterion)
            change = float(np.linalg.norm(g - g0))
            losses.append(loss)
            changes.append(change)
            ratios.append(change / (eta * norm_g0) if norm_g0 > 0 else 0.0)
    finally:
        for p, w, g in zip(params, saved_data, saved_grad, strict=True):
            p.data[...] = w
            p.grad = g
        model.load_state_dict(saved_state)
        model.train(was_training)
    all_losses = [loss0, *losses]
    return {
        "loss": loss0,
        "losses": losses,
        "loss_range": float(max(all_losses) - min(all_losses)),
        "grad_change": float(max(changes)),
        "beta": float(max(ratios)),
        "grad_changes": changes,
        "grad_norm": norm_g0,
    }


@register(
    "landscape",
    claim="Batch norm makes the loss landscape smoother: along the gradient, the loss and the gradient "
    "change less with BN.",
    source="Santurkar et al., How Does Batch Normalization Help Optimization? (NeurIPS 2018), §3, fig. 4",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x, y = first(data.train, cfg["train_images"])
    # the fixed probe batch: one batch of training images, drawn once
    pick = ctx.rng(3).choice(len(y), size=min(cfg["batch_size"], len(y)), replace=False)
    x_probe, y_probe = x[pick], y[pick]
    criterion = nn.CrossEntropyLoss()

    records = []
    test_accuracy = {}
    for variant in VARIANTS:
        ctx.log(f"landscape: {NAMES[variant]}")
        model = ctx.place(build(variant, cfg["hidden"], rng=ctx.rng(1)))

        def each_step(run, step: int, variant=variant, model=model) -> None:
            if step == 1 or step % cfg["probe_every"] == 0:
                # on a NumPy copy when the model is on a device (the model itself otherwise)
                r = probe(host_copy(model), x_probe, y_probe, cfg["step_sizes"], criterion)
                records.append(
                    {"variant": variant, "step": step, "train_loss": run.step.loss}
                    | {k: r[k] for k in ("loss", "loss_range", "grad_change", "beta", "grad_norm")}
                    | {
                        f"loss_eta{eta:g}": v
                        for eta, v in zip(cfg["step_sizes"], r["losses"], strict=True)
                    }
                    | {
                        f"grad_change_eta{eta:g}": v
                        for eta, v in zip(cfg["step_sizes"], r["grad_changes"], strict=True)
                    }
                )

        loader = DataLoader(x, y, batch_size=cfg["batch_size"], shuffle=True, seed=ctx.seed)
        train_model(
            model,
            loader,
            optimizer=optim.SGD(model.parameters(), lr=cfg["lr"]),
            loss=nn.CrossEntropyLoss(),
            epochs=cfg["epochs"],
            callbacks=[Measure(each_step)],
        )
        test_accuracy[variant] = model_accuracy(model, data.test.x, data.test.y)
    ctx.save_metrics("probes", records)

    medians = {
        v: {q: float(np.median([r[q] for r in records if r["variant"] == v])) for q in QUANTITIES}
        for v in VARIANTS
    }
    holds, measured = decide(medians)
    table = Table(
        "Median over probe points (lower = smoother)",
        ["network", *QUANTITIES.values(), "test acc"],
        [
            [NAMES[v], *[round(medians[v][q], 4) for q in QUANTITIES], round(test_accuracy[v], 4)]
            for v in VARIANTS
        ],
    )
    n_probes = sum(r["variant"] == "bn" for r in records)
    notes = [
        f"Data: {data.source}; {len(y)} training images.",
        "Santurkar et al. use VGG on CIFAR-10; offline we use an MLP 784 -> "
        f"{' -> '.join(map(str, cfg['hidden']))} -> 10 on MNIST, plain SGD lr {cfg['lr']}, batch "
        f"{cfg['batch_size']}, {cfg['epochs']} epoch(s), the same initial weights and batches for both.",
        f"Probes at step 1 and every {cfg['probe_every']} steps ({n_probes} per network), step sizes η = "
        f"{cfg['step_sizes']}, on one fixed training batch of {len(y_probe)} images in train mode (BN uses "
        "the batch's statistics, as during training); parameters, gradients and running statistics are "
        "restored after each probe.",
        "Loss variation is max - min of the loss over {0} ∪ the step sizes; ‖Δw‖ = η‖g‖.",
    ]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot(ctx, records)],
        notes=notes,
        summary={"medians": medians, "test_accuracy": test_accuracy},
    )


def decide(medians: Mapping[str, Mapping[str, float]]) -> tuple[bool, str]:
    """Holds if BN's median is below plain's for every quantity of :data:`QUANTITIES`."""
    smaller = {q: medians["bn"][q] < medians["plain"][q] for q in QUANTITIES}
    measured = "; ".join(
        f"{q}: BN {medians['bn'][q]:.4g} vs standard {medians['plain'][q]:.4g}"
        f" ({'smaller' if smaller[q] else 'not smaller'} with BN)"
        for q in QUANTITIES
    )
    return all(smaller.values()), measured + " (medians over probe points; criterion: all smaller)"


def _decades(ax) -> float:
    """How many powers of ten the (log) y axis of ``ax`` spans."""
    low, high = ax.get_ylim()
    return float(np.log10(high / low))


def _plot(ctx: RunContext, records):
    fig, axes = ctx.figure(1, 3, size=(15, 4))
    for v in VARIANTS:
        rows = [r for r in records if r["variant"] == v]
        steps = [r["step"] for r in rows]
        losses = np.array(
            [[r["loss"]] + [r[k] for k in r if k.startswith("loss_eta")] for r in rows]
        )
        axes[0].fill_between(
            steps,
            losses.min(axis=1),
            losses.max(axis=1),
            color=COLORS[v],
            alpha=0.35,
            label=NAMES[v],
        )
        grads = np.array([[r[k] for k in r if k.startswith("grad_change_eta")] for r in rows])
        axes[1].fill_between(
            steps, grads.min(axis=1), grads.max(axis=1), color=COLORS[v], alpha=0.35, label=NAMES[v]
        )
        axes[2].plot(steps, [r["beta"] for r in rows], color=COLORS[v], label=NAMES[v])
    axes[0].set(xlabel="step", ylabel="loss along the gradient (range over η)", yscale="log")
    # plain numbers on the log axis (the default wrote 2 x 10^0 next to 10^0); the minor ticks labelled
    # only when the axis spans at most a decade (over several, their labels ran into each other)
    axes[0].yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes[0].yaxis.set_minor_formatter(
        ticker.FuncFormatter(lambda v, _: f"{v:g}" if _decades(axes[0]) <= 1 else "")
    )
    axes[1].set(xlabel="step", ylabel="‖g(η) - g‖ (range over η)")
    axes[2].set(xlabel="step", ylabel="max ‖Δg‖ / ‖Δw‖")
    for ax in axes:
        ax.grid(alpha=0.3)
        # below the axes: the bands fill much of each panel, a legend inside can cover one
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)
    return ctx.save_figure(fig, "landscape")
