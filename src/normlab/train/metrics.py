"""Metrics of ``fit``/``evaluate``: functions ``(outputs, targets) -> float`` and their sample-weighted means."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from normlab.backend import namespace
from normlab.nn.loss import CrossEntropyLoss
from normlab.nn.module import Module

Metric = Callable[[np.ndarray, np.ndarray], float]


def output_accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows of ``outputs`` (N, classes) whose largest value is at the class ``targets`` (N,)."""
    if isinstance(outputs, np.ndarray):
        return float(np.mean(np.argmax(outputs, axis=1) == targets))
    xp = namespace(outputs)  # on a device: one number comes back to the host
    hits = xp.argmax(outputs, axis=1) == xp.astype(targets, xp.int64)
    return float(
        xp.mean(xp.astype(hits, xp.float64 if outputs.dtype == xp.float64 else xp.float32))
    )


def resolve_metrics(metrics: Sequence[str | Metric] | None, loss: Module) -> dict[str, Metric]:
    if metrics is None:
        metrics = ["accuracy"] if isinstance(loss, CrossEntropyLoss) else []
    resolved: dict[str, Metric] = {}
    for m in metrics:
        if m == "accuracy":
            resolved["accuracy"] = output_accuracy
        elif callable(m):
            resolved[getattr(m, "__name__", "metric")] = m
        else:
            raise ValueError(
                f"unknown metric {m!r}: use 'accuracy' or a function (outputs, targets) -> float"
            )
    return resolved


def per_sample_loss(criterion: Module, value: Any, n: int) -> float:
    """The loss ``value`` a loss module returned, as a per-sample mean whatever its reduction."""
    if getattr(criterion, "reduction", "mean") == "sum":
        return float(value) / max(n, 1)
    if isinstance(value, np.ndarray | float | int | np.generic):
        return float(np.mean(value))
    return float(namespace(value).mean(value))  # a 0-d (or per-sample) array on a device


class Averages:
    """Sample-weighted running means of the loss and metrics over the batches of one pass."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float], n: int) -> None:
        for k, v in values.items():
            self.totals[k] = self.totals.get(k, 0.0) + v * n
        self.count += n

    def means(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: v / self.count for k, v in self.totals.items()}
