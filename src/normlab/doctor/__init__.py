"""The batch-norm doctor: find the mistakes that make batch norm fail silently, without changing the model.

>>> import numpy as np
>>> import normlab as nl
>>> from normlab import nn
>>> model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.BatchNorm1d(8, momentum=0.99), nn.ReLU())
>>> sorted(nl.doctor(model.eval()).codes("warning"))
['BN008']

``doctor(model)`` runs the static checks; ``doctor(model, batches, labels=...)`` also runs the model on the
batches (in eval mode, and in its current mode where that differs) to measure what the static checks cannot.
The model is examined as it would be used for **inference**: a layer in training mode is a finding (BN004).
Every forward pass runs on a deep copy; parameters, buffers, modes and random states of the model are
snapshotted first and restored if anything differs afterwards (tests prove they never differ, also when a
check raises).

Severities: ``error`` (wrong outputs or wrong training), ``warning`` (likely a mistake), ``info``
(redundant or an opportunity; a correctly trained model may have these).  "No finding" on a healthy model
means no finding at ``warning`` or above; the models of ``examples/`` and the lab have ``info`` findings
(their Linear layers keep a bias before batch norm, and the pairs fold).

| code | severity | what triggers it (threshold) | tested by (tests/doctor/) |
| --- | --- | --- | --- |
| BN001 | error | running mean exactly 0 and variance exactly 1 in every channel (momentum != 0) while the model is trained (some normalization gamma != 1 or beta != 0, or another layer counted batches) | test_findings.py::test_lost_running_statistics |
| BN002 | error | running_var <= 0 or non-finite, or running_mean non-finite, in any channel | test_findings.py::test_static_check_fires[BN002-*] |
| BN003 | warning; error if recalibrating on the given batches gains >= 1 accuracy point | eval-mode data: some channel with z > z_crit and mean shift > 0.25 running std, or batch/running variance ratio outside [1/2, 2]. z = (mean of per-sample channel means - running mean) / (their std / sqrt(N)); z_crit Bonferroni at family-wise alpha 1e-3 over all judged channels (4.8 for 160 channels); needs >= 16 samples; skipped for layers already reported by BN001/BN002/BN010 | test_findings.py::test_leaked_running_statistics |
| BN004 | error if the training-mode pass costs >= 1 accuracy point (or changes >= 1 % of predictions without labels, or raises); warning otherwise or without data | a non-frozen layer with running statistics in training mode | test_findings.py::test_training_mode_* |
| BN005 | warning | a layer that normalizes with batch statistics in the examined mode (training mode, or track_running_stats=False) sees fewer than 32 values per channel (batch size x spatial positions, median over batches); the fix gives ceil(32 / spatial) | test_findings.py::test_training_mode_small_batches, test_static_check_fires[BN005-*] |
| BN006 | info | Linear/Conv2d with a bias directly before batch norm (same Sequential) | test_findings.py::test_static_check_fires[BN006-*] |
| BN007 | info | affine batch norm directly followed (Dropout skipped) by BatchNorm/InstanceNorm over the same channels | test_findings.py::test_static_check_fires[BN007-*] |
| BN008 | warning | momentum >= 0.9 (normlab/PyTorch convention: weight of the new batch) | test_findings.py::test_static_check_fires[BN008-*] |
| BN009 | info | eps == 1e-3 (Keras's default) with running_var="unbiased" (PyTorch's convention) | test_findings.py::test_static_check_fires[BN009-*] |
| BN010 | error | eval-mode data: median over channels of abs(log var - log running_var) > log 2 while abs(log var - log running_var**2) is less than half of it (running_var holds standard deviations) | test_findings.py::test_running_var_holds_std |
| BN011 | error | frozen layer (freeze_batch_norm) with weight/bias requiring gradients or in training mode; or weight/bias with requires_grad=False in a layer in training mode; in fit(doctor=True), a frozen layer whose parameters or statistics changed during an epoch | test_findings.py::test_static_check_fires[BN011-*], test_callback.py |
| BN012 | warning | some channel with abs(gamma) < 1e-3 (any normalization layer) | test_findings.py::test_static_check_fires[BN012-*] |
| BN013 | warning; error if non-finite | some channel with abs(gamma) > 100, or a non-finite gamma or beta | test_findings.py::test_static_check_fires[BN013-*] |
| BN014 | info | Linear/Conv2d directly followed by batch norm with running statistics: the pair folds for inference | test_findings.py::test_static_check_fires[BN014-*] |

Healthy models (no finding at warning or above): the BN MLP trained on the MNIST sample, the same model
recalibrated, the models built from ``examples/*.toml`` and trained, and the eval-pitfalls CNN
(test_findings.py::test_healthy_*).  Invariance: test_invariance.py.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from normlab.doctor.callback import DoctorCallback, DoctorWarning
from normlab.doctor.core import doctor, examine
from normlab.doctor.report import SEVERITIES, DoctorError, Finding, Report
from normlab.nn.module import Module

__all__ = [
    "SEVERITIES",
    "DoctorCallback",
    "DoctorError",
    "DoctorWarning",
    "Finding",
    "Report",
    "doctor",
    "examine",
]


class _CallableModule(types.ModuleType):
    """``normlab.doctor`` is this package *and* callable: ``nl.doctor(model)`` is :func:`doctor`, while
    ``nl.doctor.Report``, ``nl.doctor.DoctorCallback`` ... stay reachable."""

    def __call__(
        self, model: Module, batches: Any = None, *, labels: Any = None, batch_size: int = 64
    ) -> Report:
        return doctor(model, batches, labels=labels, batch_size=batch_size)


sys.modules[__name__].__class__ = _CallableModule
