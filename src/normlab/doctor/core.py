"""``doctor(model, batches, labels=...)``: run every check and guarantee that the model comes back as it was."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from normlab.doctor.data import COST_MARGIN, DataExamination, as_batches, uses_batch_statistics
from normlab.doctor.report import DoctorError, Finding, Report
from normlab.doctor.static import STATIC_CHECKS, normalization_layers, training_mode
from normlab.nn.host import host_copy
from normlab.nn.module import Module

DEFAULT_BATCH_SIZE = 64  # an array given as data is cut into batches of this size


def doctor(
    model: Module,
    batches: Any = None,
    *,
    labels: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Report:
    """Examine ``model`` (as used for inference) for batch-norm mistakes; returns a :class:`Report`.

    Args:
        model: any normlab ``Module``.
        batches: optional data: an array ``x`` (N, ...) cut into batches of ``batch_size``, or an iterable of
            arrays or ``(x, y)`` pairs (the batch sizes you use, which matter for checks in training mode).
        labels: optional integer classes for all samples, in order (taken from the pairs otherwise); with them
            the accuracy costs of BN003/BN004 are measured.
        batch_size: how an array ``batches`` is cut.

    Returns:
        The :class:`Report`: its ``findings`` (code, severity, layer, message, evidence, fix), most
            severe first; ``report.codes("warning")`` is the set of codes at or above a severity.

    Raises:
        DoctorError: data that does not fit the model (nothing changed either).

    Nothing of ``model`` changes: parameters, gradients, buffers, every module's mode and flags, the dropout
    generators and NumPy's global random state are identical before and after, also when a check raises.

    Examples:
        >>> import normlab as nl
        >>> from normlab import nn
        >>> model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.BatchNorm1d(8, momentum=0.99), nn.ReLU())
        >>> report = nl.doctor(model)  # left in training mode, and a Keras momentum
        >>> [(f.code, f.severity, f.layer) for f in report.findings if f.severity != "info"]
        [('BN004', 'warning', '1'), ('BN008', 'warning', '1')]
        >>> report.findings[0].fix
        'Call model.eval() before inference (normlab.predict and evaluate do it for you).'
    """
    return examine(model, batches, labels=labels, batch_size=batch_size, inference=True)


def examine(
    model: Module,
    batches: Any = None,
    *,
    labels: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    inference: bool = True,
    stale: bool = True,
) -> Report:
    """:func:`doctor`, also for a model in training (``inference=False``: no BN004, and the batches are the
    training batches; ``stale=False``: no BN003/BN010, whose running statistics are still being estimated)."""
    if not isinstance(model, Module):
        raise DoctorError(f"doctor: expected a normlab Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DoctorError(f"doctor: batch_size must be a positive int, got {batch_size!r}")
    if labels is not None and batches is None:
        raise DoctorError("doctor: labels were given without batches")
    data = None if batches is None else as_batches(batches, labels, batch_size)
    # a model on a device is examined as a NumPy copy (a NumPy model is itself)
    model = host_copy(model)
    snapshot = _Snapshot(model)
    try:
        return _run_checks(model, data, inference, stale)
    finally:
        snapshot.restore_if_changed()


def _run_checks(model: Module, data: Any, inference: bool, stale: bool) -> Report:
    report = Report(normalization_layers=[n for n, _ in normalization_layers(model)])
    if not report.normalization_layers:
        report.notes.append("the model has no normalization layers: nothing to check")
        return report
    for check in STATIC_CHECKS:
        report.findings += check(model)
    in_training = training_mode(model) if inference else []
    cost: dict[str, Any] = {}
    if data is not None:
        report.data_checked, report.labels_checked = True, data.labels is not None
        exam = DataExamination(model, data)
        layers = dict(model.named_modules())
        by_batch = [n for n in exam.stats if uses_batch_statistics(layers[n])]
        report.findings += exam.too_few_values(by_batch)
        skip = {f.layer for f in report.findings if f.code in ("BN001", "BN002")}
        if stale:
            report.findings += exam.stale_statistics(skip)
            report.notes += exam.notes
        if in_training:
            cost = exam.training_mode_cost()
    for name, _ in in_training:
        report.findings.append(_training_mode_finding(name, cost))
    report.sort()
    return report


def _training_mode_finding(name: str, cost: dict[str, Any]) -> Finding:
    measured = bool(cost)
    severe = measured and (cost["cost"] >= COST_MARGIN or "training_mode_error" in cost)
    evidence = dict(cost) if measured else {"training": True}
    return Finding(
        "BN004",
        "error" if severe else "warning",
        name,
        "this layer is in training mode: inference would normalize each batch with its own statistics "
        "(outputs depend on the batch) and overwrite the running statistics"
        + ("" if measured else " (no data given to measure the cost)")
        + ".",
        evidence,
        "Call model.eval() before inference (normlab.predict and evaluate do it for you).",
    )


class _Snapshot:
    """Everything of a model the doctor could possibly change, to compare and restore afterwards."""

    def __init__(self, model: Module) -> None:
        self.model = model
        self.state = model.state_dict()  # copies
        self.modules = [(m, m.training, dict(vars(m))) for m in model.modules()]
        self.params = [
            (p, p.requires_grad, None if p.grad is None else p.grad.copy())
            for p in model.parameters()
        ]
        self.generators = [
            (m, m.generator, copy.deepcopy(m.generator.bit_generator.state))
            for m in model.modules()
            if isinstance(getattr(m, "generator", None), np.random.Generator)
        ]
        # the legacy global state: user code may draw from it, so the doctor must leave it as it was
        self.global_rng = np.random.get_state()  # noqa: NPY002

    def restore_if_changed(self) -> None:
        current = self.model.state_dict()
        if current.keys() != self.state.keys() or any(
            not np.array_equal(current[k], v, equal_nan=v.dtype.kind == "f")
            for k, v in self.state.items()
        ):
            self.model.load_state_dict(self.state)
        for m, training, attributes in self.modules:
            m.training = training
            for (
                key,
                value,
            ) in attributes.items():  # flags (frozen, momentum, eps ...) and wrapped methods
                if (
                    key not in ("_parameters", "_buffers", "_modules")
                    and vars(m).get(key) is not value
                ):
                    object.__setattr__(m, key, value)
            for key in set(vars(m)) - set(attributes):
                object.__delattr__(m, key)
        for p, requires_grad, grad in self.params:
            p.requires_grad = requires_grad
            if not (grad is None and p.grad is None) and (
                grad is None or p.grad is None or not np.array_equal(grad, p.grad)
            ):
                p.grad = grad
        for m, generator, state in self.generators:
            if m.generator is not generator:
                object.__setattr__(m, "generator", generator)
            if generator.bit_generator.state != state:
                generator.bit_generator.state = state
        np.random.set_state(self.global_rng)  # noqa: NPY002


__all__ = ["DoctorError", "Report", "doctor", "examine"]
