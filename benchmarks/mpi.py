"""Data-parallel training over MPI on this machine: time per step for K = 1 and 2 ranks, the share of the step
spent in collectives, SyncBatchNorm's overhead over local BatchNorm, and the bytes each rank sends per step.

Run: ``python -m benchmarks.mpi`` (it starts ``mpiexec -n 1`` and ``-n 2`` on itself).  The workload is one
training step (forward, loss, backward, gradient average, SGD) of the ``bn-vs-plain`` MLP 784 -> 128 -> BN ->
ReLU -> 64 -> BN -> ReLU -> 10 on a *global* batch of 256 random float32 images, split over the K ranks; the
same global batch whatever K, so K = 2 does half the arithmetic per rank plus the communication.

Communication per step and rank (float64 payloads, one ``Iallgather`` each, every rank receives the K - 1 other
payloads): the gradient average sends the parameter count P (one bucket of <= 1 MiB, or more); each SyncBN
layer sends 2C + 1 values forward and 2C backward.  A ring all-reduce would move about 2 (K-1)/K of the payload
per rank instead of K - 1 times it; at K = 2 both are one payload.  Multiply the bytes by the step rate to size
a network for a cluster.

A rank of its own per core: with 2 cores, K = 2 can at best halve the compute per rank; the BLAS runs on one
thread per rank (``OPENBLAS_NUM_THREADS=1``) in both cases for a like-for-like ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GLOBAL_BATCH = 256
STEPS = 30
WARMUP = 3


def _model(sync: bool):  # normlab is imported in the worker only
    from normlab import nn

    gen = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Linear(784, 128, rng=gen),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Linear(128, 64, rng=gen),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 10, rng=gen),
    )
    return nn.convert_sync_batchnorm(model) if sync else model


def worker(sync: bool) -> dict[str, float]:
    """One rank: time STEPS steps; returns rank 0's numbers (step time is the slowest rank's)."""
    from normlab import distributed, nn, optim

    world = distributed.get_world()
    model = _model(sync)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(GLOBAL_BATCH, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=GLOBAL_BATCH)
    a, b = distributed.chunk_bounds(GLOBAL_BATCH, world.size, world.rank)
    xb, yb = x[a:b], y[a:b]

    comm_seconds = 0.0
    if world.size > 1:  # time spent inside collectives (waiting included)
        inner = world._allgather

        def timed(payload: np.ndarray, what: str) -> np.ndarray:
            nonlocal comm_seconds
            t = time.perf_counter()
            try:
                return inner(payload, what)
            finally:
                comm_seconds += time.perf_counter() - t

        world._allgather = timed  # type: ignore[method-assign]

    def step() -> None:
        opt.zero_grad()
        loss(model(xb), yb)
        model.backward(loss.backward())
        distributed.average_gradients(model.parameters(), world)
        opt.step()

    for _ in range(WARMUP):
        step()
    world.barrier()
    comm_seconds = 0.0
    sent0 = getattr(world, "bytes_sent", 0)
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    world.barrier()
    elapsed = time.perf_counter() - start
    sent = getattr(world, "bytes_sent", 0) - sent0
    slowest = float(world.allgather(np.array([elapsed]), "bench time").max())
    params = sum(p.data.size for p in model.parameters())
    return {
        "ranks": world.size,
        "sync": sync,
        "ms_per_step": 1e3 * slowest / STEPS,
        "comm_share": comm_seconds / elapsed if world.size > 1 else 0.0,
        "bytes_sent_per_step": sent / STEPS,
        "bytes_received_per_step": (world.size - 1) * sent / STEPS,
        "parameters": params,
    }


def _launch(ranks: int, sync: bool) -> dict[str, float]:
    mpiexec = Path(sys.executable).with_name("mpiexec")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NORMLAB_DIST_QUIET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "benchmarks.mpi", "--worker"]
        + (["--sync"] if sync else []),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=root,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mpiexec -n {ranks} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = [_launch(1, True), _launch(2, False), _launch(2, True)]
    one, local, sync = rows
    print(
        f"MLP 784-128-BN-64-BN-10, global batch {GLOBAL_BATCH}, float32, {STEPS} steps, cores: {os.cpu_count()}"
    )
    print(f"{'case':<26}{'ms/step':>9}{'vs K=1':>8}{'comm share':>12}{'bytes sent/step':>17}")
    for name, r in (("K=1 (SyncBN = BN)", one), ("K=2 local BN", local), ("K=2 SyncBN", sync)):
        print(
            f"{name:<26}{r['ms_per_step']:>9.2f}{one['ms_per_step'] / r['ms_per_step']:>7.2f}x"
            f"{100 * r['comm_share']:>11.1f}%{r['bytes_sent_per_step']:>17,.0f}"
        )
    print(
        f"SyncBN overhead over local BN at K=2: {100 * (sync['ms_per_step'] / local['ms_per_step'] - 1):.1f}% "
        f"({sync['bytes_sent_per_step'] - local['bytes_sent_per_step']:,.0f} extra bytes per step and rank); "
        f"gradients: {local['parameters']:,} parameters = {8 * local['parameters']:,} bytes per rank and step"
    )


if __name__ == "__main__":
    if "--worker" in sys.argv:
        result = worker("--sync" in sys.argv)
        if "PMI_RANK" not in os.environ or os.environ["PMI_RANK"] == "0":
            print(json.dumps(result), flush=True)
    else:
        main()
