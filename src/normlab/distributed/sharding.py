"""Each rank's part of every batch.

A *global* batch of B samples is cut into K contiguous chunks, one per rank, of sizes differing by at most one
(``chunk_bounds``): rank k trains on samples ``[start_k, stop_k)`` of it.  Concatenating the ranks' chunks gives
the global batch back, so K ranks with synchronized batch norm and averaged gradients take the same steps as
one process with the global batch.

* :class:`ShardedLoader` reads only this rank's samples: a :class:`normlab.data.DataLoader` over the sample
  *indices* draws the global batches (a seeded permutation, new each epoch, resumable with ``state_dict``),
  and each rank indexes its arrays with its own chunk of them;
* :class:`ShardedBatches` does the same for any batch source ``fit`` accepts (every rank iterates the source,
  keeps its chunk); ``fit`` uses it under ``mpiexec``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from normlab.data.loader import DataLoader
from normlab.distributed.world import ConsistentError, World, get_world


def chunk_bounds(n: int, size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s chunk when ``n`` samples are split over ``size`` ranks."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def check_batch_fits(n: int, world: World, where: str) -> None:
    """Every rank needs at least one sample of each global batch (raised alike on every rank)."""
    if n < world.size:
        raise ConsistentError(
            f"{where}: the world size ({world.size} ranks) is larger than the batch ({n} samples): "
            f"rank {n} and above would get no samples; use a batch of at least {world.size} samples "
            "(or drop_last=True for a short last batch), or fewer ranks"
        )


class ShardedLoader:
    """Mini-batches of this rank's samples: chunk ``rank`` of every global batch of ``batch_size * K``.

    Args:
        x: every rank's view of the whole data set's inputs (an array, or a memory map: only the rank's rows
            are read).
        y: the targets, likewise.
        batch_size: samples per rank and step (b); the global batch is b * K.
        shuffle: as :class:`normlab.data.DataLoader`, applied to the global batches.
        drop_last: as :class:`normlab.data.DataLoader`, applied to the global batches.
        seed: as :class:`normlab.data.DataLoader`; the same ``seed`` on every rank gives every rank the same
            permutation, new each epoch.
        world: the world (default :func:`get_world`).

    ``len()`` is the number of steps per epoch; ``state_dict``/``load_state_dict`` resume mid-epoch.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        batch_size: int = 32,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        world: World | None = None,
    ) -> None:
        self.world = get_world() if world is None else world
        self.x, self.y = x, y
        n = int(np.shape(x)[0]) if np.ndim(x) else 0
        if y is not None and np.shape(y)[:1] != (n,):
            raise ValueError(f"ShardedLoader: x has {n} samples but y has shape {np.shape(y)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"ShardedLoader: batch_size must be a positive integer, got {batch_size!r}"
            )
        self.batch_size = batch_size
        self.indices = DataLoader(
            np.arange(n),
            batch_size=batch_size * self.world.size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
        )
        last = n % (batch_size * self.world.size)
        if not drop_last and last > 0:
            check_batch_fits(last, self.world, "ShardedLoader (last batch of the epoch)")
        if len(self.indices) == 0:
            check_batch_fits(0, self.world, "ShardedLoader")

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Any]:
        for idx in self.indices:
            start, stop = chunk_bounds(len(idx), self.world.size, self.world.rank)
            mine = idx[start:stop]
            yield self.x[mine] if self.y is None else (self.x[mine], self.y[mine])

    def state_dict(self) -> dict[str, Any]:
        return self.indices.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.indices.load_state_dict(state)

    def __repr__(self) -> str:
        return (
            f"ShardedLoader(rank={self.world.rank}, size={self.world.size}, "
            f"batch_size={self.batch_size}, steps={len(self)})"
        )


class ShardedBatches:
    """This rank's chunk of every batch of ``source`` (any re-iterable of ``(x, y)`` batches with a len).

    Every rank iterates the same source (same data, same seed) and keeps chunk ``rank`` of each batch.
    ``global_count`` is the size of the last global batch handed out and ``local_count`` this rank's part.
    """

    def __init__(self, source: Any, world: World) -> None:
        self.source, self.world = source, world
        self.global_count = self.local_count = 0

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.source:
            xb, yb = batch
            n = len(xb)
            check_batch_fits(n, self.world, "fit")
            start, stop = chunk_bounds(n, self.world.size, self.world.rank)
            self.global_count, self.local_count = n, stop - start
            yield xb[start:stop], (None if yb is None else yb[start:stop])

    def __getattr__(self, name: str) -> Any:  # state_dict and the like belong to the source
        if name in ("source", "world"):
            raise AttributeError(name)
        return getattr(self.source, name)
