"""The lab: experiments that test what the seed tutorials and the literature claim about normalization.

``normlab lab list`` shows them; ``normlab lab run NAME`` runs one (``--quick`` for a short version).
Each experiment lives in its own module and registers itself on import.
"""

from normlab.lab import experiments as _experiments  # noqa: F401  (registers every experiment)
from normlab.lab.base import REGISTRY, Experiment, Result, RunContext, Table, register, verdict
from normlab.lab.runner import RunSummary, UnknownExperimentError, resolve_names, run_experiments

__all__ = [
    "REGISTRY",
    "Experiment",
    "Result",
    "RunContext",
    "RunSummary",
    "Table",
    "UnknownExperimentError",
    "register",
    "resolve_names",
    "run_experiments",
    "verdict",
]
