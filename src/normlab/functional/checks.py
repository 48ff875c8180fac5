"""Argument checks shared by the reference ops (:mod:`normlab.functional`) and the layers that dispatch to the
kernels (:mod:`normlab.nn`): each check is written once, and every message names the op or layer, the
argument, what was expected and what was received.

The kernels (:mod:`normlab.kernels`) check nothing: they receive arrays these checks have passed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from normlab.backend import check_float_array

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


def check_groups(x: np.ndarray, num_groups: int, where: str) -> None:
    """Channels-first ``x`` whose channel count is divisible by ``num_groups`` (group norm)."""
    if x.ndim < 2 or x.shape[1] % num_groups != 0:
        raise ValueError(
            f"{where}: expected input (N, C, *) with C divisible by num_groups={num_groups}, "
            f"got shape {x.shape}"
        )


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
