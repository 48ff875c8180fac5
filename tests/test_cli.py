"""The `normlab` command: the main job runs and exits 0."""

from __future__ import annotations

import subprocess
import sys

from normlab.cli import main


def test_demo_runs_in_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "normlab", "demo"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "running_mean" in result.stdout


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    assert main([]) == 2
    assert "usage: normlab" in capsys.readouterr().out
