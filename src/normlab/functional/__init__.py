"""Stateless math: every op is a pair ``y, cache = op_forward(...)`` / ``grads = op_backward(dy, cache)``.

This package is the readable reference.  Fast kernels (``normlab.kernels``) have the same signatures and are
tested equal to it.
"""

from normlab.functional.norm import (
    NormCache,
    NormGrads,
    batch_norm_backward,
    batch_norm_forward,
    centered_moments,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    inverse_std,
    layer_norm_backward,
    layer_norm_forward,
    moments,
    rms_norm_backward,
    rms_norm_forward,
    unbiased_variance,
    update_running_stats,
)

__all__ = [
    "NormCache",
    "NormGrads",
    "batch_norm_backward",
    "batch_norm_forward",
    "centered_moments",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm_backward",
    "instance_norm_forward",
    "inverse_std",
    "layer_norm_backward",
    "layer_norm_forward",
    "moments",
    "rms_norm_backward",
    "rms_norm_forward",
    "unbiased_variance",
    "update_running_stats",
]
