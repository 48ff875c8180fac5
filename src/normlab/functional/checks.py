"""Argument checks shared by the reference ops (:mod:`normlab.functional`) and the layers that dispatch to the
kernels (:mod:`normlab.nn`): each check is written once, and every message names the op or layer, the
argument, what was expected and what was received.

The kernels (:mod:`normlab.kernels`) check nothing: they receive arrays these checks have passed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from normlab.backend import as_param_dtype, check_float_array

Shape = tuple[int, ...]


def check_trailing(x: np.ndarray, normalized_shape: Sequence[int], where: str) -> None:
    """``x`` must end in the axes ``normalized_shape`` (layer norm, RMS norm)."""
    shape = tuple(normalized_shape)
    k = len(shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k :]) != shape:
        raise ValueError(
            f"{where}: expected input whose trailing dimensions are {shape} (normalized_shape), "
            f"got input of shape {x.shape}"
        )


def check_min_rank(x: np.ndarray, rank: int, layout: str, where: str) -> None:
    """``x`` must have at least ``rank`` axes, described by ``layout`` (e.g. ``"(N, C, *)"``)."""
    if x.ndim < rank:
        raise ValueError(f"{where}: expected input of shape {layout}, got shape {x.shape}")


def check_groups(x: np.ndarray, num_groups: object, where: str) -> int:
    """``num_groups`` as a positive int dividing the channel count of channels-first ``x`` (group norm)."""
    num_groups = check_positive_int(num_groups, "num_groups", where)
    if x.ndim < 2 or x.shape[1] % num_groups != 0:
        raise ValueError(
            f"{where}: expected input (N, C, *) with C divisible by num_groups={num_groups}, "
            f"got shape {x.shape}"
        )
    return num_groups


def check_given_stats(
    use_input_stats: bool, running_mean: object, running_var: object, flag: str, where: str
) -> None:
    """Without the input's statistics (``flag=False``), the running ones must be given."""
    if not use_input_stats and (running_mean is None or running_var is None):
        raise ValueError(f"{where}: {flag}=False needs running_mean and running_var, got None")


def check_gradient(dy: object, expected: Shape, where: str) -> np.ndarray:
    """``dy`` as a floating-point array of the output's shape ``expected``."""
    dy = check_float_array(dy, where, "gradient")
    if dy.shape != tuple(expected):
        raise ValueError(f"{where}: expected a gradient of shape {tuple(expected)}, got {dy.shape}")
    return dy


def input_stats_flag(
    use_input_stats: bool | None, training: bool | None, where: str
) -> tuple[bool, str]:
    """The one flag of batch norm, given as ``use_input_stats=`` or under PyTorch's name ``training=``
    (default True), and the name the caller used (for messages)."""
    if use_input_stats is not None and training is not None:
        raise TypeError(
            f"{where}: use_input_stats= and training= are the same flag; got both "
            f"({use_input_stats!r} and {training!r})"
        )
    if training is not None:
        return bool(training), "training"
    return (True if use_input_stats is None else bool(use_input_stats)), "use_input_stats"


# ----------------------------------------------------------------------------------- scalar arguments
def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_eps(eps: object, where: str) -> float:
    """``eps`` as a float: a finite real number >= 0 (a NaN or negative eps would distort every output)."""
    if (
        not isinstance(eps, numbers.Real)
        or isinstance(eps, (bool, np.bool_))
        or not math.isfinite(eps)
        or eps < 0
    ):
        raise ValueError(f"{where}: eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def check_positive_int(value: object, name: str, where: str) -> int:
    """``value`` as an int >= 1 (``True`` is not an integer here)."""
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_factor(value: object, name: str, where: str) -> float:
    """A momentum-like weight: a real number in [0, 1]."""
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, (bool, np.bool_))
        or not 0 <= value <= 1
    ):
        raise ValueError(f"{where}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def normalized_shape_arg(normalized_shape: object, where: str) -> Shape:
    """``normalized_shape`` as a tuple of positive ints; an int ``n`` means ``(n,)`` (as PyTorch)."""
    if _is_int(normalized_shape):
        shape: tuple[object, ...] = (normalized_shape,)
    elif isinstance(normalized_shape, (tuple, list)):
        shape = tuple(normalized_shape)
    else:
        raise TypeError(
            f"{where}: normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
        )
    if not shape or any(not _is_int(n) or n < 1 for n in shape):  # type: ignore[operator]
        raise ValueError(
            f"{where}: normalized_shape must be one or more positive integers, got {normalized_shape!r}"
        )
    return tuple(int(n) for n in shape)  # type: ignore[call-overload]


def axes_arg(axes: object, ndim: int, where: str) -> Shape:
    """``axes`` (an int or a sequence of ints, negative counting from the end) as sorted distinct axes
    of an array of rank ``ndim``."""
    raw = (axes,) if _is_int(axes) else axes
    if not isinstance(raw, (tuple, list)) or not raw or not all(_is_int(a) for a in raw):
        raise TypeError(
            f"{where}: axes must be an int or a non-empty sequence of ints, got {axes!r}"
        )
    if any(not -ndim <= a < ndim for a in raw):
        raise ValueError(
            f"{where}: axes must lie in [{-ndim}, {ndim}) for {ndim}-D input, got {axes!r}"
        )
    normalized = tuple(sorted(int(a) % ndim for a in raw))
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"{where}: axes must be distinct, got {axes!r}")
    return normalized


def param_dtype(dtype: object, where: str) -> np.dtype:
    """The ``dtype=`` of a layer constructor (float16, float32 or float64; None: float32)."""
    try:
        return as_param_dtype(dtype)
    except TypeError as err:
        raise TypeError(
            f"{where}: dtype must be float16, float32 or float64, got {dtype!r}"
        ) from err


# ----------------------------------------------------------------------------------- array arguments
def check_param(p: object, expected: Shape, name: str, where: str) -> np.ndarray | None:
    """An optional affine parameter (``weight``/``bias``): a floating-point array of shape ``expected``."""
    if p is None:
        return None
    p = check_float_array(p, where, name)
    if p.shape != tuple(expected):
        raise ValueError(f"{where}: expected {name} of shape {tuple(expected)}, got {p.shape}")
    return p


def check_statistic(s: object, expected: Shape, name: str, where: str) -> np.ndarray:
    """A given statistic (running mean or variance): a floating-point array of shape ``expected``."""
    s = check_float_array(s, where, name)
    if s.shape != tuple(expected):
        raise ValueError(f"{where}: expected {name} of shape {tuple(expected)}, got {s.shape}")
    return s


def check_cache(cache: object, kinds: type | tuple[type, ...], where: str) -> None:
    """A backward's ``cache`` must be what the matching forward returned."""
    if not isinstance(cache, kinds):
        raise TypeError(
            f"{where}: expected the cache the forward returned, got {type(cache).__name__} {cache!r:.80}"
        )
