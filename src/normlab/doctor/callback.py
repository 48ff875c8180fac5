"""The doctor during training: ``fit(..., callbacks=[DoctorCallback()])`` (or ``fit(..., doctor=True)``).

It runs the cheap checks when the first epoch begins and after every epoch: the static checks, too few values
per channel (BN005, from one training batch) and frozen batch norm whose parameters or statistics changed
during the epoch (BN011).  Each finding code is warned about once per run (``DoctorWarning``); every finding
is kept in ``findings``.  Not checked in training: the mode (training mode is right here) and stale
statistics (they are being estimated).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.callbacks import Callback
from normlab.doctor.core import examine
from normlab.doctor.report import Finding, severity_rank
from normlab.doctor.static import batch_norm_layers

if TYPE_CHECKING:
    from normlab.callbacks import FitRun


class DoctorWarning(UserWarning):
    """A batch-norm mistake found by the doctor during training."""


def _sample_batch(batches: Any) -> np.ndarray | None:
    """One training batch, taken without iterating the source (iterating a DataLoader draws from its
    generator and would change the run): ``x[:batch_size]`` of array sources, the first item of lists."""
    x, size = getattr(batches, "x", None), getattr(batches, "batch_size", None)
    if isinstance(x, np.ndarray) and isinstance(size, int):
        return x[:size]
    if isinstance(batches, Sequence) and len(batches):
        first = batches[0]
        return np.asarray(first[0] if isinstance(first, (tuple, list)) else first)
    return None


class DoctorCallback(Callback):
    """Warn once per finding code at or above ``min_severity`` (default ``"warning"``)."""

    priority = 5  # before LR schedules and checkpoints: the model as the epoch left it

    def __init__(self, min_severity: str = "warning") -> None:
        severity_rank(min_severity)  # validates
        self.min_severity = min_severity
        self.findings: list[Finding] = []
        self.warned: set[str] = set()
        self._frozen: dict[str, dict[str, np.ndarray]] = {}
        self._checked_start = False

    def on_train_begin(self, run: FitRun) -> None:
        self.findings, self.warned, self._frozen = [], set(), {}
        self._checked_start = False

    def on_epoch_begin(self, run: FitRun, epoch: int) -> None:
        if not self._checked_start:  # the first epoch of this run: the model in training mode
            self._checked_start = True
            self._check(run, epoch)
        self._frozen = {
            name: {k: np.array(v, copy=True) for k, v in self._layer_state(m).items()}
            for name, m in batch_norm_layers(run.model)
            if m.frozen
        }

    def on_epoch_end(self, run: FitRun, epoch: int, logs: dict[str, float]) -> None:
        self._check(run, epoch)
        layers = dict(batch_norm_layers(run.model))
        for name, before in self._frozen.items():
            after = self._layer_state(layers[name])
            changed = {
                k: float(np.max(np.abs(after[k].astype(np.float64) - v)))
                for k, v in before.items()
                if not np.array_equal(after[k], v)
            }
            if changed:
                self._emit(
                    Finding(
                        "BN011",
                        "error",
                        name,
                        f"this frozen batch norm changed during epoch {epoch + 1}: "
                        f"{', '.join(sorted(changed))}.",
                        {"epoch": epoch + 1, "max_abs_change": changed},
                        "Freeze with normlab.freeze_batch_norm(model) and keep its parameters out of the "
                        "optimizer's updates (no code that sets them back to trainable).",
                    )
                )

    @staticmethod
    def _layer_state(m: Any) -> dict[str, np.ndarray]:
        state = {k: np.asarray(v) for k, v in m._buffers.items() if v is not None}
        state |= {k: p.data for k, p in m._parameters.items() if p is not None}
        return state

    def _check(self, run: FitRun, epoch: int) -> None:
        sample = _sample_batch(run.batches)
        report = examine(
            run.model, None if sample is None else [sample], inference=False, stale=False
        )
        for finding in report.findings:
            self._emit(finding)

    def _emit(self, finding: Finding) -> None:
        if severity_rank(finding.severity) < severity_rank(self.min_severity):
            return
        self.findings.append(finding)
        if finding.code not in self.warned:
            self.warned.add(finding.code)
            warnings.warn(
                f"normlab doctor: {finding.code} ({finding.severity}) in {finding.layer or 'the model'}: "
                f"{finding.message} Fix: {finding.fix}",
                DoctorWarning,
                stacklevel=2,
            )
