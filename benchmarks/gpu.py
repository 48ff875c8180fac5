"""GPU benchmark: normlab's CUDA kernels against PyTorch CUDA, in one run on one GPU.

``python -m benchmarks.gpu [--quick] [--repeat N] [--json PATH]``

Every row times training-mode forward + backward of one normalization: normlab.kernels.cuda on CuPy arrays
and ``torch.nn.functional`` with autograd on the *same* device memory (shared through DLPack), so both read
identical numbers; the row's ``max|Δ|`` compares their outputs and input gradients (a sanity check, not a
test).  Each implementation runs ``--repeat`` calls between two device synchronizations, five times; the
table has the medians, the ratio torch / normlab (above 1: normlab is faster), and normlab's effective
bandwidth as a share of a device-to-device copy measured in the same run.

After the kernel rows, one training epoch of the MLP and of LeNet-BN (``benchmarks/epoch_cases.py``: the
MNIST sample, the same initial weights in both libraries) with the model and the batches on the GPU.

Effective bandwidth counts the bytes a two-pass design must move: forward reads x twice and writes y,
backward reads x and dy twice each and writes dx, so 8 times the tensor's size for forward + backward
(parameters and statistics are negligible).  100 % would mean running at copy speed.

On a machine without CUDA (or without CuPy, numba-cuda or a CUDA build of PyTorch) it prints why and
exits with status 2, measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

EXIT_NO_CUDA = 2

# CuPy exports its arrays with the legacy default stream in __cuda_array_interface__, and numba-cuda by default
# synchronizes on an exported stream at every kernel launch: the host would wait for the GPU before each of
# the six launches of a forward + backward.  Every kernel here (CuPy's, numba's, PyTorch's) runs on that one
# legacy stream, in order, so the wait protects nothing.  Must be set before numba.cuda is imported.
os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")


@dataclass
class Row:
    name: str
    shape: tuple[int, ...]
    dtype: str
    normlab_ms: float
    torch_ms: float | None
    bytes_moved: int
    copy_gbps: float
    max_abs_diff: float | None

    @property
    def ratio(self) -> float | None:
        return None if self.torch_ms is None else self.torch_ms / self.normlab_ms

    @property
    def gbps(self) -> float:
        return self.bytes_moved / (self.normlab_ms * 1e-3) / 1e9


def cuda_unavailable() -> str | None:
    """Why this machine cannot run the GPU benchmark, or None when it can."""
    from normlab.kernels import cuda as K

    ok, reason = K.status()
    if not ok:
        return reason
    if K.simulator():
        return "NUMBA_ENABLE_CUDASIM=1: the simulator is not a GPU; unset it to benchmark"
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        return f"CuPy is not installed (pip install -e '.[gpu]'): {exc}"
    try:
        import torch
    except ImportError as exc:
        return f"PyTorch is not installed: {exc}"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} has no CUDA device (a CPU build, or no driver)"
    return None


def _median_ms(fn: Callable[[], Any], sync: Callable[[], None], repeat: int) -> float:
    for _ in range(3):  # warm-up: compilation, allocator pools, clocks
        fn()
    sync()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        sync()
        rounds.append((time.perf_counter() - start) / repeat * 1e3)
    return statistics.median(rounds)


def _cases(quick: bool) -> list[tuple[str, tuple[int, ...], str, dict[str, Any]]]:
    """(name, shape, dtype, options) of every row."""
    scale = 8 if quick else 1
    bn_shapes = [(256, 64, 56, 56), (128, 32, 112, 112), (64, 256, 28, 28), (32, 512, 14, 14)]
    cases = [("BN2d NCHW", (n // scale, *rest), "float32", {}) for n, *rest in bn_shapes]
    big = (256 // scale, 64, 56, 56)
    cases += [
        ("BN2d channels-last", big, "float32", {"channels_last": True}),
        ("BN2d NCHW", big, "float16", {}),
        ("BN2d NCHW", big, "bfloat16", {}),
        ("BN2d channels-last", big, "bfloat16", {"channels_last": True}),
        ("BN1d", (65536 // scale, 1024), "float32", {}),
        ("LayerNorm", (65536 // scale, 1024), "float32", {"op": "layer"}),
        ("RMSNorm", (65536 // scale, 1024), "float32", {"op": "rms"}),
        ("GroupNorm(32)", big, "float32", {"op": "group", "groups": 32}),
    ]
    return cases


def _copy_gbps(nbytes: int, repeat: int) -> float:
    import cupy

    src = cupy.ones(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)

    def copy() -> None:
        dst[...] = src

    ms = _median_ms(copy, cupy.cuda.Device().synchronize, repeat)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _run_case(
    name: str, shape: tuple[int, ...], dtype: str, opt: dict[str, Any], repeat: int, copy: float
) -> Row:
    import cupy
    import torch
    import torch.nn.functional as TF

    from normlab.kernels import cuda as K

    tdtype = getattr(torch, dtype)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x_t = torch.randn(shape, device="cuda", dtype=torch.float32, generator=gen).to(tdtype)
    dy_t = torch.randn(shape, device="cuda", dtype=torch.float32, generator=gen).to(tdtype)
    if opt.get("channels_last"):
        x_t = x_t.contiguous(memory_format=torch.channels_last)
        dy_t = dy_t.contiguous(memory_format=torch.channels_last)
    op = opt.get("op", "batch")
    c = shape[1] if op in ("batch", "group") else shape[-1]
    w_t = torch.rand(c, device="cuda", generator=gen) + 0.5
    b_t = torch.randn(c, device="cuda", generator=gen)
    x, dy = cupy.from_dlpack(x_t), cupy.from_dlpack(dy_t)
    w, b = cupy.from_dlpack(w_t), cupy.from_dlpack(b_t)

    forward, backward = {
        "batch": (lambda: K.batch_norm_forward(x, w, b), K.batch_norm_backward),
        "layer": (lambda: K.layer_norm_forward(x, (c,), w, b), K.layer_norm_backward),
        "rms": (lambda: K.rms_norm_forward(x, (c,), w, 1e-6), K.rms_norm_backward),
        "group": (
            lambda: K.group_norm_forward(x, opt.get("groups", 1), w, b),
            K.group_norm_backward,
        ),
    }[op]

    def ours() -> tuple[Any, Any]:
        y, cache = forward()
        return y, backward(dy, cache).dx

    xr = x_t.detach().requires_grad_(True)
    wr, br = w_t.detach().requires_grad_(True), b_t.detach().requires_grad_(True)
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")

    def theirs() -> tuple[Any, Any]:
        xr.grad = wr.grad = br.grad = None
        if op == "batch":
            y = TF.batch_norm(xr, rm, rv, wr, br, training=True)
        elif op == "layer":
            y = TF.layer_norm(xr, (c,), wr, br)
        elif op == "rms":
            y = TF.rms_norm(xr, (c,), wr, 1e-6)
        else:
            y = TF.group_norm(xr, opt["groups"], wr, br)
        y.backward(dy_t)
        return y, xr.grad

    sync = torch.cuda.synchronize
    y, dx = ours()
    y_t, dx_t = theirs()
    diff = max(
        float((torch.from_dlpack(y).float() - y_t.float()).abs().max()),
        float((torch.from_dlpack(dx).float() - dx_t.float()).abs().max()),
    )
    normlab_ms = _median_ms(ours, sync, repeat)
    torch_ms = _median_ms(theirs, sync, repeat)
    return Row(
        name=name,
        shape=shape,
        dtype=dtype,
        normlab_ms=normlab_ms,
        torch_ms=torch_ms,
        bytes_moved=8 * x_t.numel() * x_t.element_size(),
        copy_gbps=copy,
        max_abs_diff=diff,
    )


@dataclass
class EpochRow:
    """One training epoch of a network (benchmarks/epoch_cases.py's setups) on the GPU, both libraries
    starting from the same weights; the losses are those of that first epoch (they should agree)."""

    name: str
    batch_size: int
    steps: int
    normlab_ms: float
    torch_ms: float
    normlab_loss: float
    torch_loss: float

    @property
    def ratio(self) -> float:
        return self.torch_ms / self.normlab_ms


def epoch_row(
    setup: Any,
    device: Any,
    put: Callable[[Any], Any],
    sync: Callable[[], None],
    torch_device: str,
    limit: int | None = None,
) -> EpochRow:
    """Time one epoch of ``setup`` (MLP or LeNet-BN on the MNIST sample) with the normlab model on ``device``
    (batches put there once by ``put``) and the PyTorch model on ``torch_device``: median of five epochs
    after three warm-up ones, each ended by ``sync``.  ``limit`` keeps only the first batches (tests)."""
    from benchmarks.epoch_cases import batches, build_pair, normlab_epoch, torch_epoch

    ours, theirs = build_pair(setup)
    ours.to(device)
    theirs.to(torch_device)
    data = batches(setup.images, setup.batch_size)[:limit]
    ours_epoch = normlab_epoch(setup, ours, [(put(x), put(y)) for x, y in data])
    theirs_epoch = torch_epoch(setup, theirs, data, torch_device)
    # the first epochs, from the same weights: their mean losses should agree
    normlab_loss, torch_loss = ours_epoch(), theirs_epoch()
    return EpochRow(
        name=setup.name,
        batch_size=setup.batch_size,
        steps=len(data),
        normlab_ms=_median_ms(ours_epoch, sync, 1),
        torch_ms=_median_ms(theirs_epoch, sync, 1),
        normlab_loss=normlab_loss,
        torch_loss=torch_loss,
    )


def format_epochs(rows: list[EpochRow]) -> str:
    lines = [
        "| epoch | batch | steps | normlab ms | torch ms | torch/normlab | first-epoch loss normlab / torch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.batch_size} | {r.steps} | {r.normlab_ms:.1f} | {r.torch_ms:.1f} | "
            f"{r.ratio:.2f}x | {r.normlab_loss:.4f} / {r.torch_loss:.4f} |"
        )
    return "\n".join(lines)


def format_table(rows: list[Row], device: str) -> str:
    lines = [
        f"GPU: {device}; copy bandwidth {rows[0].copy_gbps:.0f} GB/s" if rows else f"GPU: {device}",
        "",
        "| op | shape | dtype | normlab ms | torch ms | torch/normlab | GB/s | % of copy | max abs diff |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        torch_ms = "n/a" if r.torch_ms is None else f"{r.torch_ms:.3f}"
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
        diff = "n/a" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
        lines.append(
            f"| {r.name} | {r.shape} | {r.dtype} | {r.normlab_ms:.3f} | {torch_ms} | {ratio} | "
            f"{r.gbps:.0f} | {100 * r.gbps / r.copy_gbps:.0f} % | {diff} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="shapes with an 8x smaller batch")
    parser.add_argument("--repeat", type=int, default=20, help="calls per timed round (default 20)")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    parser.add_argument(
        "--no-epochs", action="store_true", help="skip the LeNet-BN and MLP epoch rows"
    )
    args = parser.parse_args(argv)

    reason = cuda_unavailable()
    if reason is not None:
        print(f"benchmarks/gpu.py: nothing measured: {reason}", file=sys.stderr)
        return EXIT_NO_CUDA

    from normlab.kernels import cuda as K

    device = K.describe()
    copy = _copy_gbps(256 * 2**20, args.repeat)
    rows = []
    for name, shape, dtype, opt in _cases(args.quick):
        try:
            rows.append(_run_case(name, shape, dtype, opt, args.repeat, copy))
        except (
            Exception
        ) as exc:  # one failing row (e.g. an unsupported dtype) must not hide the others
            print(f"{name} {shape} {dtype}: failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        print(format_table(rows[-1:], device).splitlines()[-1], flush=True)
    print()
    print(format_table(rows, device))
    epochs = []
    if not args.no_epochs:
        import cupy

        from benchmarks.epoch_cases import LENET, MLP

        for setup in (MLP, LENET):
            try:
                epochs.append(
                    epoch_row(setup, "cuda", cupy.asarray, cupy.cuda.Device().synchronize, "cuda")
                )
            except Exception as exc:  # an epoch row must not hide the kernel rows above
                print(f"{setup.name}: failed: {type(exc).__name__}: {exc}", flush=True)
        print()
        print(format_epochs(epochs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device,
                    "copy_gbps": copy,
                    "rows": [asdict(r) for r in rows],
                    "epochs": [asdict(r) for r in epochs],
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
