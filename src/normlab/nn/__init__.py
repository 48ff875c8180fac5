"""Layers with state: ``Module``/``Parameter``, the normalization layers, network layers, ``Sequential``,
losses and initializers."""

from normlab.nn import init
from normlab.nn.activation import GELU, ReLU, Sigmoid, Softmax, Tanh
from normlab.nn.container import Sequential
from normlab.nn.fusion import BatchNormAct, fuse
from normlab.nn.layers import (
    AvgPool2d,
    CachedLayer,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    dropout_generators,
)
from normlab.nn.lifecycle import (
    batch_norm_layers,
    freeze_batch_norm,
    recalibrate_batch_norm,
    unfreeze_batch_norm,
)
from normlab.nn.loss import CrossEntropyLoss, MSELoss
from normlab.nn.module import IncompatibleKeys, Module, Parameter, StateDictError, check_device
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
from normlab.nn.out_of_memory import OutOfMemoryError
from normlab.nn.registry import build_module, module_spec, register_module, registered_modules
from normlab.nn.variants import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, WSConv2d

# the normalization layers can be rebuilt from a saved architecture too
for _norm_layer in (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
):
    register_module(_norm_layer)
del _norm_layer

from normlab.nn.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm  # noqa: E402

__all__ = [
    "GELU",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "CachedLayer",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "GroupNorm",
    "IncompatibleKeys",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "Linear",
    "MSELoss",
    "MaxPool2d",
    "Module",
    "OutOfMemoryError",
    "Parameter",
    "RMSNorm",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "StateDictError",
    "Tanh",
    "WSConv2d",
    "batch_norm_layers",
    "build_module",
    "check_device",
    "dropout_generators",
    "freeze_batch_norm",
    "fuse",
    "init",
    "module_spec",
    "momentum_from_keras",
    "momentum_to_keras",
    "recalibrate_batch_norm",
    "register_module",
    "registered_modules",
    "unfreeze_batch_norm",
]
__all__ += ["SyncBatchNorm", "convert_sync_batchnorm"]
