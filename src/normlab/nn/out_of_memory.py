"""Out-of-memory errors that say where: which layer, which pass, how much was asked for, what the device has.

NumPy and CuPy both raise a ``MemoryError`` subclass when an allocation fails, with a message about the bytes
only ("Unable to allocate 1.5 GiB ...", "Out of memory allocating 1,610,612,736 bytes ...").  In a model of
twenty layers that leaves the user guessing.  Every module's ``forward`` and ``backward`` is wrapped (see
``Module.__init_subclass__``) so that the first failed allocation becomes an :class:`OutOfMemoryError` that
names the layer where it happened, its path in the model, the pass, the size of the failed allocation, the
input's shape, and what memory the device had left.  It is still a ``MemoryError``: ``except MemoryError``
keeps working.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np

from normlab.backend import device_of

# CuPy: "Out of memory allocating 1,610,612,736 bytes (allocated so far: ...)"
_CUPY_BYTES = re.compile(r"allocating ([\d,]+) bytes")


class OutOfMemoryError(MemoryError):
    """A failed allocation, said where it failed.

    Attributes: ``where`` (the layer or operation, e.g. ``"Linear(in_features=8, ...)"``), ``path`` (its
    name inside the model, ``""`` for the model itself, ``None`` when unknown), ``phase`` (``"forward"``,
    ``"backward"``, ...), ``requested`` (bytes of the allocation that failed, ``None`` when the library did
    not say), ``device`` and ``detail`` (input shapes, the device's free memory).
    """

    def __init__(
        self,
        where: str,
        phase: str,
        requested: int | None,
        device: str,
        detail: str,
        owner: object = None,
    ) -> None:
        self.where, self.phase, self.requested, self.device = where, phase, requested, device
        self.detail, self.owner, self.path = detail, owner, None
        super().__init__(self._message())

    def _message(self) -> str:
        at = f" (at '{self.path}' in the model)" if self.path else ""
        amount = (
            f"allocating {format_bytes(self.requested)}"
            if self.requested is not None
            else "an allocation"
        )
        return (
            f"{self.where}{at}: out of memory in {self.phase} on {self.device}: {amount} failed"
            f"{'; ' + self.detail if self.detail else ''}. Use a smaller batch, a smaller model, or a "
            "device with more memory"
        )

    def locate(self, root: Any) -> None:
        """Name the failing module by its path inside ``root`` (a model that contains it), if found."""
        if self.owner is None or self.owner is root:
            return
        for name, module in root.named_modules():
            if module is self.owner:
                self.path = name
                self.args = (self._message(),)
                return


def format_bytes(n: int) -> str:
    """``1610612736`` → ``"1.50 GiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def requested_bytes(err: MemoryError) -> int | None:
    """The size of the allocation that failed, as the array library reported it (NumPy keeps it on the
    exception, CuPy in its message); ``None`` when it is not known."""
    total = getattr(err, "_total_size", None)  # NumPy's _ArrayMemoryError
    if isinstance(total, int):
        return total
    found = _CUPY_BYTES.search(str(err))
    return int(found.group(1).replace(",", "")) if found else None


def device_name(x: Any) -> str:
    """``"cpu"``, ``"cuda:0"``, or the device as its library writes it."""
    if isinstance(x, np.ndarray):
        return "cpu"
    if array_api_compat.is_cupy_array(x):
        return f"cuda:{x.device.id}"
    return str(device_of(x))


def memory_left(device: str) -> str:
    """What the device has, for the message: free and total bytes where they can be read, else ``""``."""
    try:
        if device == "cpu":
            info = dict(
                line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()
            )
            free = int(info["MemAvailable"].split()[0]) * 1024
            total = int(info["MemTotal"].split()[0]) * 1024
        elif device.startswith("cuda:"):
            import cupy

            with cupy.cuda.Device(int(device.partition(":")[2])):
                free, total = cupy.cuda.runtime.memGetInfo()
        else:
            return ""
    except (OSError, KeyError, ValueError, ImportError, RuntimeError):
        return ""  # not Linux, or the driver is gone: the message says less
    left = f"{device} has {format_bytes(free)} free of {format_bytes(total)}"
    if device == "cpu":
        limit = _address_space_limit()
        if limit is not None:
            left += f", and this process may map at most {format_bytes(limit)} (ulimit -v)"
    return left


def _address_space_limit() -> int | None:
    """The process's address-space limit (``ulimit -v``), ``None`` when there is none."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def describe_arrays(arrays: tuple[Any, ...], label: str = "input") -> str:
    """``"input (256, 64, 56, 56) float32, 49.00 MiB"`` for the first array among ``arrays``."""
    for a in arrays:
        if hasattr(a, "shape") and hasattr(a, "dtype") and not isinstance(a, np.generic):
            nbytes = getattr(a, "nbytes", None)
            size = f", {format_bytes(nbytes)}" if isinstance(nbytes, int) else ""
            return f"{label} {tuple(a.shape)} {a.dtype}{size}"
    return ""


def annotate(
    err: MemoryError,
    where: str,
    phase: str,
    arrays: tuple[Any, ...],
    owner: object = None,
    device: str | None = None,
) -> OutOfMemoryError:
    """The :class:`OutOfMemoryError` for ``err``, raised in ``phase`` of ``where`` on ``arrays`` (on their
    device unless ``device`` says where the memory was wanted)."""
    if device is None:
        device = next((device_name(a) for a in arrays if hasattr(a, "shape")), "cpu")
    label = "grad_output" if phase == "backward" else "input"
    detail = "; ".join(
        part for part in (describe_arrays(arrays, label), memory_left(device)) if part
    )
    return OutOfMemoryError(where, phase, requested_bytes(err), device, detail, owner)


def _describe(module: Any) -> str:
    """``Linear(in_features=8, ...)``; the class name alone if ``extra_repr`` fails (it must not hide the
    out-of-memory error being reported)."""
    try:
        return f"{type(module).__name__}({module.extra_repr()})"
    except Exception:
        return type(module).__name__


def reports_out_of_memory(method: Callable[..., Any], phase: str) -> Callable[..., Any]:
    """Wrap a module's ``forward`` or ``backward``: a ``MemoryError`` raised inside it becomes an
    :class:`OutOfMemoryError` naming the innermost module it came from and, as it passes up through the
    modules that contain that one, its path from the outermost."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OutOfMemoryError as err:
            err.locate(self)
            raise
        except MemoryError as err:
            raise annotate(err, _describe(self), phase, args, owner=self) from err

    wrapper._reports_out_of_memory = True  # type: ignore[attr-defined]
    return wrapper
