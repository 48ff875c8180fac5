"""Run experiments into a run directory and write the report.

Layout of a run directory::

    run.json          what ran: experiments, mode, seed, data, versions, machine, wall times
    report.html       the self-contained report (an index first when several experiments ran)
    <experiment>/     config.json, metrics (.json and .csv), figures (.png), section.html, result.json
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from normlab import kernels, nn
from normlab.lab.base import (
    REGISTRY,
    Result,
    RunContext,
    check_data,
    check_device,
    write_json,
)
from normlab.lab.report import report_html, section_html, summary_paragraph
from normlab.system import machine_description


class UnknownExperimentError(KeyError):
    """An experiment name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class ExperimentRun:
    name: str
    result: Result
    wall_time: float
    out_dir: Path
    section: str  # the experiment's HTML section of the report


@dataclass
class RunSummary:
    out_dir: Path
    report: Path
    runs: list[ExperimentRun]
    wall_time: float


def resolve_names(names: Sequence[str]) -> list[str]:
    """Expand ``all`` and check every name, keeping registry order for ``all``."""
    if not names:
        raise UnknownExperimentError("no experiment named; see `normlab lab list`")
    if list(names) == ["all"]:
        return list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UnknownExperimentError(
            f"unknown experiment(s): {', '.join(unknown)}; known: {', '.join(REGISTRY)}"
        )
    return list(dict.fromkeys(names))


def default_out_dir(root: Path = Path("runs")) -> Path:
    return root / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_experiments(
    names: Sequence[str],
    out_dir: Path,
    *,
    mode: str = "quick",
    seed: int = 0,
    data: str = "sample",
    device: Any = "cpu",
    progress: Callable[[str], None] | None = None,
    title: str = "normlab lab report",
    on_start: Callable[[str, int, int], None] | None = None,
    on_end: Callable[[ExperimentRun, int, int], None] | None = None,
) -> RunSummary:
    """Run the named experiments (or ``["all"]``) and write their artefacts and the report under
    ``out_dir``.  Returns what ran, with each experiment's result and wall time.

    ``device`` is where the experiments (registered with ``on_device``) train their models: ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or an array library's device object.  ``progress`` receives the experiments'
    messages; ``on_start(name, i, total)`` is called as the ``i``-th (from 1) of ``total`` experiments
    starts, ``on_end(run, i, total)`` as it ends."""
    from normlab.version import __version__

    names = resolve_names(names)
    for name in names:  # every experiment must run on ``data`` and ``device`` before any starts
        check_data(REGISTRY[name], data)
        check_device(REGISTRY[name], device)
    if isinstance(device, str):  # CUDA where there is none: refused before any file is written
        nn.check_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # One BLAS thread: the experiments' matrices are small, and on a 2-core machine a second OpenBLAS
    # thread only adds spinning (init-scale --quick measured 13.8 s with one thread, 48.5 s with two).
    runs = []
    with kernels.training_threads():
        for i, name in enumerate(names, start=1):
            if on_start is not None:
                on_start(name, i, len(names))
            runs.append(_run_one(name, out_dir, mode, seed, data, device, progress))
            if on_end is not None:
                on_end(runs[-1], i, len(names))
    total = time.perf_counter() - started
    meta: dict[str, Any] = {
        "normlab": __version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "seed": seed,
        "data": data,
        **({} if isinstance(device, str) and device == "cpu" else {"device": str(device)}),
        "wall time": f"{total:.1f} s",
    } | machine_description()
    experiments = [
        {"name": r.name, "verdict": r.result.verdict, "wall_time_s": r.wall_time} for r in runs
    ]
    write_json(out_dir / "run.json", meta | {"experiments": experiments, "command": sys.argv})
    report = out_dir / "report.html"
    sections = [(r.name, r.result.verdict, r.wall_time, r.section) for r in runs]
    summaries = [summary_paragraph(r.name, r.result) for r in runs]
    report.write_text(report_html(title, meta, sections, summaries))
    return RunSummary(out_dir, report, runs, total)


def _run_one(
    name: str,
    out_dir: Path,
    mode: str,
    seed: int,
    data: str,
    device: Any,
    progress: Callable[[str], None] | None,
) -> ExperimentRun:
    """Run one experiment into ``out_dir/name``: its config, artefacts, ``result.json`` and section."""
    experiment = REGISTRY[name]
    ctx = RunContext(
        experiment,
        out_dir / name,
        mode=mode,
        seed=seed,
        data=data,
        progress=progress,
        device=device,
    )
    ctx.save_config({"claim": experiment.claim, "source": experiment.source})
    t0 = time.perf_counter()
    # a diverging network (part of what some experiments measure) overflows: record NaN, do not warn
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = experiment.run(ctx)
    wall = time.perf_counter() - t0
    section = section_html(name, experiment.source, result, ctx.config, wall)
    (ctx.out_dir / "section.html").write_text(section)
    write_json(
        ctx.out_dir / "result.json",
        {
            "experiment": name,
            "claim": result.claim,
            "verdict": result.verdict,
            "measured": result.measured,
            "summary": result.summary,
            "notes": result.notes,
            "wall_time_s": wall,
            "figures": [p.name for p in result.figures],
        },
    )
    return ExperimentRun(name, result, wall, ctx.out_dir, section)
