"""The ``normlab`` command."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

import numpy as np


def _demo(args: argparse.Namespace) -> int:
    """A small batch norm demonstration: what training mode and eval mode each compute."""
    from rich.console import Console
    from rich.table import Table

    from normlab import nn

    console = Console()
    rng = np.random.default_rng(args.seed)
    bn = nn.BatchNorm1d(4)
    true_mean = np.array([5.0, -2.0, 0.0, 100.0])
    true_std = np.array([2.0, 0.5, 1.0, 10.0])
    for _ in range(200):
        bn(rng.normal(true_mean, true_std, size=(32, 4)).astype(np.float32))

    table = Table(title="BatchNorm1d(4) after 200 training batches of 32 (momentum 0.1)")
    for col in ("channel", "true mean", "running_mean", "true var", "running_var"):
        table.add_column(col, justify="right")
    for c in range(4):
        table.add_row(
            str(c),
            f"{true_mean[c]:.3f}",
            f"{bn.running_mean[c]:.3f}",
            f"{true_std[c] ** 2:.3f}",
            f"{bn.running_var[c]:.3f}",
        )
    console.print(table)

    sample = rng.normal(true_mean, true_std, size=(1, 4)).astype(np.float32)
    batch = np.concatenate([sample, rng.normal(true_mean, true_std, size=(7, 4)).astype(np.float32)])
    bn.eval()
    eval_out = bn(sample)[0]
    bn.train()
    train_out = bn(batch)[0]
    t2 = Table(title="The same sample, normalized two ways")
    t2.add_column("mode")
    for c in range(4):
        t2.add_column(f"ch {c}", justify="right")
    t2.add_row("eval (running stats)", *[f"{v:+.3f}" for v in eval_out])
    t2.add_row("train (batch of 8)", *[f"{v:+.3f}" for v in train_out])
    console.print(t2)
    console.print(
        "In training mode a sample's output depends on the rest of its batch; eval mode uses the running "
        "statistics, so call [bold]model.eval()[/bold] before inference."
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    import normlab

    print(f"normlab {normlab.__version__}")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.system()})")
    print(f"numpy {np.__version__}")
    from normlab import kernels

    try:
        print(f"normalization kernels: {kernels.describe()}")
    except (ImportError, ValueError) as exc:  # NORMLAB_KERNELS misspelled, or =numba without numba
        print(f"normalization kernels: unavailable ({exc})")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="the main job: a demonstration on bundled data")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="versions and configuration")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
