"""Checks that need only the model: its configuration, parameters, buffers and modes.

Every function here reads the model and never writes to it.  Each returns a list of findings.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np

from normlab.doctor.report import Finding
from normlab.nn.container import Sequential
from normlab.nn.layers import Conv2d, Dropout, Linear
from normlab.nn.module import Module
from normlab.nn.norm import _BatchNorm, _Normalization, _NormBase

# thresholds (documented in the table of normlab.doctor)
KERAS_MOMENTUM = 0.9  # BN008: a PyTorch-convention momentum this high is almost surely Keras's
KERAS_EPS = 1e-3  # BN009: Keras's default eps
DEAD_GAMMA = 1e-3  # BN012: |gamma| below this: the channel outputs (almost) only beta
EXPLODING_GAMMA = 100.0  # BN013: |gamma| above this: the channel amplifies its input a hundredfold


def normalization_layers(model: Module) -> list[tuple[str, _Normalization]]:
    """``(name, layer)`` of every normalization layer (BN, IN, LN, GN, RMSNorm), in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Normalization)]


def batch_norm_layers(model: Module) -> list[tuple[str, _BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def tracked_layers(model: Module) -> list[tuple[str, _NormBase]]:
    """Layers with running statistics (batch norm, instance norm with ``track_running_stats``)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, _NormBase) and m.track_running_stats
    ]


def consecutive_layers(model: Module) -> Iterator[tuple[str, Module, str, Module]]:
    """``(name, layer, next_name, next_layer)`` for each pair of neighbours in every ``Sequential``: the only
    container whose order of execution is known from its structure."""
    for prefix, container in model.named_modules():
        if not isinstance(container, Sequential):
            continue
        children = [
            (f"{prefix}.{name}" if prefix else name, m) for name, m in container.named_children()
        ]
        for (a, la), (b, lb) in itertools.pairwise(children):
            yield a, la, b, lb


def _at_init(m: _NormBase) -> bool:
    return bool(np.all(m.running_mean == 0) and np.all(m.running_var == 1))


def _affine_moved(m: _Normalization) -> bool:
    w, b = m._parameters.get("weight"), m._parameters.get("bias")
    moved = w is not None and not np.all(w.data == 1)
    return moved or (b is not None and not np.all(b.data == 0))


def _model_is_trained(model: Module) -> bool:
    """Evidence of training that does not depend on the running statistics under test: some normalization
    layer's affine parameters left their initial (1, 0), or some layer counted batches."""
    for _, m in normalization_layers(model):
        if _affine_moved(m):
            return True
        tracked = isinstance(m, _NormBase) and m.track_running_stats
        if tracked and int(m.num_batches_tracked) > 0 and not _at_init(m):
            return True
    return False


def _worst(values: np.ndarray, bad: np.ndarray) -> list[int]:
    return np.flatnonzero(bad).tolist()[:10]


# --------------------------------------------------------------------------------------- checks
def never_updated(model: Module) -> list[Finding]:
    """BN001: running statistics still at their initial 0 / 1 in a trained model."""
    if not _model_is_trained(model):
        return []
    out = []
    for name, m in tracked_layers(model):
        if m.momentum == 0 or not _at_init(m):
            continue
        out.append(
            Finding(
                "BN001",
                "error",
                name,
                "running statistics were never updated (mean 0 and variance 1 in every channel) in a "
                "trained model: eval mode normalizes with the wrong statistics.",
                {
                    "num_batches_tracked": int(m.num_batches_tracked),
                    "running_mean_max_abs": 0.0,
                    "running_var_min": 1.0,
                    "running_var_max": 1.0,
                    "affine_trained": _affine_moved(m),
                },
                "Restore the saved running statistics (save buffers with the weights) or recompute them "
                "with normlab.recalibrate_batch_norm(model, training_batches).",
            )
        )
    return out


def invalid_running_var(model: Module) -> list[Finding]:
    """BN002: running variance <= 0 or non-finite (or a non-finite running mean) in some channel."""
    out = []
    for name, m in tracked_layers(model):
        var, mean = np.asarray(m.running_var, np.float64), np.asarray(m.running_mean, np.float64)
        bad = ~np.isfinite(var) | (var <= 0) | ~np.isfinite(mean)
        if not bad.any():
            continue
        out.append(
            Finding(
                "BN002",
                "error",
                name,
                f"running statistics are invalid in {int(bad.sum())} of {bad.size} channel(s) "
                "(variance zero, negative or not finite, or mean not finite).",
                {
                    "channels": _worst(var, bad),
                    "bad_channels": int(bad.sum()),
                    "running_var_min": float(np.nanmin(np.where(np.isfinite(var), var, np.nan)))
                    if np.isfinite(var).any()
                    else None,
                    "non_finite_var": int((~np.isfinite(var)).sum()),
                    "non_finite_mean": int((~np.isfinite(mean)).sum()),
                    "eps": m.eps,
                },
                "Recompute the statistics with normlab.recalibrate_batch_norm(model, training_batches) and "
                "find the batch or import that wrote them.",
            )
        )
    return out


def training_mode(model: Module) -> list[tuple[str, _NormBase]]:
    """The layers behind BN004: layers with running statistics that would use batch statistics now because
    they (or the model) are in training mode.  The finding itself is built by the caller, with the accuracy
    cost when data is given."""
    return [(n, m) for n, m in tracked_layers(model) if m.training and not m.frozen]


def bias_before_batch_norm(model: Module) -> list[Finding]:
    """BN006: a Linear/Conv2d bias directly before batch norm (its mean subtraction removes it)."""
    out = []
    for a, la, b, lb in consecutive_layers(model):
        if isinstance(la, (Linear, Conv2d)) and la.bias is not None and isinstance(lb, _BatchNorm):
            out.append(
                Finding(
                    "BN006",
                    "info",
                    a,
                    f"the bias of {type(la).__name__} is directly followed by batch norm {b!r}, which "
                    "subtracts the per-channel mean: the bias has no effect on the output.",
                    {"next_layer": b, "bias_max_abs": float(np.max(np.abs(la.bias.data)))},
                    f"Build the layer with bias=False ({la.bias.size} parameters fewer, same outputs).",
                )
            )
    return out


def affine_before_renormalization(model: Module) -> list[Finding]:
    """BN007: an affine batch norm directly followed (dropout aside) by a per-channel normalization."""
    out = []
    pairs = list(consecutive_layers(model))
    following = {a: (b, lb) for a, _, b, lb in pairs}
    for a, la, _, _ in pairs:
        if not (isinstance(la, _BatchNorm) and la.affine):
            continue
        b, lb = following[a]
        while isinstance(lb, Dropout) and b in following:  # dropout scales all channels alike
            b, lb = following[b]
        if isinstance(lb, _NormBase) and lb.num_features == la.num_features:
            out.append(
                Finding(
                    "BN007",
                    "info",
                    a,
                    f"the affine scale and shift of this batch norm are undone by {type(lb).__name__} "
                    f"{b!r}, which normalizes each channel again.",
                    {"next_layer": b, "num_features": la.num_features},
                    "Build this layer with affine=False, or remove one of the two normalizations.",
                )
            )
    return out


def keras_momentum(model: Module) -> list[Finding]:
    """BN008: momentum >= 0.9 in normlab/PyTorch's convention (weight of the *new* batch)."""
    out = []
    for name, m in tracked_layers(model):
        if m.momentum is None or m.momentum < KERAS_MOMENTUM:
            continue
        out.append(
            Finding(
                "BN008",
                "warning",
                name,
                f"momentum {m.momentum} gives the new batch {m.momentum:.0%} of the weight: the running "
                "statistics are those of the last batch or two.  This looks like a Keras momentum "
                "(weight of the old value) copied unconverted.",
                {
                    "momentum": m.momentum,
                    "converted": round(1.0 - m.momentum, 10),
                    "eps": m.eps,
                    "running_var": m.running_var_estimator,
                },
                f"Use momentum={round(1.0 - m.momentum, 10)} (normlab.nn.norm.momentum_from_keras).",
            )
        )
    return out


def keras_eps(model: Module) -> list[Finding]:
    """BN009: Keras's eps (1e-3) with the PyTorch (unbiased) running-variance convention."""
    out = []
    for name, m in tracked_layers(model):
        if (
            isinstance(m, _BatchNorm)
            and math.isclose(m.eps, KERAS_EPS)
            and (m.running_var_estimator == "unbiased")
        ):
            out.append(
                Finding(
                    "BN009",
                    "info",
                    name,
                    "eps is Keras's default (1e-3) but running_var follows PyTorch's unbiased convention: "
                    "a layer converted from Keras halfway.",
                    {"eps": m.eps, "running_var": m.running_var_estimator, "momentum": m.momentum},
                    "For a Keras port use running_var='biased' (and momentum_from_keras); otherwise "
                    "PyTorch's eps=1e-5.",
                )
            )
    return out


def frozen_but_learning(model: Module) -> list[Finding]:
    """BN011: batch norm meant to be frozen whose parameters or statistics can still change."""
    out = []
    for name, m in batch_norm_layers(model):
        params = [p for p in (m._parameters.get("weight"), m._parameters.get("bias")) if p]
        learning = [p for p in params if p.requires_grad]
        problem = None
        if m.frozen and learning:
            problem = "is frozen (freeze_batch_norm) but its weight/bias still require gradients"
        elif m.frozen and m.training:
            problem = "is frozen (freeze_batch_norm) but in training mode: its statistics update"
        elif params and not learning and m.training and m.track_running_stats:
            problem = (
                "has weight/bias frozen (requires_grad=False) but is in training mode: its running "
                "statistics still change with every batch"
            )
        if problem:
            out.append(
                Finding(
                    "BN011",
                    "error",
                    name,
                    f"this batch norm {problem}.",
                    {
                        "frozen": m.frozen,
                        "training": m.training,
                        "requires_grad": [p.requires_grad for p in params],
                    },
                    "Freeze with normlab.freeze_batch_norm(model) (statistics and parameters together) "
                    "and do not change the layer's flags afterwards.",
                )
            )
    return out


def gamma_extremes(model: Module) -> list[Finding]:
    """BN012 dead channels (|gamma| < DEAD_GAMMA) and BN013 exploding or non-finite gamma/beta."""
    out = []
    for name, m in normalization_layers(model):
        w = m._parameters.get("weight")
        if w is None:
            continue
        g = np.asarray(w.data, np.float64).reshape(-1)
        b = m._parameters.get("bias")
        beta = np.zeros(0) if b is None else np.asarray(b.data, np.float64).reshape(-1)
        dead = np.isfinite(g) & (np.abs(g) < DEAD_GAMMA)
        if dead.any():
            out.append(
                Finding(
                    "BN012",
                    "warning",
                    name,
                    f"{int(dead.sum())} of {g.size} channel(s) have |gamma| < {DEAD_GAMMA}: they output "
                    "(almost) the constant beta, whatever the input.",
                    {
                        "channels": _worst(g, dead),
                        "dead_channels": int(dead.sum()),
                        "min_abs_gamma": float(np.min(np.abs(g[dead]))),
                        "median_abs_gamma": float(np.median(np.abs(g[np.isfinite(g)]))),
                    },
                    "Lower the weight decay on normalization parameters (or exclude them), or prune "
                    "the dead channels deliberately.",
                )
            )
        exploding = ~np.isfinite(g) | (np.abs(np.nan_to_num(g)) > EXPLODING_GAMMA)
        bad_beta = ~np.isfinite(beta)
        if exploding.any() or bad_beta.any():
            finite = g[np.isfinite(g)]
            out.append(
                Finding(
                    "BN013",
                    "error" if (~np.isfinite(g)).any() or bad_beta.any() else "warning",
                    name,
                    f"{int(exploding.sum())} channel(s) have |gamma| > {EXPLODING_GAMMA:g} or a "
                    f"non-finite gamma, {int(bad_beta.sum())} a non-finite beta.",
                    {
                        "channels": _worst(g, exploding | (bad_beta if bad_beta.size else False)),
                        "max_abs_gamma": float(np.max(np.abs(finite))) if finite.size else None,
                        "non_finite_gamma": int((~np.isfinite(g)).sum()),
                        "non_finite_beta": int(bad_beta.sum()),
                    },
                    "Lower the learning rate or add gradient clipping, and restart from the last "
                    "checkpoint whose gamma was finite and moderate.",
                )
            )
    return out


def folding_opportunities(model: Module) -> list[Finding]:
    """BN014 (informational): Linear/Conv2d directly followed by batch norm with running statistics; for
    inference the pair folds into one layer (y = W'x + b')."""
    out = []
    for a, la, b, lb in consecutive_layers(model):
        if (
            isinstance(la, (Linear, Conv2d))
            and isinstance(lb, _BatchNorm)
            and lb.track_running_stats
        ):
            out.append(
                Finding(
                    "BN014",
                    "info",
                    b,
                    f"{type(la).__name__} {a!r} followed by this batch norm folds into one layer for "
                    "inference.",
                    {"previous_layer": a, "num_features": lb.num_features},
                    "Fold the pair for deployment (W' = W * gamma / sqrt(var + eps), "
                    "b' = (b - mean) * gamma / sqrt(var + eps) + beta).",
                )
            )
    return out


STATIC_CHECKS = (
    never_updated,
    invalid_running_var,
    bias_before_batch_norm,
    affine_before_renormalization,
    keras_momentum,
    keras_eps,
    frozen_but_learning,
    gamma_extremes,
    folding_opportunities,
)
