"""How every numba loop of :mod:`normlab.kernels` is compiled: jit options, the on-disk cache, the file lock.

* :func:`helper` compiles a loop that only other loops call (a building block): numba compiles it as part of
  its caller.
* :func:`entry` compiles a loop that Python calls.  numba compiles lazily anyway, per signature on the first
  call; the wrapper only makes that first call per dtype hold a file lock, so a run compiles exactly the
  loops it calls, for the dtypes it calls them with, and nothing else.

The lock: numba caches the machine code on disk (``cache=True``), but that cache is not safe against two
processes compiling the same function at the same time (one process's index can end up naming the other's
machine code: "can't unbox array", or worse), which is exactly what a first ``pytest -n 2`` does.  Under the
lock one process compiles and writes the cache; the others wait, then load it.

Arrays handed to the loops are C-contiguous and writeable (:func:`kernel_array`): a read-only or strided
array is another numba type, which would compile the loop again for it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numba
import numpy as np

# Reductions may reassociate and contract (SIMD partial sums; see normlab.kernels._loops); never nnan/ninf.
REDUCE = {"reassoc", "contract"}


@contextlib.contextmanager
def compile_lock() -> Iterator[None]:
    """Hold the kernels' file lock (one per user) for the block; a no-op where there is no ``flock``."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): compile without the lock
        yield
        return
    path = os.path.join(tempfile.gettempdir(), f"normlab-kernels-{os.getuid()}.lock")
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def helper(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` with the disk cache, for loops that other loops call (``fastmath``, ``inline``...)."""
    return numba.njit(cache=True, **options)


class EntryKernel:
    """A numba loop called from Python, compiled (or loaded from the disk cache) under :func:`compile_lock`
    on its first call for each dtype of its first argument; later calls go straight to numba."""

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self._ready: set[np.dtype] = set()
        functools.update_wrapper(self, dispatcher.py_func)

    def __call__(self, *args: Any) -> Any:
        dtype = args[0].dtype
        if dtype in self._ready:
            return self.dispatcher(*args)
        with compile_lock():
            result = self.dispatcher(*args)
        self._ready.add(dtype)
        return result


def entry(**options: Any) -> Callable[[Callable[..., Any]], EntryKernel]:
    """``numba.njit`` with the disk cache, compiled lazily under the file lock (see :class:`EntryKernel`)."""

    def wrap(fn: Callable[..., Any]) -> EntryKernel:
        return EntryKernel(numba.njit(cache=True, **options)(fn))

    return wrap


def kernel_array(a: np.ndarray) -> np.ndarray:
    """``a`` as the loops are compiled for: C-contiguous and writeable; copied only where it is not already."""
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C")


def threads() -> int:
    """numba's thread count: the number of row blocks the row-parallel loops split their work into."""
    return numba.get_num_threads()
