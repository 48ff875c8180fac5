"""Array namespace and dtype policy.

normlab computes with NumPy by default.  The reference (:mod:`normlab.functional`) is written against the
*array namespace of its inputs* (the Python Array API standard, through ``array-api-compat``): called with CuPy
arrays it runs on the GPU, with ``array-api-strict`` arrays it proves that it uses nothing but the standard.
:func:`namespace` returns that namespace.  The dtype policy is the one rule every layer follows:

* parameters and buffers are float32 unless a layer is built with ``dtype=np.float64``;
* statistics (means, variances) are accumulated in at least float32: float16/bfloat16-like inputs are
  promoted to float32 for the arithmetic and the result is cast back; float64 stays float64;
* integer, boolean and complex inputs are rejected with a ``TypeError`` that names the layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

xp = np  # the default array namespace (arrays made from Python scalars and lists)
# NumPy 2.1+ has every name of the standard the reference uses (np.astype, np.concat, np.permute_dims, ...):
# called directly it costs nothing extra; older NumPy gets them from array-api-compat's wrapper
if np.lib.NumpyVersion(np.__version__) >= "2.1.0":
    np_xp: ModuleType = np
else:  # pragma: no cover - NumPy < 2.1
    from array_api_compat import numpy as np_xp

DEFAULT_DTYPE = np.dtype(np.float32)
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_FLOAT_NAMES = ("float16", "float32", "float64")


# what NumPy's namespace takes: its arrays and scalars, Python numbers, lists and tuples
_NUMPY_INPUTS = (np.ndarray, np.generic, int, float, complex, list, tuple)


def namespace(*arrays: object) -> ModuleType:
    """The Array API namespace of ``arrays`` (``None`` and Python scalars ignored): NumPy itself for NumPy
    arrays (``array_api_compat.numpy`` before NumPy 2.1), array-api-compat's CuPy for CuPy arrays, and so on.

    Arrays of two namespaces are refused with ``TypeError``.  NumPy inputs, the common case, skip the general
    lookup (a few microseconds per call).
    """
    for a in arrays:
        if a is not None and not isinstance(a, _NUMPY_INPUTS):
            found = [
                a for a in arrays if a is not None and not isinstance(a, (int, float, complex))
            ]
            return array_api_compat.array_namespace(*found)
    return np_xp


def is_numpy(xp: ModuleType) -> bool:
    """Whether ``xp`` is NumPy (plain or through array-api-compat)."""
    return xp is np or getattr(xp, "__name__", "") == "array_api_compat.numpy"


def device_of(x: Any) -> Any:
    """The device ``x`` lives on (``"cpu"`` for NumPy arrays)."""
    return array_api_compat.device(x)


def compute_dtype(dtype: Any, xp: ModuleType | None = None) -> Any:
    """The dtype arithmetic on an array of ``dtype`` is carried out in: float64 stays, all else float32.

    ``xp`` is the array namespace (default NumPy, which gives a ``np.dtype``)."""
    if xp is None or is_numpy(xp):
        return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)
    return xp.float64 if dtype == xp.float64 else xp.float32


def is_float_dtype(dtype: Any, xp: ModuleType) -> bool:
    """Whether ``dtype`` is one of the floating-point dtypes normlab computes with (float16/32/64 where the
    namespace has them; not longdouble, not complex)."""
    return any(hasattr(xp, name) and dtype == getattr(xp, name) for name in _FLOAT_NAMES)


def check_float_array(x: object, where: str, what: str = "input") -> Any:
    """Return ``x`` as an array (of its own namespace; a NumPy array for Python scalars, lists and other
    array-likes) if it holds floating-point numbers, else raise ``TypeError``."""
    if isinstance(x, np.ndarray):
        float_dtype = x.dtype in FLOAT_DTYPES
    elif array_api_compat.is_array_api_obj(x) and not isinstance(x, np.generic):
        float_dtype = is_float_dtype(x.dtype, array_api_compat.array_namespace(x))
    else:
        x = np.asarray(x)
        float_dtype = x.dtype in FLOAT_DTYPES
    if not float_dtype:
        raise TypeError(
            f"{where}: expected a floating-point {what} (float16, float32 or float64), "
            f"got dtype {x.dtype} with shape {tuple(x.shape)}"
        )
    return x


def as_param_dtype(dtype: object | None) -> np.dtype:
    """Validate the ``dtype=`` argument of a layer constructor."""
    if dtype is None:
        return DEFAULT_DTYPE
    dt = np.dtype(dtype)  # type: ignore[arg-type]
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"parameter dtype must be float16, float32 or float64, got {dt}")
    return dt


_grad_enabled = True


def is_grad_enabled() -> bool:
    """Whether forward passes keep what backward needs (see :func:`no_grad`)."""
    return _grad_enabled


@contextmanager
def no_grad() -> Iterator[None]:
    """Forward passes inside this block keep no cache: cheaper inference, and backward is refused."""
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = previous


def to_host(a: Any) -> np.ndarray:
    """``a`` as a NumPy array in host memory: NumPy arrays as they are, CuPy arrays copied from the GPU, and
    arrays of a namespace that refuses ``np.asarray`` on their device (array-api-strict's ``device1``) moved
    first to the namespace's default device (its host).  Used to write checkpoints and to read metrics."""
    if isinstance(a, np.ndarray):
        return a
    if array_api_compat.is_cupy_array(a):
        return a.get()
    try:
        return np.asarray(a)
    except (TypeError, RuntimeError, ValueError, BufferError):
        host = array_api_compat.array_namespace(a).__array_namespace_info__().default_device()
        return np.asarray(array_api_compat.to_device(a, host))


def like(value: Any, reference: Any) -> Any:
    """``value`` (a NumPy array) as an array of ``reference``'s namespace, on its device; NumPy unchanged."""
    if isinstance(reference, np.ndarray):
        return value
    xp = array_api_compat.array_namespace(reference)
    return xp.asarray(value, device=device_of(reference))


def copy_array(a: Any) -> Any:
    """A copy of ``a`` in its own namespace and device."""
    if isinstance(a, np.ndarray):
        return a.copy()
    return array_api_compat.array_namespace(a).asarray(a, copy=True)


_HOST_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


def host_dtype(a: Any) -> np.dtype:
    """The NumPy dtype matching the dtype of array ``a`` (of any namespace)."""
    if isinstance(a, np.ndarray):
        return a.dtype
    xp = array_api_compat.array_namespace(a)
    for name in _HOST_DTYPES:
        if hasattr(xp, name) and a.dtype == getattr(xp, name):
            return np.dtype(name)
    raise TypeError(f"no NumPy dtype matches {a.dtype}")
