"""Fast paths for the normalization ops, and the choice between them and the readable reference.

:func:`ops` returns the namespace the layers call, with the names of :mod:`normlab.functional.norm`
(``batch_norm_forward``, ``batch_norm_backward``, ``layer_norm_*``, ``group_norm_*``, ``instance_norm_*``,
``rms_norm_*``):

* ``NORMLAB_KERNELS`` unset, empty or ``auto``: the numba kernels (:mod:`normlab.kernels.norm`) when numba
  imports, otherwise the reference;
* ``NORMLAB_KERNELS=numba``: the numba kernels, or an ``ImportError`` saying why they cannot load;
* ``NORMLAB_KERNELS=reference``: the NumPy reference, :mod:`normlab.functional.norm`.

The choice is made on the first call of :func:`ops` (the first forward of a layer), not at ``import normlab``,
so importing stays fast; numba compiles each kernel on its first call for a dtype and caches the machine code
on disk, so later processes load it instead of compiling.  :func:`use` changes the choice at run time.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

ENV_VAR = "NORMLAB_KERNELS"
CHOICES = ("auto", "numba", "reference")

_active: ModuleType | None = None
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
    global _active, _active_name, _reason
    choice = _requested() if name is None else name
    if choice not in CHOICES:
        raise ValueError(
            f"normlab.kernels.use: expected one of {', '.join(CHOICES)}, got {choice!r}"
        )
    _reason = ""
    if choice == "reference":
        module, chosen = importlib.import_module("normlab.functional.norm"), "reference"
    else:
        try:
            module, chosen = importlib.import_module("normlab.kernels.norm"), "numba"
        except ImportError as exc:
            if choice == "numba":
                raise ImportError(
                    f"{ENV_VAR}=numba, but the numba kernels cannot be loaded: {exc}"
                ) from exc
            module, chosen = importlib.import_module("normlab.functional.norm"), "reference"
            _reason = f"numba unavailable: {exc}"
    _active, _active_name = module, chosen
    return module


def ops() -> ModuleType:
    """The active normalization ops (chosen on first use, see the module docstring)."""
    return _active if _active is not None else use()


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

        detail = f"numba {numba.__version__}, {numba.get_num_threads()} threads"
    else:
        detail = "NumPy reference (normlab.functional)" + (f"; {_reason}" if _reason else "")
    return f"{name} ({detail}; {ENV_VAR}={requested})"


__all__ = ["CHOICES", "ENV_VAR", "backend_name", "describe", "ops", "use"]
