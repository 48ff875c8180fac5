"""Layers with state: ``Module``/``Parameter`` and the normalization layers."""

from normlab.nn.lifecycle import (
    batch_norm_layers,
    freeze_batch_norm,
    recalibrate_batch_norm,
    unfreeze_batch_norm,
)
from normlab.nn.module import IncompatibleKeys, Module, Parameter, StateDictError
from normlab.nn.norm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
    momentum_from_keras,
    momentum_to_keras,
)

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "IncompatibleKeys",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "Module",
    "Parameter",
    "RMSNorm",
    "StateDictError",
    "batch_norm_layers",
    "freeze_batch_norm",
    "momentum_from_keras",
    "momentum_to_keras",
    "recalibrate_batch_norm",
    "unfreeze_batch_norm",
]
