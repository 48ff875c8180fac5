"""Array namespace and dtype policy.

normlab computes with NumPy.  The dtype policy is the one rule every layer follows:

* parameters and buffers are float32 unless a layer is built with ``dtype=np.float64``;
* statistics (means, variances) are accumulated in at least float32: float16/bfloat16-like inputs are
  promoted to float32 for the arithmetic and the result is cast back; float64 stays float64;
* integer, boolean and complex inputs are rejected with a ``TypeError`` that names the layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

xp = np  # the array namespace; a GPU backend would swap this for cupy

DEFAULT_DTYPE = np.dtype(np.float32)
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype arithmetic on an array of ``dtype`` is carried out in: float64 stays, all else float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def check_float_array(x: object, where: str, what: str = "input") -> np.ndarray:
    """Return ``x`` as an ndarray if it holds floating-point numbers, else raise ``TypeError``."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype not in FLOAT_DTYPES:
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
