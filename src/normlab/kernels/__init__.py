"""Fast paths for the hot ops, and the choice between them and the readable reference.

Three namespaces, chosen together:

* :func:`ops`: the normalization ops, with the names of :mod:`normlab.functional.norm`
  (``batch_norm_forward``, ``batch_norm_backward``, ``layer_norm_*``, ``group_norm_*``, ``instance_norm_*``,
  ``rms_norm_*``) plus ``batch_norm_activation_*`` (batch norm with a ReLU or sigmoid fused into it);
* :func:`layer_ops`: convolution, pooling and the elementwise activations, with the names of
  :mod:`normlab.functional` (``conv2d_*``, ``max_pool2d_*``, ``avg_pool2d_*``, ``relu_*``, ``sigmoid_*``);
* :func:`optim_ops`: the optimizers' update rules with the names of :mod:`normlab.optim.updates`
  (``adam_update``, used by Adam and AdamW; plain SGD is one in-place NumPy update and needs no kernel).

Which implementation each returns:

* ``NORMLAB_KERNELS`` unset, empty or ``auto``: the numba kernels (:mod:`normlab.kernels.norm`) when numba
  imports, otherwise the reference;
* ``NORMLAB_KERNELS=numba``: the numba kernels, or an ``ImportError`` saying why they cannot load;
* ``NORMLAB_KERNELS=reference``: the NumPy reference (:mod:`normlab.functional.norm`,
  :mod:`normlab.functional`, :mod:`normlab.optim.updates`).

The numba modules are :mod:`normlab.kernels.norm`, :mod:`normlab.kernels.layers` and
:mod:`normlab.kernels.optim`; each is tested equal to its reference.

The choice is made on the first call of :func:`ops` (the first forward of a layer), not at ``import normlab``,
so importing stays fast; numba compiles each kernel on its first call for a dtype and caches the machine code
on disk, so later processes load it instead of compiling.  :func:`use` changes the choice at run time.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType

ENV_VAR = "NORMLAB_KERNELS"
CHOICES = ("auto", "numba", "reference")

_active: ModuleType | None = None
_active_layers: ModuleType | None = None
_active_optim: ModuleType | None = None
_active_name: str | None = None
_reason: str = ""  # why auto fell back to the reference, if it did


def _requested() -> str:
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(CHOICES)}")
    return value


def use(name: str | None = None) -> ModuleType:
    """Select the ops: ``"numba"``, ``"reference"`` or ``"auto"``; ``None`` reads ``NORMLAB_KERNELS`` again.

    Returns the selected namespace.  Layers pick it up on their next forward; a backward always runs the op
    that belongs to the cache its forward made.
    """
    global _active, _active_layers, _active_optim, _active_name, _reason
    choice = _requested() if name is None else name
    if choice not in CHOICES:
        raise ValueError(
            f"normlab.kernels.use: expected one of {', '.join(CHOICES)}, got {choice!r}"
        )
    _reason = ""
    chosen = "reference"
    if choice != "reference":
        try:
            modules = [importlib.import_module(m) for m in _NUMBA_MODULES]
            chosen = "numba"
        except ImportError as exc:
            if choice == "numba":
                raise ImportError(
                    f"{ENV_VAR}=numba, but the numba kernels cannot be loaded: {exc}"
                ) from exc
            _reason = f"numba unavailable: {exc}"
    if chosen == "reference":
        modules = [importlib.import_module(m) for m in _REFERENCE_MODULES]
    _active, _active_layers, _active_optim = modules
    _active_name = chosen
    return _active


# (normalization ops, layer ops, optimizer updates) of each implementation
_NUMBA_MODULES = ("normlab.kernels.norm", "normlab.kernels.layers", "normlab.kernels.optim")
_REFERENCE_MODULES = ("normlab.functional.norm", "normlab.functional", "normlab.optim.updates")


def ops() -> ModuleType:
    """The active normalization ops (chosen on first use, see the module docstring)."""
    return _active if _active is not None else use()


def layer_ops() -> ModuleType:
    """The active convolution, pooling and activation ops (chosen with :func:`ops`)."""
    if _active_layers is None:
        use()
    assert _active_layers is not None
    return _active_layers


def optim_ops() -> ModuleType:
    """The active optimizer update rules (chosen with :func:`ops`)."""
    if _active_optim is None:
        use()
    assert _active_optim is not None
    return _active_optim


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
    """``"numba"`` or ``"reference"``: which ops :func:`ops` returns (choosing them if not done yet)."""
    ops()
    assert _active_name is not None
    return _active_name


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
        detail = "NumPy reference (normlab.functional)" + (f"; {_reason}" if _reason else "")
    return f"{name} ({detail}; {ENV_VAR}={requested})"


__all__ = [
    "CHOICES",
    "ENV_VAR",
    "backend_name",
    "describe",
    "layer_ops",
    "ops",
    "optim_ops",
    "training_threads",
    "use",
]
