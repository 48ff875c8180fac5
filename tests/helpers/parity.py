"""The one parity helper: the tolerance tables and the compare function behind every parity test, both the
PyTorch tables (``tests/nn/test_norm_parity.py``, ``tests/nn/test_layer_parity.py``) and the kernel-vs-reference
tables (``tests/kernels/``).

Each table maps a dtype to a :class:`Tolerance`.  Why each is what it is:

* ``TORCH_NORMS`` / ``TORCH_LAYERS``: normlab against ``torch.nn``.  float64 agrees to 1e-10; float32 to
  ``rtol=1e-4`` with an absolute floor (the libraries sum and round in different orders; a layer's matrix
  products round more than a normalization's statistics, accumulated in higher precision on both sides).
* ``KERNELS``: the numba kernels against the NumPy reference, float32 1e-5 and float64 1e-12 relative, with an
  absolute floor scaled by the largest finite reference magnitude (the kernels reassociate float64 sums, and a
  convolution's products run on a transposed column matrix).  Where a kernel is bit for bit equal, the tests
  say so with :func:`assert_same` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    scaled: bool = False  # atol multiplied by max(1, the largest finite |expected|)


TORCH_NORMS = {"float64": Tolerance(1e-10, 1e-10), "float32": Tolerance(1e-4, 2e-5)}
TORCH_LAYERS = {"float64": Tolerance(1e-10, 1e-10), "float32": Tolerance(1e-4, 1e-5)}
KERNELS = {
    "float64": Tolerance(1e-12, 1e-12, scaled=True),
    "float32": Tolerance(1e-5, 1e-5, scaled=True),
}


def _numpy(value: Any) -> Any:
    """A torch tensor as its NumPy array; anything else as it is."""
    detach = getattr(value, "detach", None)
    return value if detach is None else detach().numpy()


def assert_parity(
    actual: Any,
    expected: Any,
    table: dict[str, Tolerance],
    what: str = "",
    *,
    dtype: Any = None,
) -> None:
    """``actual`` equals ``expected`` (a NumPy array or a torch tensor) within ``table``'s tolerance for
    ``dtype`` (default: ``expected``'s dtype): the same ``None``-ness, shape and dtype, then the values."""
    expected = _numpy(expected)
    assert (actual is None) == (expected is None), f"{what}: one side is None"
    if expected is None:
        return
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    tol = table[np.dtype(expected.dtype if dtype is None else dtype).name]
    atol = tol.atol
    if tol.scaled:
        finite = np.abs(expected[np.isfinite(expected)])
        atol *= max(1.0, float(finite.max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol.rtol, atol=atol, err_msg=what)


def assert_same(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Bit for bit: the same shape, dtype and values (NaN where NaN)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    np.testing.assert_array_equal(actual, expected, err_msg=what)
