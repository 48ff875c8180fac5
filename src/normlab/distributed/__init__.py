"""Data-parallel training over MPI (mpi4py + the mpich wheel) with synchronized batch norm.

Run any script or ``normlab train CONFIG --procs K`` under ``mpiexec -n K``; in a plain process everything here
works as a world of size 1 and ``mpi4py`` is never imported.

Examples:
    >>> from normlab import distributed
    >>> world = distributed.get_world()
    >>> world.rank, world.size
    (0, 1)
"""

from normlab.distributed.checkpoint import load_checkpoint, save_checkpoint
from normlab.distributed.parallel import average_gradients, broadcast_state, check_same_model
from normlab.distributed.sharding import ShardedBatches, ShardedLoader, chunk_bounds
from normlab.distributed.training import FitSync
from normlab.distributed.world import (
    CollectiveMismatch,
    ConsistentError,
    DistributedError,
    MPIWorld,
    SingleProcess,
    World,
    get_world,
    launched_by_mpiexec,
    set_world,
    sum_in_rank_order,
)

__all__ = [
    "CollectiveMismatch",
    "ConsistentError",
    "DistributedError",
    "FitSync",
    "MPIWorld",
    "ShardedBatches",
    "ShardedLoader",
    "SingleProcess",
    "World",
    "average_gradients",
    "broadcast_state",
    "check_same_model",
    "chunk_bounds",
    "get_world",
    "launched_by_mpiexec",
    "load_checkpoint",
    "save_checkpoint",
    "set_world",
    "sum_in_rank_order",
]
