"""Fused normalization kernels for NVIDIA GPUs, written with numba-cuda, on CuPy arrays.

The ops have the names, arguments and results of :mod:`normlab.functional.norm` (``batch_norm_forward``,
``batch_norm_backward``, ``layer_norm_*``, ``rms_norm_*``, ``group_norm_*``, ``instance_norm_*``) and take
CuPy arrays (NumPy arrays under numba-cuda's simulator); see :mod:`normlab.kernels.cuda.norm` for the
design.  Importing this package needs neither CUDA nor numba-cuda: ``numba.cuda`` is imported when a kernel
is first launched, and :func:`status` says whether that can work here and why not.

Install with ``pip install 'normlab[gpu]'`` (CuPy for CUDA 12 and numba-cuda).
"""

from __future__ import annotations

from normlab.kernels.cuda._device import LaunchConfig, config, configure, simulator, status
from normlab.kernels.cuda.norm import (
    CudaNormCache,
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
    update_running_stats,
)


def describe() -> str:
    """One line for ``normlab info``: the GPU with the CUDA and CuPy versions, or why there is none."""
    ok, where = status()
    if not ok:
        return where if where.startswith("no CUDA device") else f"no CUDA device: {where}"
    parts = [where]
    try:
        import cupy

        runtime = cupy.cuda.runtime.runtimeGetVersion()
        parts.append(f"CUDA runtime {runtime // 1000}.{runtime % 1000 // 10}")
        parts.append(f"CuPy {cupy.__version__}")
    except (
        Exception
    ) as exc:  # the simulator needs no CuPy; a real GPU without it cannot take arrays
        parts.append(f"CuPy unavailable ({type(exc).__name__}: {exc})")
    try:
        import numba_cuda

        parts.append(f"numba-cuda {numba_cuda.__version__}")
    except (ImportError, AttributeError):
        pass
    return "; ".join(parts)


__all__ = [
    "CudaNormCache",
    "LaunchConfig",
    "batch_norm_backward",
    "batch_norm_forward",
    "config",
    "configure",
    "describe",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm_backward",
    "instance_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "rms_norm_backward",
    "rms_norm_forward",
    "simulator",
    "status",
    "update_running_stats",
]
