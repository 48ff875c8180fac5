"""The `normlab` command: the main job end to end, JSON output, help, and error paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from normlab.cli import build_parser, main


def _run(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"NORMLAB_DEBUG": ""}
    return subprocess.run(
        [sys.executable, "-m", "normlab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def test_demo_end_to_end_in_a_subprocess(tmp_path: Path) -> None:
    """The README's first command: quick init-scale and bn-vs-plain, a table, the report's path."""
    result = _run("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "init-scale" in result.stdout and "bn-vs-plain" in result.stdout
    report_line = [line for line in result.stdout.splitlines() if line.startswith("Report: ")]
    assert report_line, result.stdout
    report = Path(report_line[0].split()[1])
    assert report.is_file() and report.parent.parent == tmp_path / "runs"
    html = report.read_text()
    assert html.count("<section") == 2 and "data:image/png;base64," in html
    assert result.stderr == ""  # piped: no progress bar, no warnings
    # piped: one line as each experiment starts and ends, in order, before the table
    lines = result.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.endswith(": started")]
    assert [lines[i] for i in starts] == ["[1/2] init-scale: started", "[2/2] bn-vs-plain: started"]
    ends = [
        i
        for i, line in enumerate(lines)
        if re.fullmatch(r"\[\d/2\] [\w-]+: [\w ]+ \(\d+\.\d s\)", line)
    ]
    assert [lines[i].split(":")[0] for i in ends] == ["[1/2] init-scale", "[2/2] bn-vs-plain"]
    assert starts[0] < ends[0] < starts[1] < ends[1] < lines.index(report_line[0])
    verdicts = {lines[i].split(": ")[1].rsplit(" (", 1)[0] for i in ends}
    assert verdicts <= {"holds", "does not hold here"}


def test_lab_run_json_output_parses(tmp_path: Path) -> None:
    result = _run(
        "lab", "run", "bn-vs-plain", "--tiny", "--json", "--out", str(tmp_path / "r"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [e["name"] for e in payload["experiments"]] == ["bn-vs-plain"]
    assert Path(payload["report"]).is_file()
    assert payload["experiments"][0]["verdict"] in ("holds", "does not hold here")
    # with --json the progress lines go to stderr, leaving stdout to the JSON
    verdict = payload["experiments"][0]["verdict"]
    assert result.stderr.splitlines()[0] == "[1/1] bn-vs-plain: started"
    assert result.stderr.splitlines()[1].startswith(f"[1/1] bn-vs-plain: {verdict} (")


def test_lab_list_json(capsys) -> None:
    assert main(["lab", "list", "--json"]) == 0
    names = [e["name"] for e in json.loads(capsys.readouterr().out)]
    assert "init-scale" in names and "bn-vs-plain" in names


def test_info_json(capsys) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"normlab", "numpy", "cpu", "data cache"} <= set(info)


def test_unknown_experiment_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run("lab", "run", "no-such-experiment", "--tiny", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown experiment(s): no-such-experiment" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    result = _run("lab", "run", "init-scale", "--bogus", cwd=tmp_path)
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


def _all_command_paths(parser, prefix=()):
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name, child in action.choices.items():
                yield (*prefix, name)
                yield from _all_command_paths(child, (*prefix, name))


@pytest.mark.parametrize("command", [(), *_all_command_paths(build_parser())], ids=" ".join)
def test_every_command_has_help(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: normlab" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    assert main([]) == 2
    assert "usage: normlab" in capsys.readouterr().out


def test_progress_lines_only_when_the_output_is_not_a_terminal(monkeypatch) -> None:
    import io

    from normlab import cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert (
        cli._experiment_lines(as_json=False) is None
    )  # a terminal keeps the status line and table
    lines = cli._experiment_lines(as_json=True)  # --json: lines on stderr, which is redirected here
    assert lines is not None and lines.stream is sys.stderr
    lines.start("init-scale", 1, 2)
    assert sys.stderr.getvalue() == "[1/2] init-scale: started\n"
    assert sys.stdout.getvalue() == ""
