"""Gradient accumulation: time per optimizer step and peak memory, full batch vs micro-batches.

``python -m benchmarks.accumulation [--batch 1024] [--k 4 8] [--repeat 5]``

One optimizer step of a batch-norm MLP (784 → 512 → BN → ReLU → 512 → BN → ReLU → 10, float32) on a batch
of ``--batch`` samples, three ways: the full batch at once; ``accumulate=k`` in ``"exact"`` mode (the same
step, number for number); ``accumulate=k`` in ``"ghost"`` mode.  Peak memory is what ``tracemalloc`` sees
NumPy allocate during the step (the arrays of the step, not the interpreter), so the exact mode's should fall
with k (one micro-batch's activations at a time) while its time grows with the extra passes (2L + 1
forwards and L + 1 backwards for L batch-norm layers).  Times are medians over ``--repeat`` steps.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from normlab import kernels, nn, optim
from normlab.nn.loss import CrossEntropyLoss
from normlab.train.accumulate import accumulation_step
from normlab.train.step import train_step


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 512, rng=0),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, 512, rng=1),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, 10, rng=2),
    )


def _measure(step, repeat: int) -> tuple[float, float]:
    """(median seconds, peak MiB) of ``step()``; the peak from one extra traced call."""
    step()  # warm: kernels compiled, caches allocated
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    loss = CrossEntropyLoss()
    rows = []
    with kernels.training_threads():
        model = _model()
        opt = optim.SGD(model.parameters(), lr=0.01)
        rows.append(
            ("full batch", 1, *_measure(lambda: train_step(model, opt, loss, x, y), args.repeat))
        )
        for k in args.k:
            b = args.batch // k
            micro = [(x[i : i + b], y[i : i + b]) for i in range(0, args.batch, b)]
            for mode in ("exact", "ghost"):
                model = _model()
                opt = optim.SGD(model.parameters(), lr=0.01)

                def step(model=model, opt=opt, micro=micro, mode=mode):
                    accumulation_step(model, opt, loss, micro, mode=mode)

                rows.append((f"accumulate {mode}", k, *_measure(step, args.repeat)))
    full_s, full_mib = rows[0][2], rows[0][3]
    print(f"one optimizer step, batch {args.batch}, kernels: {kernels.backend_name()}")
    print(f"{'how':<20} {'k':>3} {'ms/step':>9} {'vs full':>8} {'peak MiB':>9} {'vs full':>8}")
    for name, k, s, mib in rows:
        print(
            f"{name:<20} {k:>3} {s * 1e3:>9.1f} {s / full_s:>7.2f}x {mib:>9.1f} {mib / full_mib:>7.2f}x"
        )


if __name__ == "__main__":
    main()
