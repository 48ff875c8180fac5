"""What every experiment of the lab shares: the registry, the run context that writes artefacts, and the
result (claim, measurement, verdict) that the report shows.

An experiment is a function ``run(ctx) -> Result`` registered under a name with its claim and source.  It
reads its hyperparameters from ``ctx.config`` (the published setup in ``full`` mode, smaller in ``quick``,
smallest in ``tiny``, which the tests use), writes metrics and figures through ``ctx``, and decides its
verdict from the numbers it measured.  Nothing in a verdict is written in advance.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normlab.nn import Module

MODES = ("tiny", "quick", "full")
# what ``--data`` may name: MNIST (the bundled sample or the full download) for every experiment; the two
# downloaded color/clothing sets for the experiments that train on images (``Experiment.data``)
MNIST_DATA = ("sample", "full")
DATA_SOURCES = (*MNIST_DATA, "cifar10", "fashion-mnist")
HOLDS = "holds"
DOES_NOT_HOLD = "does not hold here"


@dataclass
class Table:
    """A small table for the report and the terminal: a title, column names and rows of cells."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Result:
    """What an experiment concludes.  ``measured`` states the numbers the verdict was computed from."""

    claim: str
    measured: str
    verdict: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # deviations from the published setup, caveats
    summary: dict[str, Any] = field(default_factory=dict)  # headline numbers, for --json and tests


def verdict(holds: bool) -> str:
    """The verdict string for a claim, from a condition computed on measured numbers."""
    return HOLDS if holds else DOES_NOT_HOLD


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str
    source: str
    configs: Mapping[str, Mapping[str, Any]]  # mode -> hyperparameters
    run: Callable[[RunContext], Result]
    data: tuple[str, ...] = MNIST_DATA  # the data sources it runs on (see DATA_SOURCES)
    # whether its models can train on a device (``normlab lab run --device``)
    on_device: bool = False


REGISTRY: dict[str, Experiment] = {}


def register(
    name: str,
    *,
    claim: str,
    source: str,
    configs: Mapping[str, Mapping[str, Any]],
    data: Sequence[str] = MNIST_DATA,
    on_device: bool = False,
) -> Callable[[Callable[[RunContext], Result]], Callable[[RunContext], Result]]:
    """Decorator: register ``run`` as the experiment ``name`` with a config per mode and the data sources it
    runs on; ``on_device`` if it trains its models where ``RunContext.place`` puts them and reads their
    outputs through the host (then ``normlab lab run --device cuda`` runs it on a GPU)."""
    missing = [m for m in MODES if m not in configs]
    if missing:
        raise ValueError(f"experiment {name!r} has no config for mode(s) {missing}")
    unknown = [d for d in data if d not in DATA_SOURCES]
    if unknown:
        raise ValueError(f"experiment {name!r}: unknown data source(s) {unknown}")

    def decorate(run: Callable[[RunContext], Result]) -> Callable[[RunContext], Result]:
        if name in REGISTRY:
            raise ValueError(f"experiment {name!r} is registered twice")
        REGISTRY[name] = Experiment(name, claim, source, configs, run, tuple(data), on_device)
        return run

    return decorate


def check_data(experiment: Experiment, data: str) -> None:
    """Refuse a data source ``experiment`` does not run on, naming the ones it does."""
    if data not in experiment.data:
        runs_on = ", ".join(repr(d) for d in experiment.data)
        raise ValueError(
            f"lab {experiment.name}: data must be one of {runs_on}, got {data!r}"
            + ("" if data in DATA_SOURCES else f" (known data sources: {', '.join(DATA_SOURCES)})")
        )


def check_device(experiment: Experiment, device: Any) -> None:
    """Refuse a device other than the CPU for an experiment that does not train on one, naming those that
    do."""
    if isinstance(device, str) and device == "cpu":
        return
    if not experiment.on_device:
        able = ", ".join(e.name for e in REGISTRY.values() if e.on_device)
        raise ValueError(
            f"lab {experiment.name}: runs on the CPU only (it is not registered with on_device=True: "
            f"its measurements may read NumPy arrays), got device {device!r}; these experiments run on "
            f"a device: {able}"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(_jsonable(value), indent=2, allow_nan=False) + "\n")


class RunContext:
    """Where an experiment writes: ``out_dir`` (created), its config, metrics and figures.

    ``config`` is the experiment's hyperparameters for ``mode``; ``data`` is ``"sample"`` (the bundled MNIST
    test split), ``"full"`` (the downloaded MNIST), or, for an experiment that trains on images,
    ``"cifar10"`` / ``"fashion-mnist"`` (downloaded); ``seed`` seeds every generator the experiment makes.
    """

    def __init__(
        self,
        experiment: Experiment,
        out_dir: Path,
        *,
        mode: str = "quick",
        seed: int = 0,
        data: str = "sample",
        progress: Callable[[str], None] | None = None,
        device: Any = "cpu",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_data(experiment, data)
        check_device(experiment, device)
        self.experiment = experiment
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.seed = seed
        self.data = data
        self.device = device
        self.config: dict[str, Any] = dict(experiment.configs[mode])
        self._progress = progress
        self.started = time.perf_counter()

    def rng(self, offset: int = 0) -> np.random.Generator:
        """A generator derived from the run's seed; ``offset`` separates independent streams."""
        return np.random.default_rng([self.seed, offset])

    def place(self, model: Module) -> Module:
        """``model`` moved to the run's device (``"cpu"``: left as it is); returns it."""
        return model if self.on_cpu else model.to(self.device)

    @property
    def on_cpu(self) -> bool:
        return isinstance(self.device, str) and self.device == "cpu"

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    def save_config(self, extra: Mapping[str, Any] | None = None) -> Path:
        config = {
            "experiment": self.experiment.name,
            "mode": self.mode,
            "seed": self.seed,
            "data": self.data,
            **({} if self.on_cpu else {"device": str(self.device)}),
            "hyperparameters": self.config,
        } | dict(extra or {})
        path = self.out_dir / "config.json"
        write_json(path, config)
        return path

    def save_metrics(self, name: str, records: Sequence[Mapping[str, Any]]) -> tuple[Path, Path]:
        """Write ``records`` (a list of flat dicts) as ``<name>.json`` and ``<name>.csv``."""
        json_path = self.out_dir / f"{name}.json"
        csv_path = self.out_dir / f"{name}.csv"
        write_json(json_path, list(records))
        columns: list[str] = []
        for r in records:
            columns += [k for k in r if k not in columns]
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in records:
                writer.writerow({k: _jsonable(v) for k, v in r.items()})
        return json_path, csv_path

    @staticmethod
    def figure(
        nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (6.4, 4.2), **kw: Any
    ):
        """A matplotlib figure and its axes, drawn with the Agg renderer and never through pyplot, so that
        running an experiment changes no global matplotlib state (a notebook's backend stays as it was)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=size, layout="constrained")
        axes = fig.subplots(nrows, ncols, **kw)
        return fig, axes

    def save_figure(self, fig: Any, name: str) -> Path:
        """Save a figure from :meth:`figure` as ``<name>.png``."""
        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        return path

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
