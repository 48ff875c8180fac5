"""The backend record: which implementation each op runs, chosen in one place.

Every layer and optimizer asks :func:`resolve` for the implementation of an op by name (``"batch_norm"``,
``"conv2d"``, ``"relu"``, ``"adam_update"``, ...) and calls what it returns; a layer keeps the returned
:class:`Op` with its cache, so its backward is the one recorded with its forward.

The record (:class:`Backend`) is selected by :func:`use` or by ``NORMLAB_KERNELS``:

* unset, empty or ``auto``: the numba fast paths (:mod:`normlab.kernels.norm`, :mod:`~normlab.kernels.layers`,
  :mod:`~normlab.kernels.optim`, :mod:`~normlab.kernels.fused`) when numba imports, otherwise the reference;
* ``numba``: the numba fast paths, or an ``ImportError`` saying why they cannot load;
* ``reference``: the NumPy reference (:mod:`normlab.functional`) for every op.

The reference is what an op resolves to wherever no fast path is registered: for the op itself (``linear``,
``tanh``, ...), for the dtype (float16), for an empty input, for in-place updates whose arrays are not all
contiguous, writeable and of one dtype, and for arrays that are not NumPy arrays (the reference is written
against the Array API, so it runs on any namespace), except CuPy arrays of a normalization, which go to the
numba-cuda kernels (:mod:`normlab.kernels.cuda`) unless the backend is ``reference``.  That rule lives in
:meth:`Backend.resolve` and nowhere else.

The choice is made on first use (the first forward of a layer), not at ``import normlab``, so importing stays
fast; numba compiles each loop on its first call for a dtype (:mod:`normlab.kernels._compile`) and caches the
machine code on disk, so later processes load it instead of compiling.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from normlab import functional as F

ENV_VAR = "NORMLAB_KERNELS"
CHOICES = ("auto", "numba", "reference")


class Op(NamedTuple):
    """One implementation of an op: ``forward`` and its ``backward`` (``None`` for an update rule)."""

    forward: Callable[..., Any]
    backward: Callable[..., Any] | None = None


# The reference of every op that dispatches: what an op resolves to when no fast path applies.
REFERENCE: Mapping[str, Op] = {
    "batch_norm": Op(F.batch_norm_forward, F.batch_norm_backward),
    "layer_norm": Op(F.layer_norm_forward, F.layer_norm_backward),
    "rms_norm": Op(F.rms_norm_forward, F.rms_norm_backward),
    "group_norm": Op(F.group_norm_forward, F.group_norm_backward),
    "instance_norm": Op(F.instance_norm_forward, F.instance_norm_backward),
    "linear": Op(F.linear_forward, F.linear_backward),
    "conv2d": Op(F.conv2d_forward, F.conv2d_backward),
    "max_pool2d": Op(F.max_pool2d_forward, F.max_pool2d_backward),
    "avg_pool2d": Op(F.avg_pool2d_forward, F.avg_pool2d_backward),
    "relu": Op(F.relu_forward, F.relu_backward),
    "sigmoid": Op(F.sigmoid_forward, F.sigmoid_backward),
    "tanh": Op(F.tanh_forward, F.tanh_backward),
    "gelu": Op(F.gelu_forward, F.gelu_backward),
    "softmax": Op(F.softmax_forward, F.softmax_backward),
    "adam_update": Op(F.adam_update),
    "amsgrad_update": Op(
        F.adam_update
    ),  # Adam with AMSGrad: the same rule, with the running maximum
    "sgd_update": Op(F.sgd_update),
}

# Ops that exist only as a fast path: the caller runs its own reference when :meth:`Backend.fast_path` says
# there is none (batch norm + activation: the two ops in sequence, see normlab.nn.BatchNormAct).
FUSED_OPS = ("batch_norm_relu", "batch_norm_sigmoid")
_IN_PLACE = frozenset({"adam_update"})  # fast paths that write into their arrays
# ops with a numba-cuda kernel for CuPy arrays (normlab.kernels.cuda, same signatures as the reference)
CUDA_OPS = ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm")


def _cuda_op(name: str) -> Op:
    """The numba-cuda kernel of normalization ``name`` (imports neither CUDA nor numba-cuda yet)."""
    cuda = importlib.import_module("normlab.kernels.cuda")
    return Op(getattr(cuda, f"{name}_forward"), getattr(cuda, f"{name}_backward"))


def _numba_ops() -> dict[str, Op]:
    """The numba fast paths by op name (imports numba)."""
    fused = importlib.import_module("normlab.kernels.fused")
    layers = importlib.import_module("normlab.kernels.layers")
    norm = importlib.import_module("normlab.kernels.norm")
    optim = importlib.import_module("normlab.kernels.optim")
    table = {
        name: Op(getattr(norm, f"{name}_forward"), getattr(norm, f"{name}_backward"))
        for name in ("batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm")
    }
    for name in ("conv2d", "max_pool2d", "avg_pool2d", "relu", "sigmoid"):
        table[name] = Op(getattr(layers, f"{name}_forward"), getattr(layers, f"{name}_backward"))
    for name in FUSED_OPS:
        table[name] = Op(getattr(fused, f"{name}_forward"), getattr(fused, f"{name}_backward"))
    table["adam_update"] = Op(optim.adam_update)
    return table


@dataclass(frozen=True)
class Backend:
    """The record every layer and optimizer dispatches through: the fast paths by op name, and the dtypes
    they take.  The reference (:data:`REFERENCE`) is what any op resolves to outside them."""

    name: str  # "numba" or "reference"
    fast: Mapping[str, Op] = field(default_factory=dict)
    fast_dtypes: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))
    reason: str = ""  # why "auto" resolved to the reference, if it did

    def fast_path(self, name: str, *arrays: np.ndarray) -> Op | None:
        """The fast path of op ``name`` for these arrays (the first is the input), or ``None`` where there is
        none: no fast path registered, a dtype it does not take (float16), an empty input, or, for an update
        that writes in place, arrays that are not all contiguous, writeable and of the input's dtype; for an
        input of another array library, the CUDA kernel of a normalization on CuPy arrays, else ``None``."""
        x = arrays[0]
        if not isinstance(x, np.ndarray):  # another array library: the reference, or a CUDA kernel
            if name in CUDA_OPS and self.name != "reference" and array_api_compat.is_cupy_array(x):
                return _cuda_op(name)
            return None
        fast = self.fast.get(name)
        if fast is None:
            return None
        if x.dtype not in self.fast_dtypes or x.size == 0:
            return None
        if name in _IN_PLACE and not all(
            a.dtype == x.dtype and a.flags.c_contiguous and a.flags.writeable for a in arrays
        ):
            return None
        return fast

    def resolve(self, name: str, *arrays: np.ndarray) -> Op:
        """The implementation of op ``name`` for these arrays: its fast path, or else the reference."""
        fast = self.fast_path(name, *arrays)
        return fast if fast is not None else REFERENCE[name]


_active: Backend | None = None


def _requested() -> str:
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(CHOICES)}")
    return value


def use(name: str | None = None) -> Backend:
    """Select the backend: ``"numba"``, ``"reference"`` or ``"auto"``; ``None`` reads ``NORMLAB_KERNELS``
    again.  Returns the record.  Layers pick it up on their next forward; a backward always runs the op
    recorded with its forward."""
    global _active
    choice = _requested() if name is None else name
    if choice not in CHOICES:
        raise ValueError(
            f"normlab.kernels.use: expected one of {', '.join(CHOICES)}, got {choice!r}"
        )
    record = Backend("reference")
    if choice != "reference":
        try:
            record = Backend("numba", _numba_ops())
        except ImportError as exc:
            if choice == "numba":
                raise ImportError(
                    f"{ENV_VAR}=numba, but the numba kernels cannot be loaded: {exc}"
                ) from exc
            record = Backend("reference", reason=f"numba unavailable: {exc}")
    _active = record
    return record


def backend() -> Backend:
    """The active record (chosen on first use, see the module docstring)."""
    return _active if _active is not None else use()


def resolve(name: str, *arrays: np.ndarray) -> Op:
    """The implementation of op ``name`` for these arrays in the active backend (see :meth:`Backend.resolve`)."""
    return backend().resolve(name, *arrays)


def fast_path(name: str, *arrays: np.ndarray) -> Op | None:
    """The active backend's fast path of op ``name`` for these arrays, or ``None`` (see :meth:`Backend.fast_path`)."""
    return backend().fast_path(name, *arrays)


@contextlib.contextmanager
def training_threads() -> Iterator[None]:
    """Run the block with BLAS on one thread, leaving the numba kernels all of theirs.

    A training step alternates matrix products (OpenBLAS's thread pool) with numba kernels (numba's OpenMP
    pool) every few hundred microseconds.  Each pool's threads spin for a while after their work, so with
    both at full size the cores are oversubscribed and each parallel region waits for a descheduled thread:
    the ``bn-vs-plain`` MLP epoch measured 3.5 s with two BLAS threads against 0.27 s with one, on two cores.
    The products of these networks are small, so one BLAS thread loses little.  ``fit``, the lab and the
    benchmarks train inside this block; NumPy code outside it keeps its own thread count.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def backend_name() -> str:
    """``"numba"`` or ``"reference"``: the active backend (choosing it if not done yet)."""
    return backend().name


def describe() -> str:
    """One line for ``normlab info``: which kernels are in use, and why."""
    name = backend_name()
    requested = os.environ.get(ENV_VAR, "") or "unset"
    if name == "numba":
        import numba

        detail = (
            f"normalization, conv, pooling, activation and Adam kernels; numba {numba.__version__}, "
            f"{numba.get_num_threads()} threads"
        )
    else:
        reason = backend().reason
        detail = "NumPy reference (normlab.functional)" + (f"; {reason}" if reason else "")
    return f"{name} ({detail}; {ENV_VAR}={requested})"


__all__ = [
    "CHOICES",
    "CUDA_OPS",
    "ENV_VAR",
    "FUSED_OPS",
    "REFERENCE",
    "Backend",
    "Op",
    "backend",
    "backend_name",
    "describe",
    "fast_path",
    "resolve",
    "training_threads",
    "use",
]
