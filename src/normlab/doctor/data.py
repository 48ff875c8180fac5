"""Checks that run the model on a few batches: always on deep copies, so the model examined never changes.

Statistics gathered per layer with running statistics, in eval mode (what inference computes):

* per-sample channel means ``u[n, c]`` (the mean over the spatial positions of sample n): the samples are
  independent, the spatial positions of one sample are not, so the sampling noise of the batch mean is
  judged from the spread of ``u`` over samples;
* the pooled per-channel mean and biased variance over every value, and the values per channel per batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import array_api_compat
import numpy as np

from normlab.backend import no_grad, to_host
from normlab.doctor.report import DoctorError, Finding
from normlab.doctor.static import tracked_layers
from normlab.nn.lifecycle import recalibrate_batch_norm
from normlab.nn.module import Module
from normlab.nn.norm import _BatchNorm, _NormBase

# thresholds (documented in the table of normlab.doctor)
# BN003: beyond sampling noise (z-test, family-wise false-alarm rate over all judged channels) ...
STALE_ALPHA = 1e-3
# ... and far enough to matter: mean over channels of KL(data's N(mean, var) || N(running mean, var))
STALE_KL = 0.05
# BN003/BN010: with fewer samples the statistics are not judged (the KL estimate of a healthy MLP is
# 0.028 at 400 samples but 0.059 at 100: small samples inflate it)
MIN_SAMPLES = 256
MIN_VALUES = 32  # BN005: values per channel in a batch below this: noisy batch statistics
RECALIBRATION_BATCH = 256  # BN003: recalibration of the copy runs on batches of this size
COST_MARGIN = 0.01  # BN003/BN004: an accuracy cost (or changed predictions) of 1 point is an error
# BN010: var ~ running_var**2 fits at least twice as well as var ~ running_var, which is off by 2x
SQRT_FIT = 0.5
SQRT_MIN_ERROR = math.log(2.0)


@dataclass
class Batches:
    """The examined data: input batches and the labels of all their samples (or ``None``)."""

    inputs: list[np.ndarray]
    labels: np.ndarray | None

    @property
    def samples(self) -> int:
        return sum(len(x) for x in self.inputs)


def as_batches(batches: Any, labels: Any, batch_size: int) -> Batches:
    """Accept an array ``x`` (cut into batches of ``batch_size``), or an iterable of arrays or ``(x, y)``
    pairs; ``labels`` for all samples in order, else the pairs' ``y``.  Validates before anything runs."""
    if array_api_compat.is_array_api_obj(batches) and not isinstance(batches, np.generic):
        batches = to_host(batches)  # one array on a device: cut on the host
    if isinstance(batches, np.ndarray):
        if batches.ndim < 2:
            raise DoctorError(
                f"doctor: batches must be an array (N, ...) with at least 2 dims, got shape {batches.shape}"
            )
        items: Iterable[Any] = [
            batches[i : i + batch_size] for i in range(0, len(batches), batch_size)
        ]
    else:
        try:
            items = list(batches)
        except TypeError:
            raise DoctorError(
                "doctor: batches must be an array or an iterable of arrays or (x, y) pairs, got "
                f"{type(batches).__name__}"
            ) from None
    inputs, pair_labels = [], []
    for i, item in enumerate(items):
        x, y = (
            (item[0], item[1] if len(item) > 1 else None)
            if isinstance(item, (tuple, list))
            else (item, None)
        )
        x = to_host(x)  # batches on a device are examined on the host, as the model's copy is
        if x.ndim < 2 or len(x) == 0:
            raise DoctorError(
                f"doctor: batch {i} must be a non-empty array (N, ...), got shape {x.shape}"
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise DoctorError(f"doctor: batch {i} must hold floats, got dtype {x.dtype}")
        inputs.append(x)
        pair_labels.append(None if y is None else to_host(y))
    if not inputs:
        raise DoctorError("doctor: no batches were given")
    if labels is None and all(y is not None for y in pair_labels):
        labels = np.concatenate([y.reshape(-1) for y in pair_labels])
    if labels is not None:
        labels = to_host(labels)
        n = sum(len(x) for x in inputs)
        if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
            raise DoctorError(
                f"doctor: labels must be {n} integer class indices (one per sample), got dtype "
                f"{labels.dtype} and shape {labels.shape}"
            )
    return Batches(inputs, labels)


@dataclass
class LayerStats:
    """What the eval-mode pass saw at the input of one layer with running statistics."""

    sample_means: list[np.ndarray] = field(default_factory=list)  # (n, C) per batch
    total: np.ndarray | None = None  # per-channel sum
    total_sq: np.ndarray | None = None  # per-channel sum of squares
    count: int = 0  # values per channel, all batches
    batch_counts: list[int] = field(default_factory=list)  # values per channel, each batch
    spatial: int = 1

    def add(self, x: np.ndarray) -> None:
        x64 = np.asarray(x, np.float64)
        c = x64.shape[1]
        per_sample = x64.reshape(len(x64), c, -1)  # (N, C, spatial)
        self.spatial = per_sample.shape[2]
        self.sample_means.append(per_sample.mean(axis=2))
        s, s2 = per_sample.sum(axis=(0, 2)), (per_sample**2).sum(axis=(0, 2))
        self.total = s if self.total is None else self.total + s
        self.total_sq = s2 if self.total_sq is None else self.total_sq + s2
        n = per_sample.shape[0] * per_sample.shape[2]
        self.count += n
        self.batch_counts.append(n)

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.count
        return mean, np.maximum(self.total_sq / self.count - mean**2, 0.0)


def _forward_capturing(
    model: Module, data: Batches
) -> tuple[list[np.ndarray], dict[str, LayerStats]]:
    """Outputs of ``model`` (a copy, left as it is given) on every batch, and the input statistics of each
    layer with running statistics.  The copy's layers are wrapped (instance attributes), never the model's."""
    stats: dict[str, LayerStats] = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, _NormBase):
            continue
        stats[name] = LayerStats()
        for method in ("forward", "forward_activation"):
            original = getattr(layer, method, None)
            if original is None:
                continue

            def wrapped(
                x: Any, *args: Any, _orig: Any = original, _s: LayerStats = stats[name]
            ) -> Any:
                y = _orig(x, *args)  # the layer validates the input first
                _s.add(x)
                return y

            object.__setattr__(layer, method, wrapped)
    outputs = []
    with no_grad():
        for i, x in enumerate(data.inputs):
            try:
                outputs.append(np.asarray(model(x)))
            except (ValueError, TypeError, IndexError) as e:
                raise DoctorError(
                    f"doctor: batch {i} of shape {x.shape} does not fit the model: {e}"
                ) from None
    return outputs, stats


def _predictions(outputs: list[np.ndarray]) -> np.ndarray:
    out = np.concatenate(outputs, axis=0)
    return out.argmax(axis=1) if out.ndim == 2 and out.shape[1] > 1 else out.reshape(len(out), -1)


def _accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(pred.reshape(-1) == labels)) if pred.ndim == 1 else float("nan")


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    if a.ndim == 1:
        return float(np.mean(a == b))
    return float(np.mean(np.all(np.isclose(a, b, rtol=1e-3, atol=1e-5), axis=1)))


def _run(model: Module, data: Batches, training: bool) -> list[np.ndarray]:
    """Outputs of a deep copy of ``model`` in eval or training mode (frozen layers stay frozen)."""
    twin = copy.deepcopy(model)
    twin.train(training)
    outputs = []
    with no_grad():
        for x in data.inputs:
            outputs.append(np.asarray(twin(x)))
    return outputs


class DataExamination:
    """The eval-mode pass over the data, done once, and the data checks that read it."""

    def __init__(self, model: Module, data: Batches) -> None:
        self.model, self.data = model, data
        twin = copy.deepcopy(model)
        twin.eval()
        outputs, self.stats = _forward_capturing(twin, data)
        self.eval_pred = _predictions(outputs)
        self.layers = dict(tracked_layers(model))
        self.notes: list[str] = []

    # ----------------------------------------------------------------------------------- BN005
    def too_few_values(self, batch_statistics: list[str]) -> list[Finding]:
        """BN005 for the layers in ``batch_statistics`` (those that normalize with the batch's statistics
        in the mode examined)."""
        out = []
        for name in batch_statistics:
            s = self.stats.get(name)
            if s is None or not s.batch_counts:
                continue
            typical = int(np.median(s.batch_counts))
            if typical >= MIN_VALUES:
                continue
            needed = math.ceil(MIN_VALUES / s.spatial)
            out.append(
                Finding(
                    "BN005",
                    "warning",
                    name,
                    f"batch statistics come from {typical} value(s) per channel (batch x spatial "
                    f"positions), fewer than {MIN_VALUES}: mean and variance are too noisy"
                    + (" (1 value: training raises)" if typical < 2 else "")
                    + ".",
                    {
                        "values_per_channel": typical,
                        "batch_size": typical // s.spatial,
                        "spatial_positions": s.spatial,
                        "threshold": MIN_VALUES,
                        "batch_size_needed": needed,
                    },
                    f"Use batches of at least {needed} samples, or GroupNorm/LayerNorm, or "
                    "normlab.freeze_batch_norm for fine-tuning with small batches.",
                )
            )
        return out

    # ----------------------------------------------------------------------------------- BN003, BN010
    def stale_statistics(self, skip: set[str]) -> list[Finding]:
        """BN003 (running statistics that do not describe the data) and BN010 (running_var that holds
        standard deviations), for the layers not in ``skip``."""
        judged = {
            n: s
            for n, s in self.stats.items()
            if n in self.layers
            and n not in skip
            and s.count
            and sum(len(u) for u in s.sample_means) >= MIN_SAMPLES
        }
        if self.data.samples < MIN_SAMPLES:
            self.notes.append(
                f"stale statistics (BN003/BN010) not judged: {self.data.samples} samples, fewer than "
                f"{MIN_SAMPLES}"
            )
        channels = sum(self.layers[n].num_features for n in judged) or 1
        z_crit = NormalDist().inv_cdf(1.0 - STALE_ALPHA / (2 * channels))
        out: list[Finding] = []
        stale: list[str] = []
        upstream_flagged = False
        for name, s in self.stats.items():
            if name not in self.layers:
                continue
            if name in skip:
                upstream_flagged = True
            if name not in judged:
                continue
            layer = self.layers[name]
            rm = np.asarray(layer.running_mean, np.float64)
            rv = np.asarray(layer.running_var, np.float64)
            u = np.concatenate(s.sample_means)
            mean, var = s.mean_var()
            n = len(u)
            se = np.maximum(u.std(axis=0, ddof=1), 1e-12) / math.sqrt(n)
            z = np.abs(u.mean(axis=0) - rm) / se
            shift = np.abs(mean - rm) / np.sqrt(rv + layer.eps)
            ratio = (var + layer.eps) / (rv + layer.eps)
            if upstream_flagged:  # its input is wrong because of an earlier layer: judged there
                continue
            if self._holds_std(var, rv, layer.eps):
                upstream_flagged = True
                out.append(
                    Finding(
                        "BN010",
                        "error",
                        name,
                        "running_var looks like it holds standard deviations, not variances: the data's "
                        "variance matches running_var squared, not running_var (a convention mismatch "
                        "in an import).",
                        {
                            "median_log_error_as_var": round(
                                self._log_errors(var, rv, layer.eps)[0], 4
                            ),
                            "median_log_error_as_std": round(
                                self._log_errors(var, rv, layer.eps)[1], 4
                            ),
                        },
                        "Square the imported values (running_var = std**2) or re-import with the source's "
                        "variance, then check eval accuracy.",
                    )
                )
                continue
            # the distance of the data's per-channel normal from the running one, averaged over channels
            kl = 0.5 * (ratio + (mean - rm) ** 2 / (rv + layer.eps) - 1.0 - np.log(ratio))
            z_var = np.abs(np.log(ratio)) / math.sqrt(2.0 / (n - 1))
            significant = np.maximum(z, z_var) > z_crit
            if float(kl.mean()) <= STALE_KL or not significant.any():
                continue
            c = int(np.argmax(np.where(significant, kl, -1.0)))
            stale.append(name)
            out.append(
                Finding(
                    "BN003",
                    "warning",
                    name,
                    "running statistics do not describe the data: the data's per-channel mean and "
                    f"variance are {float(kl.mean()):.3f} nats (mean KL divergence over channels) from "
                    f"the running ones, beyond sampling noise in {int(significant.sum())} channel(s).",
                    {
                        "samples": n,
                        "mean_kl": round(float(kl.mean()), 4),
                        "kl_threshold": STALE_KL,
                        "z_threshold": round(z_crit, 3),
                        "significant_channels": int(significant.sum()),
                        "worst_channel": c,
                        "z_mean": round(float(z[c]), 2),
                        "z_var": round(float(z_var[c]), 2),
                        "mean_shift_in_running_std": round(float(shift[c]), 3),
                        "var_ratio": round(float(ratio[c]), 3),
                    },
                    "Recompute them with normlab.recalibrate_batch_norm(model, training_batches) after the "
                    "last weight change, in eval mode, and never run inference in training mode.",
                )
            )
        if stale and self.data.labels is not None:
            self._recovery(out)
        return out

    def _log_errors(self, var: np.ndarray, rv: np.ndarray, eps: float) -> tuple[float, float]:
        ok = (rv > 0) & np.isfinite(rv) & (var > 0)
        lv, lr = np.log(var[ok] + eps), np.log(rv[ok] + eps)
        as_var = float(np.median(np.abs(lv - lr))) if ok.any() else 0.0
        as_std = float(np.median(np.abs(lv - np.log(rv[ok] ** 2 + eps)))) if ok.any() else 0.0
        return as_var, as_std

    def _holds_std(self, var: np.ndarray, rv: np.ndarray, eps: float) -> bool:
        as_var, as_std = self._log_errors(var, rv, eps)
        return as_var > SQRT_MIN_ERROR and as_std < SQRT_FIT * as_var

    def _recovery(self, findings: list[Finding]) -> None:
        """Accuracy now and after recalibrating a copy on the given batches: what recalibration recovers."""
        assert self.data.labels is not None
        now = _accuracy(self.eval_pred, self.data.labels)
        twin = copy.deepcopy(self.model)
        # regrouped into batches of RECALIBRATION_BATCH samples: the given ones may be too small for batch norm
        x = np.concatenate(self.data.inputs)
        chunks = [x[i : i + RECALIBRATION_BATCH] for i in range(0, len(x), RECALIBRATION_BATCH)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:
            chunks = chunks[:-1]
        recalibrate_batch_norm(twin, chunks)
        after = _accuracy(_predictions(_run(twin, self.data, training=False)), self.data.labels)
        for i, f in enumerate(findings):
            if f.code != "BN003":
                continue
            evidence = f.evidence | {
                "accuracy": round(now, 4),
                "accuracy_recalibrated": round(after, 4),
            }
            severity = "error" if after - now >= COST_MARGIN else f.severity
            findings[i] = Finding(f.code, severity, f.layer, f.message, evidence, f.fix)

    # ----------------------------------------------------------------------------------- BN004
    def training_mode_cost(self) -> dict[str, Any]:
        """Evidence for BN004: predictions in the model's current (training) mode against eval mode."""
        try:
            train_pred = _predictions(_run(self.model, self.data, training=True))
        except ValueError as e:  # e.g. batch norm on one value per channel
            return {"training_mode_error": " ".join(str(e).split()), "cost": 1.0}
        evidence: dict[str, Any] = {
            "predictions_changed": round(1.0 - _agreement(train_pred, self.eval_pred), 4)
        }
        cost = evidence["predictions_changed"]
        if self.data.labels is not None and self.eval_pred.ndim == 1:
            eval_acc = _accuracy(self.eval_pred, self.data.labels)
            train_acc = _accuracy(train_pred, self.data.labels)
            evidence |= {
                "accuracy_eval_mode": round(eval_acc, 4),
                "accuracy_training_mode": round(train_acc, 4),
            }
            cost = eval_acc - train_acc
        evidence["cost"] = round(cost, 4)
        return evidence


def uses_batch_statistics(layer: _NormBase) -> bool:
    return isinstance(layer, _BatchNorm) and (
        (layer.training and not layer.frozen) or not layer.track_running_stats
    )
