"""What a benchmark row is, and where the runner finds rows.

A :class:`Case` names its shape and the bytes the minimal algorithm moves; ``setup()`` builds the inputs
once and returns ``{"normlab": fn, "torch": fn, "naive": fn}`` of zero-argument callables, each doing one
complete unit of work (for the normalization rows, one training forward + backward).  ``"naive"`` may be
missing where no naive baseline makes sense (e.g. an end-to-end epoch); the runner then leaves its column
empty.

To add rows, write a module with a ``cases(quick: bool) -> list[Case]`` function and add it to
:data:`PROVIDERS`.  A case may also carry ``check``: an untimed verification that the implementations compute
the same thing (the epoch rows compare the losses after one epoch); the runner calls it before timing the row
and prints its one-line report.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

IMPLEMENTATIONS = ("normlab", "torch", "naive")


@dataclass(frozen=True)
class Case:
    name: str  # the row label, e.g. "BN (4096, 1024)"
    group: (
        str  # what is measured, e.g. "batch_norm"; the runner's --only filter matches name or group
    )
    shape: tuple[int, ...]
    bytes_moved: (
        int  # bytes read + written by the minimal algorithm, for GB/s (0: not a bandwidth row)
    )
    setup: Callable[[], dict[str, Callable[[], object]]]
    # optional, untimed: verifies that the implementations compute the same thing and returns a one-line
    # report for the output (raises if they do not); the epoch rows compare the losses after one epoch
    check: Callable[[], str] | None = None


# modules with a ``cases(quick)`` function, in table order
PROVIDERS = [
    "benchmarks.norm_cases",
    "benchmarks.epoch_cases",  # end to end: one training epoch of the MLP and of LeNet-BN
    "benchmarks.image_cases",  # ImageFolder decode + resize throughput, 0 and 2 workers
    "benchmarks.fold_cases",  # inference with batch norm folded vs not
    "benchmarks.variant_cases",  # Batch Renorm (vs Keras 3 on torch) and Ghost BN
]


def all_cases(quick: bool = False) -> list[Case]:
    rows: list[Case] = []
    for name in PROVIDERS:
        rows.extend(importlib.import_module(name).cases(quick))
    return rows
