"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--repeat N] [--markdown PATH]``.

For every row the implementations (normlab, PyTorch CPU and, for the normalization rows, naive NumPy) run
in this one process,
interleaved: each repetition times one call of each, in an order that rotates from one repetition to the
next, so a slow spell of a shared machine hits all three alike.  Each timed call follows an untimed call of
the same implementation, as in a training loop where the thread pool is awake and the parameters are in
cache; with ``--wait-idle`` each pair starts only once no other task runs on the machine.  The table
reports medians, the ratios torch/normlab and naive/normlab (above 1: normlab is faster), and normlab's
achieved bandwidth (bytes of the minimal algorithm / median time) against a memory copy measured in the same
run.

PyTorch runs with as many threads as numba (``torch.set_num_threads(numba.get_num_threads())``), float32,
the same shapes and training-mode forward + backward (the normalization rows) or the same training epoch
(the epoch rows, whose ``check`` first verifies, untimed, that both reach the same loss).  A short pause before each pair lets the previous
implementation's OpenMP threads stop spinning (PyTorch and numba each bring their own pool).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks.registry import IMPLEMENTATIONS, Case, all_cases

COPY_BYTES = 64 * 2**20


@dataclass
class Row:
    case: Case
    median_s: dict[str, float]  # implementation -> median seconds
    check: str = ""  # the case's verification report, if it has one

    def ratio(self, other: str) -> float | None:
        if other not in self.median_s or "normlab" not in self.median_s:
            return None
        return self.median_s[other] / self.median_s["normlab"]

    def gbps(self) -> float | None:
        if not self.case.bytes_moved or "normlab" not in self.median_s:
            return None
        return self.case.bytes_moved / self.median_s["normlab"] / 1e9


def _others_running() -> int:
    """Runnable tasks on the machine besides this one (Linux /proc/stat; 0 where unknown)."""
    try:
        with open("/proc/stat") as f:
            line = next(line for line in f if line.startswith("procs_running"))
        return max(0, int(line.split()[1]) - 1)
    except (OSError, StopIteration, ValueError):
        return 0


class Pacer:
    """Before each timed call: wait (up to ``wait_idle_s``) until no other task is running, then pause
    ``settle_s`` so the previous implementation's OpenMP threads stop spinning.  Counts idle starts."""

    def __init__(self, settle_s: float, wait_idle_s: float) -> None:
        self.settle_s, self.wait_idle_s = settle_s, wait_idle_s
        self.calls = self.idle = 0

    def ready(self) -> None:
        deadline = time.perf_counter() + self.wait_idle_s
        while self.wait_idle_s and _others_running() and time.perf_counter() < deadline:
            time.sleep(0.005)
        if self.settle_s:
            time.sleep(self.settle_s)
        self.calls += 1
        self.idle += _others_running() == 0


def measure(
    fns: dict[str, Callable[[], object]], repeat: int, warmup: int, pacer: Pacer
) -> dict[str, float]:
    """Median seconds per implementation, timed round-robin with a rotating order."""
    names = [n for n in IMPLEMENTATIONS if n in fns] or list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeat):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            pacer.ready()
            fns[
                name
            ]()  # untimed: wakes this implementation's thread pool and caches, as in a training loop
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(ts) for n, ts in times.items()}


def copy_bandwidth(repeat: int, pacer: Pacer) -> dict[str, float]:
    """GB/s (bytes read + written) of copying a 64 MiB float32 array: NumPy (one thread) and numba (all),
    timed like the rows (paced, a warm call before each timed one)."""
    import numba

    @numba.njit(parallel=True, cache=False)
    def parallel_copy(src, dst):
        for i in numba.prange(src.shape[0]):
            dst[i] = src[i]

    src = np.ones(COPY_BYTES // 4, dtype=np.float32)
    dst = np.empty_like(src)
    fns = {"numpy": lambda: np.copyto(dst, src), "numba": lambda: parallel_copy(src, dst)}
    return {name: 2 * COPY_BYTES / s / 1e9 for name, s in measure(fns, repeat, 1, pacer).items()}


def settle_allocator() -> None:
    """Allocate and free one 30 MiB block first.

    glibc serves a large allocation with a fresh mmap (page faults, zeroed pages) until a freed mmap'd block
    raises its threshold, up to 32 MiB; a training process reaches that state within a step.  Doing it here
    makes every row's time independent of the rows before it, for NumPy and PyTorch alike (both allocate
    through malloc).  Arrays above 32 MiB (the (65536, 256) rows) are always fresh mmaps, for both.
    """
    block = np.empty(30 * 2**20, dtype=np.uint8)
    block.fill(0)
    del block


def machine() -> dict[str, str]:
    import numba
    import torch

    from normlab import kernels

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "threads": (
            f"numba {numba.get_num_threads()} ({numba.threading_layer()} layer), "
            f"torch {torch.get_num_threads()}"
        ),
        "versions": (
            f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
            f"torch {torch.__version__}"
        ),
        "normlab ops": kernels.describe(),
    }


def _fmt_ms(s: float | None) -> str:
    return "—" if s is None else f"{s * 1e3:.3f}"


def _fmt_x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


COLUMNS = (
    "row",
    "normlab ms",
    "torch ms",
    "naive ms",
    "torch/normlab",
    "naive/normlab",
    "GB/s",
    "% copy",
)


def table_rows(rows: list[Row], copy_gbps: float) -> list[list[str]]:
    out = []
    for row in rows:
        gbps = row.gbps()
        out.append(
            [
                row.case.name,
                _fmt_ms(row.median_s.get("normlab")),
                _fmt_ms(row.median_s.get("torch")),
                _fmt_ms(row.median_s.get("naive")),
                _fmt_x(row.ratio("torch")),
                _fmt_x(row.ratio("naive")),
                "—" if gbps is None else f"{gbps:.1f}",
                "—" if gbps is None else f"{100 * gbps / copy_gbps:.0f}%",
            ]
        )
    return out


def markdown(
    rows: list[Row], info: dict[str, str], copy: dict[str, float], args: argparse.Namespace
) -> str:
    lines = [f"- **{k}**: {v}" for k, v in info.items()]
    lines.append(
        f"- **memory copy** (64 MiB, read + write): numba {copy['numba']:.1f} GB/s, "
        f"NumPy {copy['numpy']:.1f} GB/s"
    )
    lines.append(
        f"- **method**: {args.repeat} interleaved repetitions, medians, {args.warmup} warm-up calls, "
        f"{args.settle_ms} ms pause, then one untimed and one timed call; {info.get('idle', '')}; "
        f"load average {info.get('load', '?')}"
    )
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * 7) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows, copy["numba"])]
    checks = [row.check for row in rows if row.check]
    if checks:
        lines += ["", "Checks (untimed, before each row):", ""] + [f"- {c}" for c in checks]
    return "\n".join(lines) + "\n"


def print_table(rows: list[Row], copy_gbps: float) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        print("  ".join(COLUMNS))
        for cells in table_rows(rows, copy_gbps):
            print("  ".join(cells))
        return
    table = Table(
        title="training forward + backward (epoch rows: one epoch), float32: medians (ratios > 1: normlab faster)"
    )
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="left" if i == 0 else "right")
    for cells in table_rows(rows, copy_gbps):
        table.add_row(*cells)
    Console(width=max(130, Console().width)).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 repetitions, 1 warm-up call (a smoke run)"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed repetitions per row (default 21)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3)")
    parser.add_argument("--settle-ms", type=float, default=2.0, help="pause before each timed call")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on a shared machine: before each timed call wait up to this long for no other task to run",
    )
    parser.add_argument(
        "--only", default="", help="run only rows whose name or group contains this"
    )
    parser.add_argument(
        "--markdown", metavar="PATH", help="also write the table as markdown to PATH"
    )
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (5 if args.quick else 21)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)

    import numba
    import torch

    torch.set_num_threads(numba.get_num_threads())
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    settle_allocator()
    pacer = Pacer(args.settle_ms / 1e3, args.wait_idle)
    copy = copy_bandwidth(max(5, args.repeat // 2), pacer)
    rows = []
    for case in all_cases(args.quick):
        if args.only and args.only not in case.name and args.only not in case.group:
            continue
        print(f"  {case.name} ...", file=sys.stderr, flush=True)
        check = case.check() if case.check is not None else ""
        if check:
            print(f"    check: {check}", file=sys.stderr, flush=True)
        rows.append(Row(case, measure(case.setup(), args.repeat, args.warmup, pacer), check))
    info = machine()
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info["load"] = (
        f"{load_start:.2f} at start, {load_end:.2f} at end (1-minute; the machine has 2 cores)"
    )
    info["idle"] = f"{pacer.idle} of {pacer.calls} timed calls started with no other task running"
    for k, v in info.items():
        print(f"{k}: {v}")
    print(f"memory copy 64 MiB: numba {copy['numba']:.1f} GB/s, NumPy {copy['numpy']:.1f} GB/s")
    print_table(rows, copy["numba"])
    for row in rows:
        if row.check:
            print(f"check: {row.check}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows, info, copy, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
