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
# # Batch normalization from scratch
#
# In this tutorial we write batch normalization ourselves in a few lines of NumPy: the forward pass, the
# backward pass derived one node of the computational graph at a time, and the same backward pass in closed
# form. Then we check all of it three ways: against finite differences, against normlab's reference
# implementation (`normlab.functional`) and against PyTorch. We finish with the part that trips people up in
# practice: batch norm behaves differently in training and in evaluation.
#
# You need only NumPy; PyTorch is used for one comparison.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import torch

import normlab.functional as F
from normlab import nn

rng = np.random.default_rng(0)
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. The forward pass
#
# Take a mini-batch of $m$ samples with $D$ features, $x \in \mathbb{R}^{m \times D}$. Batch norm treats each
# feature (column) on its own. For one column with values $x_1, \dots, x_m$:
#
# $$\mu = \frac{1}{m}\sum_{i=1}^{m} x_i, \qquad \sigma^2 = \frac{1}{m}\sum_{i=1}^{m} (x_i - \mu)^2,$$
#
# $$\hat x_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad y_i = \gamma\, \hat x_i + \beta .$$
#
# The normalized values $\hat x$ have mean 0 and variance (almost exactly) 1 over the batch. The learnable
# scale $\gamma$ and shift $\beta$ (one of each per feature) let the network undo the normalization if that
# is what the loss wants: with $\gamma = \sqrt{\sigma^2+\epsilon}$ and $\beta = \mu$ the layer is the
# identity. The small $\epsilon$ keeps the division finite when a feature is constant over the batch.
#
# Note that $\sigma^2$ is the *biased* variance (divide by $m$, not $m-1$): that is what the normalization
# uses.
#
# Written as a chain of small steps, the forward pass is the computational graph we will walk backwards:


# %%
def bn_forward(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=0)  # (D,)
    xc = x - mu  # centred input, (m, D)
    var = (xc**2).mean(axis=0)  # biased variance, (D,)
    inv_std = 1.0 / np.sqrt(var + eps)  # (D,)
    xhat = xc * inv_std  # normalized, (m, D)
    y = gamma * xhat + beta
    cache = (xc, var, inv_std, xhat, gamma)
    return y, cache


x = rng.normal(loc=3.0, scale=2.5, size=(64, 4))  # float64: a batch of 64 samples, 4 features
x[:, 1] *= 10.0  # features on very different scales
gamma, beta = np.ones(4), np.zeros(4)
y, cache = bn_forward(x, gamma, beta)
print("input  mean", x.mean(axis=0), " std", x.std(axis=0))
print("output mean", y.mean(axis=0), " std", y.std(axis=0))
assert np.allclose(y.mean(axis=0), 0.0, atol=1e-12)
assert np.allclose(y.std(axis=0), 1.0, atol=1e-5)

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for j in range(4):
    axes[0].hist(x[:, j], bins=20, alpha=0.5, label=f"feature {j}")
    axes[1].hist(y[:, j], bins=20, alpha=0.5, label=f"feature {j}")
axes[0].set(title="before batch norm", xlabel="value", ylabel="count")
axes[1].set(title="after batch norm ($\\gamma=1, \\beta=0$)", xlabel="value", ylabel="count")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The backward pass, one node at a time
#
# Suppose a loss $L$ sits somewhere after the layer and hands us $\partial L / \partial y$ (same shape as $y$;
# below we write $\bar v$ for $\partial L/\partial v$). We walk the graph from the output back to the input,
# applying the chain rule at every node. Where a value was *used several times* in the forward pass, the
# gradients from each use are *added*; where a value was *broadcast* (a per-feature vector added to every
# row), its gradient is *summed over the rows*.
#
# | forward step | backward step |
# | --- | --- |
# | $y = \gamma \hat x + \beta$ | $\bar\beta = \sum_i \bar y_i$, $\ \bar\gamma = \sum_i \bar y_i \hat x_i$, $\ \bar{\hat x} = \gamma\, \bar y$ |
# | $\hat x = x_c \cdot s$ with $s = (\sigma^2+\epsilon)^{-1/2}$ | $\bar s = \sum_i \bar{\hat x}_i\, x_{c,i}$, $\ \bar x_c \mathrel{+}= \bar{\hat x}\, s$ |
# | $s = (\sigma^2+\epsilon)^{-1/2}$ | $\bar{\sigma^2} = -\tfrac12 (\sigma^2+\epsilon)^{-3/2}\, \bar s$ |
# | $\sigma^2 = \frac1m \sum_i x_{c,i}^2$ | $\bar x_c \mathrel{+}= \tfrac{2}{m} x_c\, \bar{\sigma^2}$ |
# | $x_c = x - \mu$ | $\bar x \mathrel{+}= \bar x_c$, $\ \bar\mu = -\sum_i \bar x_{c,i}$ |
# | $\mu = \frac1m \sum_i x_i$ | $\bar x \mathrel{+}= \tfrac1m \bar\mu$ |
#
# $x_c$ is used twice (in $\hat x$ and in $\sigma^2$), and $x$ twice (in $x_c$ and in $\mu$): those are the
# `+=` lines. Translated line by line:


# %%
def bn_backward_graph(dy, cache):
    xc, _, inv_std, xhat, gamma = cache
    m = dy.shape[0]
    dbeta = dy.sum(axis=0)
    dgamma = (dy * xhat).sum(axis=0)
    dxhat = gamma * dy
    dinv_std = (dxhat * xc).sum(axis=0)
    dxc = dxhat * inv_std  # first use of xc: in xhat
    dvar = -0.5 * inv_std**3 * dinv_std
    dxc += (2.0 / m) * xc * dvar  # second use of xc: in the variance
    dmu = -dxc.sum(axis=0)
    dx = dxc + dmu / m  # x itself, then through the mean
    return dx, dgamma, dbeta


# %% [markdown]
# ## 3. The same gradient in closed form
#
# Substituting the steps into each other and simplifying (using $\sum_i \hat x_i = 0$ and
# $\frac1m\sum_i \hat x_i^2 = \sigma^2/(\sigma^2+\epsilon)$, which enters through $x_c = \hat x / s$), everything
# collapses into one expression. Write $g_i = \gamma\, \bar y_i$ for the gradient reaching $\hat x$ and
# $\langle\cdot\rangle$ for the mean over the batch:
#
# $$\frac{\partial L}{\partial x_i} = \frac{1}{\sqrt{\sigma^2+\epsilon}}
#   \Big(g_i - \langle g \rangle - \hat x_i \,\langle g\, \hat x \rangle\Big).$$
#
# It reads well: the gradient is $g$ divided by the standard deviation, *minus* its component along the two
# directions the normalization removes. Because $\mu$ depends on the whole batch, moving every $x_i$ by the
# same amount changes nothing (the $\langle g\rangle$ term); because $\sigma$ does, scaling every $x_i - \mu$ by
# the same factor changes nothing either (the $\hat x \langle g \hat x \rangle$ term). So $\partial L/\partial x$
# sums to zero over the batch and is orthogonal to $\hat x$.


# %%
def bn_backward_closed(dy, cache):
    _, _, inv_std, xhat, gamma = cache
    g = gamma * dy
    dx = inv_std * (g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


# %% [markdown]
# ## 4. Are they right? Finite differences
#
# The definition of the derivative gives a check that needs no calculus: nudge one input by $\pm h$ and look
# at the change of the loss, $\frac{L(x + h e_k) - L(x - h e_k)}{2h}$ (the central difference, whose error
# shrinks like $h^2$). We use a random linear loss $L = \sum_{i,j} w_{ij}\, y_{ij}$, so that
# $\partial L / \partial y = w$, and float64 throughout: in float32, round-off would swamp the comparison.

# %%
m, D = 8, 3
x = rng.normal(2.0, 3.0, size=(m, D))
gamma, beta = rng.normal(1.0, 0.5, size=D), rng.normal(0.0, 0.5, size=D)
w = rng.normal(size=(m, D))  # dL/dy


def loss(x, gamma, beta):
    return float((bn_forward(x, gamma, beta)[0] * w).sum())


def numerical_gradient(f, a, h=1e-6):
    grad = np.zeros_like(a)
    for k in np.ndindex(a.shape):
        old = a[k]
        a[k] = old + h
        plus = f()
        a[k] = old - h
        minus = f()
        a[k] = old
        grad[k] = (plus - minus) / (2 * h)
    return grad


def rel_error(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b))))


_, cache = bn_forward(x, gamma, beta)
analytic = {"graph": bn_backward_graph(w, cache), "closed form": bn_backward_closed(w, cache)}
numeric = [numerical_gradient(lambda: loss(x, gamma, beta), a) for a in (x, gamma, beta)]
for name, grads in analytic.items():
    errors = [rel_error(g, n) for g, n in zip(grads, numeric, strict=True)]
    print(
        f"{name:12s} relative error vs finite differences: dx {errors[0]:.1e}, "
        f"dgamma {errors[1]:.1e}, dbeta {errors[2]:.1e}"
    )
    assert max(errors) < 1e-7
dx = analytic["closed form"][0]
print("graph vs closed form, dx:", rel_error(analytic["graph"][0], dx))
dx_sum, dx_dot_xhat = dx.sum(axis=0), (dx * cache[3]).sum(axis=0)
print("sum of dx over the batch:", np.array2string(dx_sum, precision=1, floatmode="maxprec_equal"))
print(
    "dx . xhat over the batch:", np.array2string(dx_dot_xhat, formatter={"float": "{:.1e}".format})
)
assert np.max(np.abs(dx_sum)) < 1e-12 and np.max(np.abs(dx_dot_xhat)) < 1e-5

# %% [markdown]
# Both derivations agree with the finite differences to about $10^{-9}$ or better (the central difference
# itself is only that accurate), and with each other to round-off. The last two lines confirm the properties
# read off the closed form: $\partial L/\partial x$ sums to zero (to round-off), and is orthogonal to $\hat x$
# up to a term of the order of $\epsilon/\sigma^2$ (the mean of $\hat x^2$ is $\sigma^2/(\sigma^2+\epsilon)$, a
# hair below 1).
#
# ## 5. Against normlab and against PyTorch
#
# normlab's reference implementation, `normlab.functional.batch_norm_forward` / `batch_norm_backward`, is the
# same math (it uses the closed form) written for channels-first input of any rank: $(N, C)$ here, $(N, C, H, W)$
# for images, with statistics per channel $C$. It returns the output and a cache, and the backward returns
# `(dx, dweight, dbias)`.

# %%
y_ours, cache = bn_forward(x, gamma, beta)
y_nl, nl_cache = F.batch_norm_forward(x, gamma, beta, eps=1e-5)
dx_nl, dgamma_nl, dbeta_nl = F.batch_norm_backward(w, nl_cache)
dx_ours, dgamma_ours, dbeta_ours = bn_backward_closed(w, cache)
diffs = {
    "y": np.max(np.abs(y_ours - y_nl)),
    "dx": np.max(np.abs(dx_ours - dx_nl)),
    "dgamma": np.max(np.abs(dgamma_ours - dgamma_nl)),
    "dbeta": np.max(np.abs(dbeta_ours - dbeta_nl)),
}
print("ours vs normlab.functional, max abs difference:", {k: f"{v:.1e}" for k, v in diffs.items()})
assert max(diffs.values()) < 1e-12

# %% [markdown]
# PyTorch computes the backward pass by automatic differentiation, a third independent route:

# %%
xt = torch.tensor(x, requires_grad=True)
gt = torch.tensor(gamma, requires_grad=True)
bt = torch.tensor(beta, requires_grad=True)
yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5)
(yt * torch.tensor(w)).sum().backward()
diffs = {
    "y": np.max(np.abs(yt.detach().numpy() - y_ours)),
    "dx": np.max(np.abs(xt.grad.numpy() - dx_ours)),
    "dgamma": np.max(np.abs(gt.grad.numpy() - dgamma_ours)),
    "dbeta": np.max(np.abs(bt.grad.numpy() - dbeta_ours)),
}
print("ours vs PyTorch, max abs difference:", {k: f"{v:.1e}" for k, v in diffs.items()})
assert max(diffs.values()) < 1e-12

# %% [markdown]
# ## 6. Training mode and evaluation mode
#
# In training, the statistics come from the mini-batch, so **the output for one sample depends on the other
# samples in its batch**. That is fine for training (it even adds a little noise that acts as a
# regularizer), but at inference we want a deterministic function of one input, and we may have a batch of
# one. So a batch norm layer also keeps *running* estimates of the population mean and variance, updated at
# every training step, and uses those in evaluation mode:
#
# $$\hat\mu \leftarrow (1 - m)\,\hat\mu + m\, \mu_B, \qquad \hat\sigma^2 \leftarrow (1 - m)\,\hat\sigma^2 + m\, \tfrac{n}{n-1}\sigma^2_B,$$
#
# with momentum $m = 0.1$ by default, $n$ the number of values each statistic was taken over, and the running
# values starting at $\hat\mu = 0$, $\hat\sigma^2 = 1$. Two conventions to know:
#
# * normlab follows PyTorch: `momentum` is the weight of the **new** batch. Keras calls the weight of the
#   **old** value momentum (default 0.99, i.e. $m = 0.01$ here): `nn.momentum_from_keras(0.99)` converts.
# * The running variance is stored *unbiased* (the factor $\frac{n}{n-1}$), as PyTorch does, although the
#   batch itself is normalized with the biased one. `running_var="biased"` gives Keras's convention.
#
# We check the update by hand on `nn.BatchNorm1d`:

# %%
bn = nn.BatchNorm1d(3, dtype=np.float64)
batch = rng.normal(5.0, 2.0, size=(16, 3))
bn(batch)  # one training step (a new layer is in training mode)
expected_mean = 0.9 * 0.0 + 0.1 * batch.mean(axis=0)
expected_var = 0.9 * 1.0 + 0.1 * batch.var(axis=0, ddof=1)
print("running_mean", bn.running_mean, " by hand", expected_mean)
print("running_var ", bn.running_var, " by hand", expected_var)
print("num_batches_tracked", int(bn.num_batches_tracked))
assert np.allclose(bn.running_mean, expected_mean) and np.allclose(bn.running_var, expected_var)
print(f"Keras momentum 0.99 is normlab momentum {nn.momentum_from_keras(0.99):.4g}")

# %% [markdown]
# Now the difference between the modes. In training mode, the same sample gets a different output when its
# batch-mates change; in evaluation mode it does not.

# %%
sample = batch[:1]
others_a, others_b = rng.normal(5.0, 2.0, size=(15, 3)), rng.normal(0.0, 1.0, size=(15, 3))
bn.train()
out_a = bn(np.concatenate([sample, others_a]))[0]
out_b = bn(np.concatenate([sample, others_b]))[0]
print("train mode, same sample, two batches:", out_a, out_b)
bn.eval()
out_a_eval = bn(np.concatenate([sample, others_a]))[0]
out_b_eval = bn(np.concatenate([sample, others_b]))[0]
print("eval mode,  same sample, two batches:", out_a_eval, out_b_eval)
assert not np.allclose(out_a, out_b) and np.array_equal(out_a_eval, out_b_eval)

# %% [markdown]
# How fast do the running statistics approach the truth? With momentum $m$, after $t$ steps the initial value
# still weighs $(1-m)^t$: about $0.9^{t}$ for the default $m=0.1$ (0.1 % left after 66 steps), but $0.99^t$ for
# $m = 0.01$ (Keras's default), which needs about 690 steps. `momentum=None` instead takes the plain
# cumulative average of all batches seen so far. Here a feature whose true mean is 5, batches of 32:

# %%
true_mean, steps = 5.0, 200
stream = rng.normal(true_mean, 2.0, size=(steps, 32, 1))
curves = {}
for momentum in (0.1, 0.01, None):
    layer = nn.BatchNorm1d(1, momentum=momentum, dtype=np.float64)
    track = []
    for b in stream:
        layer(b)
        track.append(float(layer.running_mean[0]))
    curves[momentum] = np.array(track)
fig, ax = plt.subplots(figsize=(7, 3.5))
for momentum, track in curves.items():
    ax.plot(np.arange(1, steps + 1), track, label=f"momentum={momentum}")
ax.axhline(true_mean, color="k", lw=0.8, ls="--", label="population mean")
ax.set(xlabel="training step", ylabel="running_mean", title="running mean of a feature with mean 5")
ax.legend()
plt.show()
for momentum, track in curves.items():
    print(
        f"momentum={momentum}: after 50 steps {track[49]:.3f}, after {steps} steps {track[-1]:.3f}"
    )
assert abs(curves[0.1][49] - true_mean) < 0.5 < abs(curves[0.01][49] - true_mean)

# %% [markdown]
# With $m = 0.01$ the running mean is still far from 5 after 50 steps: a model evaluated that early would
# normalize with statistics that do not describe its data. Tutorial 5 (the inference lifecycle) shows what
# goes wrong when the running statistics are lost or stale, and how to recompute them.
#
# **Summary.** Batch norm is four lines of forward math; its backward is one line once derived, and the
# derivation is the chain rule applied node by node, with gradients added where a value is reused. Finite
# differences in float64 are the referee. In training it uses the batch's statistics; in evaluation, running
# averages whose momentum convention differs between libraries.
