"""What the doctor returns: findings (code, severity, layer, evidence, fix) gathered in a :class:`Report`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")  # in increasing order


class DoctorError(ValueError):
    """The doctor cannot examine what it was given (data that does not fit the model, bad arguments).
    The model was not changed."""


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error; a ``ValueError`` naming the choices otherwise."""
    if severity not in SEVERITIES:
        raise ValueError(f"doctor: severity must be one of {SEVERITIES}, got {severity!r}")
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Finding:
    """One problem in one layer.

    ``code`` is stable (``BN001`` ...; see :mod:`normlab.doctor` for the table), ``layer`` the module's name
    as in ``named_modules()`` and the state-dict keys (``""`` for the model itself), ``evidence`` the numbers
    that triggered it, ``fix`` one sentence.
    """

    code: str
    severity: str
    layer: str
    message: str
    evidence: dict[str, Any]
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "layer": self.layer,
            "message": self.message,
            "evidence": self.evidence,
            "fix": self.fix,
        }


@dataclass
class Report:
    """The findings of one examination, most severe first, and what was examined."""

    findings: list[Finding] = field(default_factory=list)
    normalization_layers: list[str] = field(default_factory=list)
    data_checked: bool = False
    labels_checked: bool = False
    notes: list[str] = field(default_factory=list)

    def codes(self, min_severity: str = "info") -> set[str]:
        """The codes of the findings at or above ``min_severity``."""
        return {f.code for f in self.at_or_above(min_severity)}

    def at_or_above(self, severity: str) -> list[Finding]:
        rank = severity_rank(severity)
        return [f for f in self.findings if severity_rank(f.severity) >= rank]

    def sort(self) -> None:
        self.findings.sort(key=lambda f: (-severity_rank(f.severity), f.code, f.layer))

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "normalization_layers": list(self.normalization_layers),
            "data_checked": self.data_checked,
            "labels_checked": self.labels_checked,
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = [
            f"{f.severity.upper():7} {f.code} {f.layer or '<model>'}: {f.message} Fix: {f.fix}"
            for f in self.findings
        ]
        lines += self.notes
        return "\n".join(lines) if lines else "no findings"
