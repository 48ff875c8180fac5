r"""Inverted dropout as a forward/backward pair.

In training each value is kept with probability :math:`1 - p` and the kept values are scaled by
:math:`1 / (1 - p)`, so the expected output equals the input and nothing needs rescaling at test time:

.. math::

    m_i \sim \mathrm{Bernoulli}(1 - p), \qquad y = x \odot \frac{m}{1 - p}, \qquad
    \frac{\partial L}{\partial x} = g \odot \frac{m}{1 - p}

Outside training (or with ``p = 0``) dropout is the identity.  ``p = 1`` drops everything (output 0).  The mask
comes from the generator passed in, never from NumPy's global random state; it is drawn on the host and moved
to the input's device, so one seed gives the same mask on every device.  The rest uses the Array API namespace
``xp`` of the input (see :func:`normlab.backend.namespace`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normlab.backend import check_float_array, compute_dtype, device_of, namespace


class DropoutCache(NamedTuple):
    scale: np.ndarray | None  # m / (1 - p) in the compute dtype; None when dropout was the identity
    input_shape: tuple[int, ...]
    input_dtype: np.dtype


def check_probability(p: object, where: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{where}: dropout probability p must be in [0, 1], got {p!r}")
    return float(p)


def dropout_forward(
    x: np.ndarray, p: float, rng: np.random.Generator, training: bool = True
) -> tuple[np.ndarray, DropoutCache]:
    """Zero each value of ``x`` with probability ``p`` (mask drawn from ``rng``) and scale the rest by
    ``1 / (1 - p)``; the identity when ``training`` is False or ``p == 0`` (no random numbers drawn)."""
    x = check_float_array(x, "dropout")
    p = check_probability(p, "dropout")
    if not training or p == 0.0:
        return x, DropoutCache(None, tuple(x.shape), x.dtype)
    xp = namespace(x)
    ct = compute_dtype(x.dtype, xp)
    keep = xp.asarray(rng.random(x.shape) >= p, device=device_of(x))  # P(keep) = 1 - p
    scale = xp.astype(keep, ct) * (0.0 if p == 1.0 else 1.0 / (1.0 - p))
    y = xp.astype(xp.astype(x, ct, copy=False) * scale, x.dtype, copy=False)
    return y, DropoutCache(scale, tuple(x.shape), x.dtype)


def dropout_backward(dy: np.ndarray, cache: DropoutCache) -> np.ndarray:
    """``dx = dy * m / (1 - p)`` with the forward's mask."""
    shape = tuple(dy.shape) if hasattr(dy, "shape") else np.shape(dy)
    if shape != cache.input_shape:
        raise ValueError(
            f"dropout backward: expected a gradient of shape {cache.input_shape}, got {shape}"
        )
    xp = namespace(dy, cache.scale)
    if cache.scale is None:
        return xp.asarray(dy, dtype=cache.input_dtype)
    g = xp.asarray(dy, dtype=cache.scale.dtype)
    return xp.astype(g * cache.scale, cache.input_dtype, copy=False)
