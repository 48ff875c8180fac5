"""The batch-norm doctor: find the mistakes that make batch norm fail silently, without changing the model.

Examples:
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

| code | severity | what triggers it (threshold) | tests (tests/doctor/) |
| --- | --- | --- | --- |
| BN001 | error | running mean exactly 0 and variance exactly 1 in every channel (momentum != 0) while the model is trained (some normalization gamma != 1 or beta != 0, or another layer counted batches) | test_findings::test_lost_running_statistics (eval-pitfalls' parameters-only reload); silent: test_untrained_model_is_not_reported_as_never_updated |
| BN002 | error | running_var <= 0 or non-finite, or running_mean non-finite, in any channel | test_findings::test_static_check_fires[BN002-negative, -zero, -nan] |
| BN003 | warning; error if recalibrating a copy on the given batches gains >= 1 accuracy point | eval-mode data, per layer: mean over channels of KL(N(data mean, data var) ‖ N(running mean, running var)) > 0.05 nats, and some channel beyond sampling noise: max(z_mean, z_var) > z_crit, z_mean = (mean of per-sample channel means - running mean) / (their std / sqrt(N)), z_var = abs(log(var / running var)) / sqrt(2 / (N - 1)), z_crit Bonferroni for a family-wise alpha 1e-3 over all judged channels (4.41 for 96 channels); needs >= 256 samples (a note says so otherwise); layers reported by BN001/BN002/BN010, and layers after them, are not judged | test_findings::test_leaked_running_statistics (eval-pitfalls' training-mode pass over class-sorted batches: mean KL 0.14 and 0.37; healthy models <= 0.022) |
| BN004 | error if the training-mode pass on the given batches costs >= 1 accuracy point (or changes >= 1 % of predictions without labels, or raises); warning otherwise or without data | a non-frozen layer with running statistics in training mode (the model examined as used for inference; fit(doctor=True) skips it) | test_findings::test_training_mode_small_batches[1, 8], test_training_mode_class_sorted_batches, test_training_mode_without_data_and_one_large_batch |
| BN005 | warning | a batch norm that normalizes with batch statistics in the examined mode (training mode, or track_running_stats=False) sees fewer than 32 values per channel (batch size x spatial positions, median over the batches); the fix names ceil(32 / spatial) samples | test_findings::test_training_mode_small_batches, test_bn005_without_running_statistics_in_eval_mode; test_callback::test_small_training_batches |
| BN006 | info | Linear/Conv2d with a bias directly before batch norm (neighbours in a Sequential) | test_findings::test_bn006_bias_before_batch_norm |
| BN007 | info | affine batch norm directly followed (Dropout skipped) by BatchNorm/InstanceNorm over the same channels | test_findings::test_bn007_affine_before_renormalization |
| BN008 | warning | momentum >= 0.9 (normlab/PyTorch convention: the weight of the new batch) | test_findings::test_static_check_fires[BN008-keras-momentum]; test_callback::test_keras_momentum_is_warned_once; test_cli_doctor |
| BN009 | info | eps == 1e-3 (Keras's default) with running_var="unbiased" (PyTorch's convention) | test_findings::test_bn009_keras_eps_with_pytorch_variance |
| BN010 | error | eval-mode data: median over channels of abs(log var - log running_var) > log 2 while abs(log var - log running_var**2) is below half of it (running_var holds standard deviations) | test_findings::test_running_var_holds_standard_deviations |
| BN011 | error | a frozen layer (freeze_batch_norm) whose weight/bias require gradients or that is in training mode; weight/bias with requires_grad=False in a layer in training mode; in fit(doctor=True), a frozen layer whose parameters or statistics changed during an epoch | test_findings::test_static_check_fires[BN011-*], test_bn011_weights_frozen_by_hand_in_training_mode; test_callback::test_frozen_layer_that_still_learns |
| BN012 | warning | some channel with abs(gamma) < 1e-3 (any normalization layer) | test_findings::test_static_check_fires[BN012-dead-gamma] |
| BN013 | warning; error if non-finite | some channel with abs(gamma) > 100, or a non-finite gamma or beta | test_findings::test_static_check_fires[BN013-exploding-gamma, BN013-nan-beta] |
| BN014 | info | Linear/Conv2d directly followed by batch norm with running statistics: the pair folds into one layer for inference | test_findings::test_bn006_bias_before_batch_norm, test_bn007_* |

Healthy models, no finding at warning or above (with test data and labels): the BN MLP trained on the MNIST
sample (test_findings::test_healthy_*), the same recalibrated, the models of ``examples/*.toml`` trained from
their configs and the eval-pitfalls CNN (test_healthy_models), frozen batch norm done right
(test_findings::test_frozen_batch_norm_done_right_is_silent, test_callback::test_frozen_done_right_is_silent),
healthy training with fit(doctor=True) (test_callback::test_healthy_training_warns_nothing).
Invariance (parameters, gradients, buffers, modes, flags, dropout generators, NumPy's global state; also
with a check that mutates the model and raises, static or mid-way through the data checks):
test_invariance.
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
