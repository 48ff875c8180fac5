"""Saves killed by SIGKILL midway (issue 10, item 3): the next save of the same target removes the temporary
file the dead writer left, never the file of a writer still running, and reports leftovers it cannot
attribute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import normlab as nl
import normlab.checkpoint
from helpers.training import assert_same_state, bn_mlp

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="SIGKILL and pid liveness checks are POSIX-only"
)

# A writer that stops halfway through the file and waits there, to be killed.
WRITER = """
import sys, time
import normlab as nl
import normlab.checkpoint as checkpoint
from helpers.training import bn_mlp

def half_then_wait(file, data):
    file.write(data[: len(data) // 2])
    file.flush()
    time.sleep(120)

checkpoint._write_bytes = half_then_wait
nl.save(bn_mlp(seed=3), sys.argv[1])
"""
ROOT = Path(__file__).resolve().parents[2]


def _start_writer(target: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}")
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=env)


def _temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def _wait_for_half_written_temporary(proc: subprocess.Popen, target: Path) -> Path:
    deadline = time.monotonic() + 120  # the child imports normlab (numba) first
    while time.monotonic() < deadline:
        found = [p for p in _temporaries(target) if f".{proc.pid}." in p.name]
        if found and found[0].stat().st_size > 0:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the writer exited early with code {proc.returncode}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the writer never started writing")


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_the_next_save_removes_what_a_killed_save_left(tmp_path) -> None:
    target = tmp_path / "model.safetensors"
    first = nl.save(bn_mlp(seed=1), target)
    proc = _start_writer(target)
    leftover = _wait_for_half_written_temporary(proc, target)
    _kill(proc)
    assert leftover.exists()  # what the killed save left
    assert_same_state(nl.load(target), bn_mlp(seed=1))  # the previous file is intact

    second = bn_mlp(seed=2)
    nl.save(second, first)
    assert _temporaries(target) == []
    assert_same_state(nl.load(target), second)


def test_a_live_writers_temporary_file_is_left_alone(tmp_path) -> None:
    target = tmp_path / "model.safetensors"
    proc = _start_writer(target)
    try:
        theirs = _wait_for_half_written_temporary(proc, target)
        nl.save(bn_mlp(seed=2), target)  # a concurrent save of the same target
        assert theirs.exists() and _temporaries(target) == [theirs]
    finally:
        _kill(proc)
    nl.save(bn_mlp(seed=2), target)  # now its writer is dead
    assert _temporaries(target) == []


def test_leftovers_that_cannot_be_attributed_are_reported_not_removed(tmp_path) -> None:
    target = tmp_path / "model.safetensors"
    legacy = tmp_path / ".model.safetensors.k2j4h1xz.tmp"  # normlab <= 0.x names: no host, no pid
    elsewhere = tmp_path / f".model.safetensors.otherhost.{os.getpid()}.abc.tmp"
    unrelated = tmp_path / ".other.safetensors.host.1.abc.tmp"
    for p in (legacy, elsewhere, unrelated):
        p.write_bytes(b"partial")
    with pytest.warns(UserWarning, match=r"\.model\.safetensors\.k2j4h1xz\.tmp.*interrupted save"):
        nl.save(bn_mlp(), target)
    assert legacy.exists() and elsewhere.exists() and unrelated.exists()


def test_a_dead_pid_on_this_host_is_removed_without_a_subprocess(tmp_path, monkeypatch) -> None:
    """The same rule checked directly: a file named for a pid that is not running is removed."""
    target = tmp_path / "m.safetensors"
    host = normlab.checkpoint._HOST
    dead = tmp_path / f".m.safetensors.{host}.999999999.abc.tmp"
    alive = tmp_path / f".m.safetensors.{host}.{os.getppid()}.abc.tmp"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    nl.save(bn_mlp(), target)
    assert not dead.exists() and alive.exists()
