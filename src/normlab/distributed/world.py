"""The process group: rank, world size and the few collectives normlab needs, over MPI (mpi4py) or none.

``get_world()`` returns the world of this process, created once:

* launched by ``mpiexec`` (MPICH's hydra sets ``PMI_RANK``/``PMI_SIZE``, Open MPI ``OMPI_COMM_WORLD_SIZE``):
  an :class:`MPIWorld` over ``MPI.COMM_WORLD``.  ``mpi4py`` is imported here, and only here, so normlab
  imports and runs without it;
* otherwise a :class:`SingleProcess` world of size 1 whose collectives return their input.

Every collective is an ``allgather`` of one float64 vector per rank; each rank then reduces the K vectors itself,
**in rank order**, so every rank gets bit-identical results and a rerun gets the same bits (an MPI ``Allreduce``
promises neither).  No hang:

* *matching guarantee*: the first entry of every payload is a checksum of the call's name and length
  (``what``); if the ranks did not call the same collective in the same order, every rank raises
  :class:`CollectiveMismatch` naming the ranks and what each one called;
* *timeout*: each collective is non-blocking (``Iallgather``) and polled; if it has not completed after
  ``timeout`` seconds (``NORMLAB_COLLECTIVE_TIMEOUT``, 300 by default) the rank prints which collective waited
  and calls ``MPI_Abort``, which ends every rank;
* *faults*: an exception that escapes on one rank is printed with the rank's number, then ``MPI_Abort`` ends
  all ranks (``sys.excepthook``); a killed rank makes ``mpiexec`` end the others.  Errors raised on every rank
  alike (:class:`ConsistentError`, e.g. a model that differs across ranks) exit normally with status 1, so each
  rank prints its message.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import time
import zlib
from typing import Any

import numpy as np

from normlab.backend import to_host

DEFAULT_TIMEOUT_S = 300.0
_LAUNCH_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class DistributedError(RuntimeError):
    """A problem in a distributed run."""


class ConsistentError(DistributedError):
    """An error that every rank detects and raises alike; ranks exit with status 1 without ``MPI_Abort``."""


class CollectiveMismatch(ConsistentError):
    """The ranks called different collectives at the same point (a bug that would otherwise hang or corrupt)."""


def launched_by_mpiexec() -> bool:
    """Whether this process was started by an MPI launcher (the launcher's environment variables are set)."""
    return any(os.environ.get(v) for v in _LAUNCH_VARIABLES)


def _checksum(what: str, length: int) -> float:
    """The call's identity as an exact float64 (a CRC32 fits in the 53-bit mantissa)."""
    return float(zlib.crc32(f"{what}:{length}".encode()))


_EXIT = "exit"
_EXIT_CHECKSUM = _checksum(_EXIT, 0)


def sum_in_rank_order(rows: np.ndarray) -> np.ndarray:
    """``rows[0] + rows[1] + ... + rows[K-1]`` in float64, in that order (the same bits on every rank)."""
    total = np.array(rows[0], dtype=np.float64, copy=True)
    for row in rows[1:]:
        total += row
    return total


class World:
    """Rank, size and the collectives; subclasses move the bytes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    # -------------------------------------------------------------------- one primitive
    def _allgather(self, payload: np.ndarray, what: str) -> np.ndarray:
        raise NotImplementedError

    def allgather(self, values: Any, what: str) -> np.ndarray:
        """Every rank's ``values`` (flattened, float64) stacked by rank: shape (size, n).

        ``what`` names the call (in error messages and in the matching check).  Every rank must call the same
        collectives in the same order with the same lengths; a mismatch raises :class:`CollectiveMismatch`
        on every rank.
        """
        # arrays on a device travel through the host: only statistics and gradients cross, never batches
        flat = np.asarray(to_host(values), dtype=np.float64).reshape(-1)
        payload = np.empty(flat.size + 1, dtype=np.float64)
        payload[0] = _checksum(what, flat.size)
        payload[1:] = flat
        rows = self._allgather(payload, what)
        if np.any(rows[:, 0] != payload[0]):
            if what == _EXIT:
                raise CollectiveMismatch(
                    f"normlab.distributed: rank {self.rank} ended the program while other ranks still "
                    "called collectives"
                )
            exited = np.flatnonzero(rows[:, 0] == _EXIT_CHECKSUM).tolist()
            if exited:
                raise CollectiveMismatch(
                    f"normlab.distributed: rank(s) {exited} ended the program while rank {self.rank} "
                    f"waited in collective '{what}'; ending this rank too"
                )
            raise CollectiveMismatch(
                f"normlab.distributed: rank {self.rank} called collective '{what}' with {flat.size} values, "
                f"but rank(s) {np.flatnonzero(rows[:, 0] != payload[0]).tolist()} called a different one at "
                "the same point; every rank must run the same layers and steps in the same order"
            )
        return rows[:, 1:]

    # -------------------------------------------------------------------- derived collectives
    def sum(self, values: Any, what: str) -> np.ndarray:
        """The element-wise sum over ranks (float64, rank order, same bits everywhere), shaped as ``values``."""
        shape = np.shape(values)
        return sum_in_rank_order(self.allgather(values, what)).reshape(shape)

    def broadcast(self, values: Any, what: str, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``values`` on every rank (float64, shaped as ``values``)."""
        shape = np.shape(values)
        return self.allgather(values, what)[root].reshape(shape)

    def broadcast_int(self, value: int, what: str, root: int = 0) -> int:
        """Rank ``root``'s integer (|value| < 2**53 travels exactly; larger seeds are folded below that)."""
        folded = int(value) % (2**52)
        return int(self.broadcast(np.array([folded], dtype=np.float64), what, root)[0])

    def barrier(self, what: str = "barrier") -> None:
        self.allgather(np.zeros(0), what)

    def abort(self, message: str, code: int = 1) -> None:
        sys.stderr.write(message.rstrip() + "\n")
        sys.stderr.flush()
        os._exit(code)


class SingleProcess(World):
    """The world of one process: collectives return the input."""

    def _allgather(self, payload: np.ndarray, what: str) -> np.ndarray:
        return payload[None, :].copy()

    def __repr__(self) -> str:
        return "SingleProcess(rank=0, size=1)"


class MPIWorld(World):
    """``MPI.COMM_WORLD`` through mpi4py, with polled non-blocking collectives and a timeout."""

    def __init__(self, comm: Any, timeout: float | None = None) -> None:
        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        if timeout is None:
            timeout = float(os.environ.get("NORMLAB_COLLECTIVE_TIMEOUT", DEFAULT_TIMEOUT_S))
        if not timeout > 0:
            raise ValueError(f"MPIWorld: timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = timeout
        self.calls = 0  # collectives completed, for messages
        self.bytes_sent = 0  # payload bytes this rank contributed, for the benchmarks

    def _allgather(self, payload: np.ndarray, what: str) -> np.ndarray:
        rows = np.empty((self.size, payload.size), dtype=np.float64)
        request = self.comm.Iallgather(payload, rows)
        deadline = time.monotonic() + self.timeout
        spins, pause = 0, 0.0
        while not request.Test():
            spins += 1
            if spins > 200:  # after a short spin, yield the core (ranks may outnumber cores)
                pause = min(1e-3, pause * 2 or 1e-5)
                time.sleep(pause)
            if time.monotonic() > deadline:
                self.abort(
                    f"normlab.distributed: rank {self.rank} of {self.size}: collective '{what}' (call "
                    f"#{self.calls + 1}) did not complete within {self.timeout:g} s; another rank stopped "
                    "calling collectives or hangs. Aborting all ranks."
                )
        self.calls += 1
        self.bytes_sent += payload.nbytes
        return rows

    def abort(self, message: str, code: int = 1) -> None:
        sys.stderr.write(message.rstrip() + "\n")
        sys.stderr.flush()
        sys.stdout.flush()
        time.sleep(0.2)  # let mpiexec forward this rank's last lines before it ends every rank
        self.comm.Abort(code)

    def __repr__(self) -> str:
        return f"MPIWorld(rank={self.rank}, size={self.size}, timeout={self.timeout:g}s)"


_WORLD: World | None = None


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(
            "normlab.distributed: this process was started by mpiexec but mpi4py is not importable "
            f"({e}); install it with: pip install 'normlab[distributed]'"
        ) from e
    return MPI


def get_world() -> World:
    """The world of this process (created on first call): MPI under ``mpiexec``, else a single process."""
    global _WORLD
    if _WORLD is None:
        if launched_by_mpiexec():
            world: World = MPIWorld(_import_mpi().COMM_WORLD)
            if world.size > 1:
                _install_fault_handler(world)
                _announce(world)
                atexit.register(_exit_together, world)
        else:
            world = SingleProcess()
        _WORLD = world
    return _WORLD


def set_world(world: World | None) -> World | None:
    """Replace the process's world (``None``: decide again on the next :func:`get_world`); returns the old one."""
    global _WORLD
    old, _WORLD = _WORLD, world
    return old


def _announce(world: World) -> None:
    """One line on rank 0 mapping ranks to process ids, so mpiexec's "BAD TERMINATION ... PID n" names a rank."""
    host = zlib.crc32(socket.gethostname().encode())
    table = world.allgather(np.array([os.getpid(), host], dtype=np.float64), "rank table")
    if world.is_main and os.environ.get("NORMLAB_DIST_QUIET") != "1":
        ranks = ", ".join(f"rank {r}: pid {int(pid)}" for r, (pid, _) in enumerate(table))
        sys.stderr.write(f"normlab.distributed: {world.size} ranks ({ranks})\n")
        sys.stderr.flush()


def _exit_together(world: World) -> None:
    """At exit, a last collective: a rank that leaves the program early (``sys.exit``, the end of a script
    with fewer steps) meets the others in a collective they did not call, and every rank ends at once
    instead of waiting for the timeout."""
    try:
        world.allgather(np.zeros(0), _EXIT)
    except CollectiveMismatch as e:
        sys.stderr.write(f"{e}\n")
        sys.stderr.flush()
        os._exit(1)


def _install_fault_handler(world: World) -> None:
    """An exception escaping on one rank ends all ranks (instead of leaving them waiting in a collective)."""
    previous = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        sys.stderr.write(f"normlab.distributed: rank {world.rank} of {world.size} failed:\n")
        previous(kind, value, tb)
        sys.stderr.flush()
        if isinstance(value, ConsistentError | KeyboardInterrupt):
            os._exit(1)  # every rank raises the same error: each exits on its own, message printed
        world.abort(
            f"normlab.distributed: rank {world.rank} raised {kind.__name__}; aborting all {world.size} ranks"
        )

    sys.excepthook = excepthook
