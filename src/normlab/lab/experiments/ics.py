"""ics: batch norm's benefit does not come from reducing internal covariate shift.

Santurkar, Tsipras, Ilyas & Madry, *How Does Batch Normalization Help Optimization?* (NeurIPS 2018), §2,
fig. 2: a VGG network on CIFAR-10 trained three ways, without BN ("standard"), with BN, and with "noisy BN":
after each BN layer, noise with a non-zero mean and a non-unit variance is added, its distribution redrawn
at every step, so each layer's input distribution shifts more than without BN.  Noisy BN trains about as
well as BN (and better than standard) although its activations move around far more: if BN worked by
stabilising the distribution of layer inputs, noisy BN should lose the benefit.  Their fig. 2 shows the
training/test accuracy curves and, for one layer, the distribution of activations over time (percentiles).

Here (offline, the bundled MNIST sample): an MLP 784 -> 100 -> 100 -> 100 -> 10 with Linear [-> BN [-> noise]]
-> ReLU per hidden layer; SGD with momentum 0.9, the same learning rate for all three.  The noise (ours, in
the paper's spirit; they do not give their distribution's parameters in the main text): at every training
step each noise layer draws a mean ``mu_t ~ U(-shift, shift)`` and a scale ``s_t ~ U(1, scale)``, then per
activation ``y = x * s_t * exp(jitter * e1) + mu_t + jitter * e2`` with ``e1, e2 ~ N(0, 1)``: non-zero mean,
non-unit variance, new every step.  In eval mode the noise layer multiplies by the noise's expected factor
``E[S] = (1 + scale) / 2 · exp(jitter² / 2)`` and adds its expected offset 0 (as dropout's inference uses the
expectation): the network is evaluated on the activation scale it was trained on.

Decided before running: the claim holds if noisy BN's final test accuracy is at least BN's minus
``margin`` while the probed layer's distribution moves more for noisy BN than for BN (the standard deviation
over time of its median is larger).  Plain's numbers are reported beside them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from normlab import nn, optim
from normlab.backend import host_dtype, like, to_host
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

FULL = {
    "hidden": [100, 100, 100],
    "probe_layer": 2,  # the hidden layer (1-based) whose pre-ReLU activations are recorded
    "optimizer": "SGD",
    "momentum": 0.9,
    "lr": 0.02,
    "batch_size": 64,
    "epochs": 10,
    "shift": 1.0,  # mu_t ~ U(-shift, shift)
    "scale": 3.0,  # s_t ~ U(1, scale)
    "jitter": 0.5,  # per-activation spread around mu_t and s_t
    "measure_every": 10,  # steps between test-accuracy and activation measurements
    "percentiles": [5, 25, 50, 75, 95],
    "train_images": None,
    "test_images": None,
    "margin": 0.02,
}
QUICK = FULL | {"epochs": 3, "measure_every": 20}
TINY = FULL | {"epochs": 1, "train_images": 256, "test_images": 200, "measure_every": 1}

VARIANTS = ("plain", "bn", "noisy-bn")
NAMES = {"plain": "standard (no BN)", "bn": "BN", "noisy-bn": "noisy BN"}
COLORS = {"plain": "#777777", "bn": "#1f5fbf", "noisy-bn": "#c05020"}


class ShiftNoise(nn.Module):
    """The paper's "noisy BN" noise: ``y = x * S + M`` with ``S, M`` (shape of ``x``) drawn afresh at every
    training forward from a distribution whose mean and scale are themselves redrawn (see the module
    docstring); in eval mode ``y = x * E[S]`` (:meth:`expected_factor`; ``E[M] = 0``).  ``backward``: ``dx = dy * S`` (the noise is a constant of the
    step).  ``frozen`` reuses the last draw (for a gradient check); ``generator`` makes it reproducible."""

    def __init__(
        self, shift: float, scale: float, jitter: float, generator: np.random.Generator
    ) -> None:
        super().__init__()
        if shift < 0 or scale < 1 or jitter < 0:
            raise ValueError(
                "ShiftNoise: expected shift >= 0, scale >= 1, jitter >= 0, "
                f"got shift={shift}, scale={scale}, jitter={jitter}"
            )
        self.shift, self.scale, self.jitter = shift, scale, jitter
        self.generator = generator
        self.frozen = False
        self._noise: tuple[np.ndarray, np.ndarray] | None = None
        self._factor: np.ndarray | None = None

    def draw(self, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        g = self.generator
        mean, scale = g.uniform(-self.shift, self.shift), g.uniform(1.0, self.scale)
        factor = scale * np.exp(self.jitter * g.standard_normal(shape))
        offset = mean + self.jitter * g.standard_normal(shape)
        return factor.astype(dtype), offset.astype(dtype)

    def expected_factor(self) -> float:
        """E[S]: the mean of U(1, scale) times the mean of the log-normal exp(jitter · N(0, 1))."""
        return (1.0 + self.scale) / 2.0 * float(np.exp(self.jitter**2 / 2.0))

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training:
            # a Python float takes x's dtype (NumPy 2 and the Array API alike), on x's device
            self._factor = self.expected_factor()
            return x * self._factor
        if not (self.frozen and self._noise is not None and self._noise[0].shape == x.shape):
            # drawn on the host from the layer's generator; on a device, used there
            self._noise = tuple(like(a, x) for a in self.draw(tuple(x.shape), host_dtype(x)))
        factor, offset = self._noise
        self._factor = factor
        return x * factor + offset

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        if self._factor is None:
            raise RuntimeError("ShiftNoise: backward needs a forward pass first")
        return grad_output * self._factor

    def extra_repr(self) -> str:
        return f"shift={self.shift}, scale={self.scale}, jitter={self.jitter}"


class Probe(nn.Module):
    """The identity; in training mode it keeps the given percentiles of its input when ``armed``."""

    def __init__(self, percentiles: Sequence[float]) -> None:
        super().__init__()
        self.percentiles = list(percentiles)
        self.armed = False
        self.last: list[float] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.training and self.armed:
            self.last = [float(v) for v in np.percentile(to_host(x), self.percentiles)]
            self.armed = False
        return x

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return grad_output


def build(
    variant: str, cfg: Mapping, *, rng: np.random.Generator, noise_seed: Any
) -> nn.Sequential:
    """The MLP for ``variant`` (``plain``, ``bn``, ``noisy-bn``), with a :class:`Probe` before the ReLU of
    hidden layer ``cfg["probe_layer"]``.  The Linear weights depend on ``rng`` only, not on the variant."""
    if variant not in VARIANTS:
        raise ValueError(f"ics: variant must be one of {VARIANTS}, got {variant!r}")
    noise_rng = np.random.default_rng(noise_seed)
    sizes = [784, *cfg["hidden"]]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes), start=1):
        layers.append(nn.Linear(n_in, n_out, rng=rng))
        if variant != "plain":
            layers.append(nn.BatchNorm1d(n_out))
        if variant == "noisy-bn":
            layers.append(ShiftNoise(cfg["shift"], cfg["scale"], cfg["jitter"], noise_rng))
        if i == cfg["probe_layer"]:
            layers.append(Probe(cfg["percentiles"]))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(sizes[-1], 10, rng=rng))
    return nn.Sequential(*layers)


@register(
    "ics",
    claim="Batch norm's benefit does not come from reducing internal covariate shift: BN with injected "
    "time-varying noise (more shift) trains as well as BN.",
    source="Santurkar et al., How Does Batch Normalization Help Optimization? (NeurIPS 2018), §2, fig. 2",
    configs={"full": FULL, "quick": QUICK, "tiny": TINY},
    on_device=True,
)
def run(ctx: RunContext) -> Result:
    cfg = ctx.config
    data = mnist(ctx)
    x, y = first(data.train, cfg["train_images"])
    x_test, y_test = first(data.test, cfg["test_images"])

    curves, activations, final = [], [], {}
    for variant in VARIANTS:
        ctx.log(f"ics: {NAMES[variant]}")
        model = ctx.place(build(variant, cfg, rng=ctx.rng(1), noise_seed=[ctx.seed, 2]))
        probe = next(m for m in model.modules() if isinstance(m, Probe))
        loader = DataLoader(x, y, batch_size=cfg["batch_size"], shuffle=True, seed=ctx.seed)
        correct = [0, 0]

        def each_step(run, step: int, variant=variant, model=model, probe=probe, correct=correct):
            correct[0] += correct_predictions(run.step.outputs, run.step.targets)
            correct[1] += len(run.step)
            if step % cfg["measure_every"] == 0:
                curves.append(
                    {
                        "variant": variant,
                        "step": step,
                        "train_accuracy": correct[0] / correct[1],  # over the last interval
                        "test_accuracy": model_accuracy(model, x_test, y_test),
                    }
                )
                correct[:] = [0, 0]
                if probe.last is not None:
                    activations.append(
                        {"variant": variant, "step": step}
                        | {
                            f"p{p:g}": v
                            for p, v in zip(cfg["percentiles"], probe.last, strict=True)
                        }
                    )
                    probe.last = None
            probe.armed = (step + 1) % cfg["measure_every"] == 0

        probe.armed = cfg["measure_every"] == 1
        opt = optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
        train_model(
            model,
            loader,
            optimizer=opt,
            loss=nn.CrossEntropyLoss(),
            epochs=cfg["epochs"],
            callbacks=[Measure(each_step)],
        )
        final[variant] = {
            "train_accuracy": model_accuracy(model, x, y),
            "test_accuracy": model_accuracy(model, x_test, y_test),
        }
    ctx.save_metrics("curves", curves)
    ctx.save_metrics("activations", activations)

    movement = {v: median_movement([a for a in activations if a["variant"] == v]) for v in VARIANTS}
    holds, measured = decide(final, movement, cfg["margin"])
    table = Table(
        "Final accuracy (eval mode) and how much the probed layer's distribution moves",
        ["network", "train acc", "test acc", "std over time of the median", "mean 5-95 % width"],
        [
            [
                NAMES[v],
                round(final[v]["train_accuracy"], 4),
                round(final[v]["test_accuracy"], 4),
                round(movement[v], 4),
                round(
                    float(np.mean([a["p95"] - a["p5"] for a in activations if a["variant"] == v])),
                    4,
                ),
            ]
            for v in VARIANTS
        ],
    )
    notes = [
        f"Data: {data.source}; {len(y)} training images, {len(y_test)} test images.",
        "Santurkar et al. train VGG on CIFAR-10 (and a 25-layer linear network); offline we use an MLP "
        f"784 -> {' -> '.join(map(str, cfg['hidden']))} -> 10 on MNIST, SGD lr {cfg['lr']}, momentum "
        f"{cfg['momentum']}, batch {cfg['batch_size']}, {cfg['epochs']} epoch(s), the same for all three.",
        f"Noise (our parameters): per step mu_t ~ U(-{cfg['shift']}, {cfg['shift']}), s_t ~ U(1, "
        f"{cfg['scale']}); per activation y = x · s_t · exp({cfg['jitter']}·e1) + mu_t + "
        f"{cfg['jitter']}·e2; at evaluation the expected factor E[S] and offset 0 (the paper does not say "
        "what its noisy network does at test time).",
        f"Activations: percentiles {cfg['percentiles']} of hidden layer {cfg['probe_layer']}'s input to "
        f"its ReLU (after BN and noise) over the training batch, every {cfg['measure_every']} steps; "
        "the paper shows one layer's activation histogram over time.",
        "Training accuracy in the curves is over the batches of each interval (train mode); final "
        "accuracies are in eval mode.",
    ]
    return Result(
        claim=ctx.experiment.claim,
        measured=measured,
        verdict=verdict(holds),
        tables=[table],
        figures=[_plot_curves(ctx, curves), _plot_activations(ctx, activations, cfg)],
        notes=notes,
        summary={"final": final, "median_movement": movement},
    )


def median_movement(records: Sequence[Mapping[str, float]]) -> float:
    """Standard deviation over time of the probed layer's median (p50): how far its distribution moves."""
    medians = [r["p50"] for r in records]
    return float(np.std(medians)) if len(medians) > 1 else 0.0


def decide(
    final: Mapping[str, Mapping[str, float]], movement: Mapping[str, float], margin: float
) -> tuple[bool, str]:
    """Holds if noisy BN's test accuracy >= BN's - ``margin`` and noisy BN's median moves more than BN's."""
    bn, noisy, plain = (final[v]["test_accuracy"] for v in ("bn", "noisy-bn", "plain"))
    keeps = noisy >= bn - margin
    shifts_more = movement["noisy-bn"] > movement["bn"]
    measured = (
        f"test accuracy: noisy BN {noisy:.4f}, BN {bn:.4f}, standard {plain:.4f} (noisy BN - BN "
        f"{100 * (noisy - bn):+.2f} pp, criterion >= {-100 * margin:g} pp); the probed layer's median "
        f"moves (std over time) {movement['noisy-bn']:.3f} with noise against {movement['bn']:.3f} with BN "
        f"and {movement['plain']:.3f} without"
    )
    return keeps and shifts_more, measured


def _plot_curves(ctx: RunContext, curves):
    fig, (ax_train, ax_test) = ctx.figure(1, 2, size=(11, 4))
    for v in VARIANTS:
        rows = [c for c in curves if c["variant"] == v]
        steps = [c["step"] for c in rows]
        ax_train.plot(steps, [c["train_accuracy"] for c in rows], color=COLORS[v], label=NAMES[v])
        ax_test.plot(steps, [c["test_accuracy"] for c in rows], color=COLORS[v], label=NAMES[v])
    ax_train.set(xlabel="step", ylabel="training accuracy (batches, train mode)")
    ax_test.set(xlabel="step", ylabel="test accuracy (eval mode)")
    for ax in (ax_train, ax_test):
        ax.grid(alpha=0.3)
        ax.legend()
    return ctx.save_figure(fig, "accuracy_curves")


def _plot_activations(ctx: RunContext, activations, cfg):
    fig, axes = ctx.figure(1, len(VARIANTS), size=(14, 4), sharey=False)
    ps = cfg["percentiles"]
    for ax, v in zip(axes, VARIANTS, strict=True):
        rows = [a for a in activations if a["variant"] == v]
        steps = [a["step"] for a in rows]
        values = {p: [a[f"p{p:g}"] for a in rows] for p in ps}
        for lo, hi, alpha in ((ps[0], ps[-1], 0.2), (ps[1], ps[-2], 0.4)):
            ax.fill_between(
                steps, values[lo], values[hi], color=COLORS[v], alpha=alpha, linewidth=0
            )
        ax.plot(steps, values[ps[len(ps) // 2]], color=COLORS[v], label="median")
        ax.set(
            title=f"{NAMES[v]}: layer {cfg['probe_layer']} (pre-ReLU)",
            xlabel="step",
            ylabel=f"activation percentiles {ps[0]}-{ps[-1]}",
        )
        ax.grid(alpha=0.3)
    return ctx.save_figure(fig, "activation_distribution")
