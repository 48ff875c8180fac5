"""``normlab train CONFIG --procs K``: start ``mpiexec -n K`` on ``python -m normlab train CONFIG ...``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from normlab.distributed.world import DistributedError

INSTALL = "pip install 'normlab[distributed]'  (mpi4py and the mpich wheel)"


def find_mpiexec() -> str | None:
    """``mpiexec`` next to this Python (the mpich wheel puts it there), else on ``PATH``."""
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def check_mpi_available() -> str:
    """The mpiexec to use; :class:`DistributedError` with the install instruction if MPI is missing."""
    try:
        found = importlib.util.find_spec("mpi4py") is not None
    except (ImportError, ValueError):  # a broken or blocked mpi4py
        found = False
    if not found:
        raise DistributedError(
            f"--procs needs mpi4py, which is not importable; install it: {INSTALL}"
        )
    exe = find_mpiexec()
    if exe is None:
        raise DistributedError(
            f"--procs needs mpiexec, found neither next to {sys.executable} nor on PATH; install: {INSTALL}"
        )
    return exe


def train_command(args: argparse.Namespace, mpiexec: str, out: Path) -> list[str]:
    """The mpiexec command line for ``args`` (``--procs`` replaced by the ranks' own options)."""
    if isinstance(args.procs, bool) or not isinstance(args.procs, int) or args.procs < 1:
        raise ValueError(f"normlab train: --procs must be a positive integer, got {args.procs!r}")
    cmd = [mpiexec, "-n", str(args.procs)]
    if args.hostfile:
        if not Path(args.hostfile).is_file():
            raise ValueError(f"normlab train: --hostfile {args.hostfile}: no such file")
        cmd += ["-f", str(args.hostfile)]
    cmd += [sys.executable, "-m", "normlab", "train", str(args.config), "--out", str(out)]
    if args.resume:
        cmd += ["--resume", str(args.resume)]
    if args.json:
        cmd.append("--json")
    if getattr(args, "device", "cpu") != "cpu":
        cmd += ["--device", str(args.device)]
    return cmd


def launch_train(args: argparse.Namespace, out: Path) -> int:
    """Run the ranks, all writing to the run directory ``out``, and return mpiexec's exit status (non-zero
    if any rank failed)."""
    if args.hostfile and args.procs is None:
        raise ValueError("normlab train: --hostfile needs --procs")
    mpiexec = check_mpi_available()
    cmd = train_command(args, mpiexec, out)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # normlab importable in the ranks as here
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return subprocess.run(cmd, env=env, check=False).returncode
