"""Checkpoints in a distributed run: rank 0 writes (atomically, through :mod:`normlab.checkpoint`), every rank
waits for the write to finish and can then resume from the file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.distributed.world import ConsistentError, World, get_world

if TYPE_CHECKING:
    from normlab.checkpoint import Checkpoint
    from normlab.nn.module import Module
    from normlab.optim.optimizer import Optimizer


def save_checkpoint(
    path: str | Path,
    model: Module,
    optimizer: Optimizer | None = None,
    *,
    world: World | None = None,
    **options: Any,
) -> Path:
    """:func:`normlab.checkpoint.save_checkpoint` on rank 0 only, then a barrier; called by every rank.

    The write is atomic (temporary file, fsync, rename), so a fault on any rank leaves either the previous
    checkpoint or the new one, never a torn file.  If rank 0's write fails, every rank raises.
    """
    from normlab.checkpoint import save_checkpoint as save_one

    world = get_world() if world is None else world
    failure = ""
    if world.is_main:
        try:
            save_one(path, model, optimizer, **options)
        except Exception as e:  # reported on every rank below, then re-raised here
            failure = f"{type(e).__name__}: {e}"
            error: Exception | None = e
        else:
            error = None
    ok = world.broadcast(np.array([0.0 if failure else 1.0]), f"checkpoint written {path}")
    if not ok[0]:
        if world.is_main and error is not None:
            raise error
        raise ConsistentError(
            f"normlab.distributed: rank 0 could not write the checkpoint {path} (see rank 0's message)"
        )
    return Path(path)


def load_checkpoint(
    path: str | Path,
    model: Module,
    optimizer: Optimizer | None = None,
    **options: Any,
) -> Checkpoint:
    """Every rank restores from the same file (:func:`normlab.checkpoint.load_checkpoint`)."""
    from normlab.checkpoint import load_checkpoint as load_one

    return load_one(path, model, optimizer, **options)
