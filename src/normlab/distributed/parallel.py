"""Data parallelism: the same model on every rank, each on its part of the batch, gradients averaged.

* :func:`check_same_model` (at start): every rank compares the names, shapes and dtypes of its parameters and
  buffers with rank 0's; a difference raises the same :class:`~normlab.distributed.world.ConsistentError` on
  every rank, naming the first rank and tensor that differ;
* :func:`broadcast_state`: rank 0's parameters and buffers on every rank (one starting point);
* :func:`average_gradients`: after ``backward`` and before ``optimizer.step()``, every ``.grad`` becomes the
  mean over ranks, summed in rank order (reproducible); small gradients travel together in flat buckets of at
  most ``bucket_bytes`` so a model with many small tensors costs few collectives.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from normlab.backend import host_dtype, like, to_host
from normlab.distributed.world import ConsistentError, World, get_world, sum_in_rank_order

if TYPE_CHECKING:
    from normlab.nn.module import Module, Parameter

DEFAULT_BUCKET_BYTES = 1 << 20


def _signature(model: Module) -> list[str]:
    entries = [
        f"param {n} {tuple(p.data.shape)} {host_dtype(p.data)}" for n, p in model.named_parameters()
    ]
    entries += [
        f"buffer {n} {tuple(b.shape)} {host_dtype(b)}"
        for n, b in model.named_buffers()
        if b is not None
    ]
    return entries


def check_same_model(model: Module, world: World | None = None) -> None:
    """Raise :class:`ConsistentError` on every rank if any rank's model differs in structure from rank 0's."""
    world = get_world() if world is None else world
    mine = _signature(model)
    # one collective with a fixed length (count and digest), then the details only if they differ
    digest = [len(mine), zlib.crc32("\n".join(mine).encode())]
    rows = world.allgather(np.array(digest, dtype=np.float64), "model signature")
    differing = [r for r in range(world.size) if not np.array_equal(rows[r], rows[0])]
    if not differing:
        return
    first = differing[0]
    # the first entry where the first differing rank departs from rank 0, found with a fixed-size exchange
    n = int(max(rows[:, 0]))
    codes = np.array(
        [zlib.crc32(mine[i].encode()) if i < len(mine) else -1 for i in range(n)], dtype=np.float64
    )
    all_codes = world.allgather(codes, "model signature entries")
    where = int(np.flatnonzero(all_codes[first] != all_codes[0])[0])
    detail = mine[where] if where < len(mine) else "(no such entry)"
    raise ConsistentError(
        f"normlab.distributed: the model differs across ranks: rank {first} has "
        f"{int(rows[first, 0])} parameters+buffers, rank 0 has {int(rows[0, 0])}; they first differ at "
        f"entry {where} (on rank {world.rank}: {detail}). Build the same model on every rank."
    )


def broadcast_state(model: Module, world: World | None = None) -> None:
    """Copy rank 0's parameters and buffers into every rank's model (call after :func:`check_same_model`)."""
    world = get_world() if world is None else world
    if world.size == 1:
        return
    # values travel as float64 through the host and come back in each array's dtype, on its device
    for name, p in model.named_parameters():
        value = world.broadcast(p.data, f"broadcast {name}")
        p.data = like(value.astype(host_dtype(p.data)), p.data)
    for module_name, module in model.named_modules():
        for name, buf in list(module._buffers.items()):
            if buf is None:
                continue
            value = world.broadcast(buf, f"broadcast {module_name}.{name}")
            value = np.asarray(value).astype(host_dtype(buf)).reshape(tuple(buf.shape))
            setattr(module, name, like(value, buf))


def _buckets(params: list[Parameter], bucket_bytes: int) -> list[list[Parameter]]:
    """Consecutive parameters grouped so each bucket holds at most ``bucket_bytes`` (one big tensor alone)."""
    buckets: list[list[Parameter]] = []
    current: list[Parameter] = []
    size = 0
    for p in params:
        nbytes = p.data.size * 8  # travels as float64
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(p)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


def average_gradients(
    parameters: Iterable[Parameter],
    world: World | None = None,
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> int:
    """Replace each parameter's ``.grad`` with its mean over ranks; returns the number of collectives used.

    Parameters are taken in the given (model) order, which every rank shares.  A parameter without gradient
    (``requires_grad=False``) is skipped on every rank; a ``None`` gradient of a trainable parameter counts as
    zeros (this rank did not use it) and becomes the mean.  Sums run in float64, rank by rank.
    """
    world = get_world() if world is None else world
    params = [p for p in parameters if p.requires_grad]
    if world.size == 1 or not params:
        return 0
    if bucket_bytes < 1:
        raise ValueError(f"average_gradients: bucket_bytes must be >= 1, got {bucket_bytes}")
    calls = 0
    for bucket in _buckets(params, bucket_bytes):
        flat = np.concatenate(
            [
                np.zeros(p.data.size)
                if p.grad is None
                else to_host(p.grad).reshape(-1).astype(np.float64)
                for p in bucket
            ]
        )
        mean = sum_in_rank_order(world.allgather(flat, f"gradients ({len(bucket)} tensors)"))
        mean /= world.size
        calls += 1
        offset = 0
        for p in bucket:
            n = p.data.size
            grad = mean[offset : offset + n].reshape(tuple(p.data.shape))
            p.grad = like(grad.astype(host_dtype(p.data)), p.data)
            offset += n
    return calls
