"""What ``fit`` records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class History:
    """What ``fit`` recorded: one dict per epoch (``epoch``, ``loss``, metrics, ``val_*``, ``lr``) and one per
    training iteration (``epoch``, ``iteration``, ``loss``, metrics, ``lr``)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    iterations: list[dict[str, float]] = field(default_factory=list)
    seed: int | None = None
    # how fit stepped: {"accumulate": k, "mode": "ghost" | "exact"} (k = 1: one step per batch)
    accumulation: dict[str, Any] = field(default_factory=lambda: {"accumulate": 1, "mode": "ghost"})

    def __getitem__(self, key: str) -> list[float]:
        """The per-epoch values of ``key`` (``history["val_loss"]``)."""
        return [record[key] for record in self.epochs if key in record]

    @property
    def history(self) -> dict[str, list[float]]:
        """Keras's layout: metric name -> per-epoch values."""
        keys = dict.fromkeys(k for record in self.epochs for k in record if k != "epoch")
        return {k: self[k] for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "iterations": self.iterations,
            "seed": self.seed,
            "accumulation": self.accumulation,
        }
