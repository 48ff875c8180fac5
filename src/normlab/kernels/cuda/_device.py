"""Where the CUDA kernels run, which arrays they take, and how big their blocks and grids are.

``numba.cuda`` is imported on first use, never at import: a machine without numba-cuda, without a driver
or without a GPU imports normlab as usual and gets a clear error only when it calls a CUDA op.

numba-cuda reads ``NUMBA_ENABLE_CUDASIM`` once, when ``numba.cuda`` is first imported in a process: with it
set to 1 the kernels run in numba's CUDA simulator (plain Python threads on NumPy arrays, slow but exact
about the CUDA semantics that matter here: blocks, shared memory, barriers).  That is how the kernels are
tested on machines without a GPU (tests/gpu run them in a subprocess so the setting never leaks).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np


def _cuda() -> ModuleType:
    """``numba.cuda``, imported now (ImportError with the reason when numba-cuda is missing)."""
    try:
        from numba import cuda
    except ImportError as exc:
        raise ImportError(
            f"normlab.kernels.cuda needs numba-cuda (pip install 'normlab[gpu]'): {exc}"
        ) from exc
    return cuda


def simulator() -> bool:
    """True when numba-cuda runs its simulator in this process (``NUMBA_ENABLE_CUDASIM=1`` at its import)."""
    try:
        cuda = _cuda()
    except ImportError:
        return False
    config = getattr(cuda, "core", None)
    config = getattr(config, "config", None)
    if config is None:  # numba's own, older numba.cuda
        from numba.core import config
    return bool(config.ENABLE_CUDASIM)


def _missing_driver() -> str | None:
    """Why no CUDA driver can load, found without importing numba.cuda (which takes seconds), or None
    when a driver library loads, the simulator is asked for, or numba.cuda is already imported."""
    if (
        os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
        or os.environ.get("NUMBA_CUDA_DRIVER")  # a driver at a path numba-cuda is told about
        or "numba.cuda" in sys.modules
    ):
        return None
    if sys.platform == "darwin":
        return "CUDA does not run on macOS"
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return f"the CUDA driver library ({name}) cannot be loaded: {exc}"
    return None


def status() -> tuple[bool, str]:
    """``(True, what runs the kernels)`` or ``(False, why they cannot run)``; never raises."""
    missing = _missing_driver()
    if missing is not None:
        return False, f"no CUDA device: {missing}"
    try:
        cuda = _cuda()
    except ImportError as exc:
        return False, str(exc)
    if simulator():
        return True, "numba-cuda simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        if not cuda.is_available():
            return False, f"no CUDA device: {_driver_reason(cuda)}"
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
        return True, f"{name} (compute capability {'.'.join(map(str, device.compute_capability))})"
    except Exception as exc:  # any driver failure means: no usable device
        return False, f"no CUDA device: {type(exc).__name__}: {exc}"


def _driver_reason(cuda: ModuleType) -> str:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # detect() prints a device list
            cuda.detect()  # raises with the driver's message when the driver cannot load
    except Exception as exc:
        return " ".join(str(exc).split())
    return "numba-cuda found no usable GPU"


def require() -> ModuleType:
    """``numba.cuda`` when the kernels can run, else ``RuntimeError`` saying why."""
    ok, reason = status()
    if not ok:
        raise RuntimeError(f"normlab.kernels.cuda: CUDA requested but unavailable ({reason})")
    return _cuda()


# ---------------------------------------------------------------------------------------------- arrays
def namespace(x: Any, where: str, what: str = "input") -> ModuleType:
    """The array module of ``x``: CuPy for a CuPy array, NumPy for a NumPy array under the simulator.

    Anything else is a ``TypeError`` naming the op: a NumPy array on a real GPU would be copied to the
    device and back at every kernel launch, which is never what a caller wants.
    """
    require()
    if isinstance(x, np.ndarray):
        if simulator():
            return np
        raise TypeError(
            f"{where}: expected the {what} on the GPU (a CuPy array), got a NumPy array of shape "
            f"{x.shape}; move it with cupy.asarray"
        )
    if hasattr(x, "__cuda_array_interface__") and type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    raise TypeError(
        f"{where}: expected the {what} as a CuPy array (or NumPy under the simulator), got "
        f"{type(x).__module__}.{type(x).__name__}"
    )


def float_dtypes() -> tuple[np.dtype, ...]:
    """The input dtypes the kernels take: float16, float32, float64 and, when ml_dtypes is installed,
    bfloat16 (numba-cuda maps ml_dtypes.bfloat16 arrays to its bfloat16 type; compute capability >= 8.0)."""
    dtypes = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]
    try:
        import ml_dtypes

        dtypes.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    return tuple(dtypes)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float64 for float64 input, float32 for every narrower float (statistics and arithmetic)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


# ---------------------------------------------------------------------------------------------- launch sizes
@dataclass
class LaunchConfig:
    """Block and grid sizes.  ``threads`` per 1-D block and ``tile_y`` are powers of two; ``target_blocks``
    is how many blocks a reduction aims for (enough to fill the GPU; few under the simulator, where every
    block is a batch of Python threads)."""

    threads: int
    tile_x: int
    tile_y: int
    target_blocks: int
    max_elementwise_blocks: int


_config: LaunchConfig | None = None


def _default_config() -> LaunchConfig:
    if simulator():
        return LaunchConfig(
            threads=16, tile_x=4, tile_y=4, target_blocks=4, max_elementwise_blocks=4
        )
    cuda = require()
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    return LaunchConfig(
        threads=256,
        tile_x=32,
        tile_y=8,
        target_blocks=4 * sms,
        max_elementwise_blocks=32 * sms,
    )


def config() -> LaunchConfig:
    """The launch sizes in use (chosen for the device on first use)."""
    global _config
    if _config is None:
        _config = _default_config()
    return _config


def configure(**sizes: int) -> LaunchConfig:
    """Change launch sizes (``threads``, ``tile_x``, ``tile_y``, ``target_blocks``,
    ``max_elementwise_blocks``); tests use it to force several slices per channel."""
    current = config()
    for name, value in sizes.items():
        if not hasattr(current, name):
            raise TypeError(f"normlab.kernels.cuda.configure: unknown size {name!r}")
        if int(value) < 1:
            raise ValueError(f"normlab.kernels.cuda.configure: {name} must be >= 1, got {value}")
        setattr(current, name, int(value))
    return current


def slices(total: int, groups: int, per_thread_min: int) -> int:
    """How many slices to cut each of ``groups`` reductions of ``total`` values into: enough blocks to fill
    the device, but no slice shorter than ``per_thread_min`` values."""
    cfg = config()
    wanted = math.ceil(cfg.target_blocks / max(groups, 1))
    longest = math.ceil(total / per_thread_min)
    return max(1, min(wanted, longest))
