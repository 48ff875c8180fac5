"""Every registered experiment runs in its smallest mode and leaves complete, parseable artefacts."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import pytest

from normlab.lab import REGISTRY, run_experiments
from normlab.lab.base import DOES_NOT_HOLD, HOLDS, MODES

EXPECTED = [  # the twelve of EXPERIMENTS.md, in its order, then round two (issue 12)
    "init-scale",
    "bn-vs-plain",
    "bn-paper-mnist",
    "weight-scale",
    "batch-size",
    "learning-rate",
    "regularization",
    "cnn-trio",
    "adaline",
    "eval-pitfalls",
    "activations",
    "lenet-bn",
    "bn-order",
    "ics",
    "landscape",
    "renorm",
    "ghost-bn",
    "sync-bn",
    "accumulation",
]


def test_registered_experiments_are_those_of_the_design() -> None:
    assert list(REGISTRY) == EXPECTED


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_experiment_has_a_config_per_mode_and_states_its_claim(name: str) -> None:
    experiment = REGISTRY[name]
    assert set(experiment.configs) == set(MODES)
    assert experiment.claim and experiment.source
    # tiny and quick modes change sizes, never which hyperparameters exist
    assert set(experiment.configs["tiny"]) == set(experiment.configs["full"])
    assert set(experiment.configs["quick"]) == set(experiment.configs["full"])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_experiment_runs_in_tiny_mode_and_writes_its_artefacts(name: str, tmp_path: Path) -> None:
    summary = run_experiments([name], tmp_path, mode="tiny", seed=0)
    out = tmp_path / name
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and config["mode"] == "tiny"
    assert config["hyperparameters"] == json.loads(json.dumps(REGISTRY[name].configs["tiny"]))
    result = json.loads((out / "result.json").read_text())
    assert result["verdict"] in (HOLDS, DOES_NOT_HOLD)
    assert result["measured"]
    assert result["figures"], "every experiment draws at least one figure"
    for figure in result["figures"]:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csvs = sorted(out.glob("*.csv"))
    assert csvs, "raw metrics are written as CSV"
    for path in csvs:
        rows = list(csv.DictReader(path.open()))
        assert rows, f"{path.name} is empty"
        twin = json.loads(path.with_suffix(".json").read_text())
        assert len(twin) == len(rows)
    section = (out / "section.html").read_text()
    assert REGISTRY[name].claim.split(":")[0][:40] in section.replace("&#x27;", "'")
    report = summary.report.read_text()
    assert report.startswith("<!DOCTYPE html>") and "data:image/png;base64," in report
    assert "http://" not in report and "https://" not in report  # self-contained, nothing fetched


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    name = "bn-vs-plain"
    a = run_experiments([name], tmp_path / "a", mode="tiny", seed=3)
    b = run_experiments([name], tmp_path / "b", mode="tiny", seed=3)
    c = run_experiments([name], tmp_path / "c", mode="tiny", seed=4)
    metrics = [(s.out_dir / name / "per_step.csv").read_text() for s in (a, b, c)]
    assert metrics[0] == metrics[1]
    assert metrics[0] != metrics[2]


def test_a_run_of_several_experiments_has_an_index(tmp_path: Path) -> None:
    summary = run_experiments(["init-scale", "bn-vs-plain"], tmp_path, mode="tiny")
    report = summary.report.read_text()
    assert report.count("<section") == 2 and 'href="#init-scale"' in report
    # the index's summary paragraphs carry each run's own measured numbers
    summary = report.split("<h3>Summary</h3>")[1].split("<section")[0]
    for name in ("init-scale", "bn-vs-plain"):
        measured = json.loads((tmp_path / name / "result.json").read_text())["measured"]
        assert html.escape(measured) in summary
    run = json.loads((tmp_path / "run.json").read_text())
    assert [e["name"] for e in run["experiments"]] == ["init-scale", "bn-vs-plain"]
    assert run["seed"] == 0 and run["mode"] == "tiny" and "cpu" in run
