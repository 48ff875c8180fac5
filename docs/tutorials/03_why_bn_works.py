# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Why does batch norm work?
#
# That batch norm speeds up training is an observation; *why* it does is still argued about. This tutorial
# sets out the three explanations you will meet, and then runs normlab's lab experiments that test two of them,
# so you can see what the measurements say rather than take any explanation on trust.
#
# ## Three explanations
#
# **1. Internal covariate shift (Ioffe & Szegedy, 2015).** The original paper defines *internal covariate
# shift* as the change in the distribution of a layer's inputs caused by the updates of the layers before it.
# Every layer must keep adapting to a moving input distribution, the argument goes, and fixing each
# layer's input mean and variance removes that burden, so larger learning rates become usable.
#
# **2. A smoother optimization landscape (Santurkar, Tsipras, Ilyas & Madry, 2018).** "How Does Batch
# Normalization Help Optimization?" questions the first explanation with an experiment: add noise with a
# random, time-varying mean and variance after every batch-norm layer ("noisy BN"), so that the
# distributions shift *more* than without batch norm. Noisy BN still trains about as well as BN. Their
# alternative: batch norm makes the loss and its gradient change more slowly along the direction of the
# gradient. Formally, for a step $w \to w - \eta g$ they look at
#
# * the **loss variation** $\max_\eta L(w - \eta g) - \min_\eta L(w - \eta g)$,
# * the **gradient predictiveness** $\max_\eta \lVert \nabla L(w - \eta g) - g \rVert$,
# * the **effective $\beta$-smoothness** $\max_\eta \lVert \nabla L(w - \eta g) - g\rVert / \lVert \eta g \rVert$,
#
# and report all three smaller with BN: a gradient that stays predictive over a longer step allows a larger
# learning rate.
#
# **3. Regularization.** In training, each sample is normalized with the statistics of whichever other samples
# share its mini-batch, so its output carries a little noise that changes from step to step, a bit like
# dropout. Smaller batches mean noisier statistics and a stronger effect; very large batches make it vanish.
#
# normlab's lab (`normlab lab list`) holds an experiment per claim; each one writes its numbers and figures and
# computes a verdict, "holds" or "does not hold here", from what it measured. We run the `ics` and `landscape`
# experiments from Python, in their `tiny` mode (seconds, the setting the test suite uses), and then a
# somewhat larger setting of our own.

# %%
# %matplotlib inline
import itertools
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import normlab.functional as F
from normlab.data import flatten, load_mnist, scale_01
from normlab.lab import REGISTRY, RunContext, run_experiments

out_dir = Path(tempfile.mkdtemp(prefix="normlab-why-"))
summary = run_experiments(["ics", "landscape"], out_dir, mode="tiny", seed=0)
results = {run.name: run.result for run in summary.runs}
for name, result in results.items():
    print(f"{name}: {result.verdict}\n  claim:    {result.claim}\n  measured: {result.measured}\n")


# %%
def show_table(table):
    widths = [max(len(str(v)) for v in col) for col in zip(table.columns, *table.rows, strict=True)]
    print(table.title)
    for row in [table.columns, *table.rows]:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)))


def show_figures(paths, width=13):
    fig, axes = plt.subplots(len(paths), 1, figsize=(width, 4.2 * len(paths)), squeeze=False)
    for ax, path in zip(axes[:, 0], paths, strict=True):
        ax.imshow(plt.imread(path))
        ax.set_axis_off()  # the lab's figure carries its own labelled axes
    fig.tight_layout()
    plt.show()


# %% [markdown]
# ## Internal covariate shift: the `ics` experiment
#
# An MLP $784 \to 100 \to 100 \to 100 \to 10$ is trained three ways with the same initial weights and batches:
# without BN ("standard"), with BN, and with noisy BN. A probe records percentiles of the second hidden layer's
# pre-activation values during training, to show how much that layer's input distribution moves.

# %%
ics = results["ics"]
show_table(ics.tables[0])
final = ics.summary["final"]
print("\nfinal test accuracy:", {k: round(v["test_accuracy"], 3) for k, v in final.items()})

# %% [markdown]
# In `tiny` mode the networks see 256 images, 4 steps: every accuracy is still far from what these networks
# reach, so the verdict printed above rests on almost no training. The tiny mode exists to exercise the code
# quickly; to learn something we give the same experiment a larger budget. `RunContext` holds the configuration
# an experiment reads, so we can start from `tiny` and change a few entries: 1600 and then 3200 training images,
# one epoch, a measurement every 5 steps.

# %%
assert max(v["test_accuracy"] for v in final.values()) < 0.6  # tiny: barely trained, as said above


def run_with(name, tag, **changes):
    ctx = RunContext(REGISTRY[name], out_dir / tag, mode="tiny", seed=0)
    ctx.config.update(changes)
    with np.errstate(over="ignore", invalid="ignore"):
        return REGISTRY[name].run(ctx)


ics_runs = {n: run_with("ics", f"ics-{n}", train_images=n, measure_every=5) for n in (1600, 3200)}
for n, r in ics_runs.items():
    acc = {k: round(v["test_accuracy"], 3) for k, v in r.summary["final"].items()}
    move = {k: round(v, 3) for k, v in r.summary["median_movement"].items()}
    print(f"{n} images: verdict '{r.verdict}'\n  test accuracy {acc}\n  median movement {move}")
show_figures(ics_runs[3200].figures)

# %% [markdown]
# Two numbers matter for the argument. The **median movement** (how much the probed layer's median wanders
# during training) is many times larger with noisy BN than with BN: the noise does what it was designed to
# do, and the layer's input distribution shifts far more than in the other two networks. Yet noisy BN's
# test accuracy stays far above the standard network's. If batch norm helped *by* keeping those
# distributions still, noisy BN should have lost most of the benefit; it did not.
#
# Whether noisy BN matches BN *exactly* (the lab's criterion: within 2 points) is a closer call that depends
# on the budget, as the two verdicts above may differ; `normlab lab run ics --quick` (three epochs over the
# whole sample, about a minute) is the lab's published setting, and the paper's own evidence is on VGG and
# CIFAR-10. The robust part, asserted here for both budgets, is the one the argument needs:

# %%
for n, r in ics_runs.items():
    acc, move = r.summary["final"], r.summary["median_movement"]
    assert move["noisy-bn"] > 10 * move["bn"], n  # noisy BN: the distribution moves far more ...
    assert acc["noisy-bn"]["test_accuracy"] > acc["plain"]["test_accuracy"] + 0.3, (
        n
    )  # ... yet trains

# %% [markdown]
# ## Smoothness: the `landscape` experiment
#
# The same MLP with and without BN, plain SGD at learning rate 0.1. At probe points during training it
# measures the three quantities defined above on one fixed training batch, for step sizes
# $\eta \in \{0.05, 0.1, 0.2, 0.4\}$, then restores the weights so that training continues untouched.

# %%
landscape = results["landscape"]
show_table(landscape.tables[0])
wide = run_with("landscape", "landscape-6000", train_images=6000, probe_every=10)
print(f"\nlarger run (one epoch on 6000 images, a probe every 10 steps): '{wide.verdict}'")
show_table(wide.tables[0])
show_figures(wide.figures)

# the gradient norm at each probe point, from the probes the experiment saved
for tag in ("landscape", "landscape-6000"):
    probes = json.loads((out_dir / tag / "probes.json").read_text())
    norms = {
        v: float(np.median([p["grad_norm"] for p in probes if p["variant"] == v]))
        for v in ("plain", "bn")
    }
    print(f"{tag}: median gradient norm, standard {norms['plain']:.3f}, BN {norms['bn']:.3f}")
    assert norms["plain"] < norms["bn"] / 3

# %% [markdown]
# Here the lab does **not** reproduce the paper's figure: in both runs all three medians are larger with BN.
# A reproduction that disagrees is worth reading closely rather than explaining away:
#
# * The setting is not the paper's (a three-layer MLP on MNIST, not VGG on CIFAR-10, and short runs near the
#   start of training), and smoothness is a property of a network *and* of where in weight space it is.
# * The plain network's gradient is much smaller (the median gradient norms printed above), which is also
#   why its loss falls slowly in these runs (first panel); so along its gradient the loss changes little,
#   and a small variation partly reflects a network that is hardly moving. The $\beta$ column divides
#   by the step length $\lVert \eta g \rVert$ to correct for that, and is still larger with BN here.
# * With BN, the loss is unchanged when the weights feeding a BN layer are scaled, so the gradient is
#   orthogonal to those weights and the same step size $\eta$ moves the network differently than without
#   BN; comparing at equal $\eta$ is itself a choice.
#
# The honest summary is the lab's: on this setup, the smoothness claim does not hold. If a change to normlab
# makes this measurement agree with the paper, the assertion below fails and this discussion must be
# revisited.

# %%
for r in (landscape, wide):
    medians = r.summary["medians"]
    assert all(medians["bn"][q] > medians["plain"][q] for q in medians["bn"]), r.measured

# %% [markdown]
# ## Regularization: how noisy are the batch statistics?
#
# The third explanation is easy to measure directly. Take one image, put it into many random mini-batches of
# MNIST images, and look at how much its normalized features vary from batch to batch. We use the
# pre-activations of a random linear layer (20 features) and normlab's `batch_norm_forward`.

# %%
train = load_mnist("sample").train
images = flatten(scale_01(train.x)).astype(np.float64)
gen = np.random.default_rng(0)
w = gen.normal(0.0, 784**-0.5, size=(784, 20))
features = images @ w  # (6000, 20) pre-activations
target = features[:1]  # the image we follow
batch_sizes = [4, 8, 16, 32, 64, 128, 256]
noise = []
for b in batch_sizes:
    outputs = []
    for _ in range(200):
        others = features[1 + gen.choice(len(features) - 1, size=b - 1, replace=False)]
        y, _ = F.batch_norm_forward(np.concatenate([target, others]), eps=1e-5)
        outputs.append(y[0])
    noise.append(float(np.std(outputs, axis=0).mean()))  # std over batches, averaged over features
for b, s in zip(batch_sizes, noise, strict=True):
    print(f"batch size {b:4d}: std of the image's normalized features across batches {s:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.loglog(batch_sizes, noise, marker="o", label="measured")
ax.loglog(
    batch_sizes,
    noise[0] * np.sqrt(batch_sizes[0] / np.array(batch_sizes)),
    ls="--",
    label="$\\propto 1/\\sqrt{B}$",
)
ax.set(
    xlabel="batch size B", ylabel="std across batches", title="noise batch norm adds to one sample"
)
ax.legend()
plt.show()
assert all(a > b for a, b in itertools.pairwise(noise))  # shrinks with every larger batch

# %% [markdown]
# The noise shrinks steadily with the batch size, roughly like $1/\sqrt{B}$ (the dashed line), as the
# sampling error of a mean does. That is the mechanism behind the regularization argument, and also behind
# batch norm's trouble with very small batches, where the same noise becomes large enough to hurt. Whether
# this noise *improves generalization* in a given model is a separate, empirical question: the lab's
# `regularization` experiment compares the generalization gap with and without BN, dropout and weight decay
# (`normlab lab run regularization --quick`).
#
# **Summary.** The covariate-shift story is the one the original paper told; the noisy-BN experiment shows
# that a network whose layer inputs shift much more still gets most of BN's benefit, which undercuts it. The
# smoothness explanation is the paper's alternative, but this lab's small-MLP measurement does not reproduce
# it. The regularizing noise is real and measurable, and shrinks as $1/\sqrt{B}$. None of these alone is
# the whole story, which is why it pays to measure before believing.
