"""A NumPy copy of a model that lives on a device, for the tools that read a model instead of training it.

ONNX and PyTorch export, batch-norm folding and the doctor work on NumPy arrays: given a model on a GPU (CuPy)
or another array library's device, they examine :func:`host_copy` of it, and the model itself is not touched.
Only parameters, gradients and buffers are copied from the device; forward caches are dropped.
"""

from __future__ import annotations

import copy
from typing import Any

import array_api_compat
import numpy as np

from normlab.backend import device_of, to_host
from normlab.nn.module import Module


def _arrays(model: Module) -> list[Any]:
    out: list[Any] = []
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                out += [p.data] + ([] if p.grad is None else [p.grad])
        out += [b for b in m._buffers.values() if b is not None]
    return out


def on_host(model: Module) -> bool:
    """Whether every parameter, gradient and buffer of ``model`` is a NumPy array."""
    return all(isinstance(a, np.ndarray) for a in _arrays(model))


def host_copy(model: Module) -> Module:
    """``model`` itself when it is all NumPy; else a deep copy whose arrays are NumPy copies of its own
    (from the GPU, or through the device library's host device), in the same modes, without forward caches."""
    if on_host(model):
        return model
    memo: dict[int, Any] = {}
    for a in _arrays(model):
        memo[id(a)] = np.array(to_host(a), copy=True)
    for m in model.modules():  # a forward's cache holds device arrays the copy does not need
        cache = m.__dict__.get("_cache")
        if cache is not None:
            memo[id(cache)] = None
    return copy.deepcopy(model, memo)


def device_target(model: Module) -> Any:
    """What ``Module.to`` takes to bring a NumPy model to where ``model`` lives: ``"cpu"``, ``"cuda:N"``, or
    the device object of ``model``'s array library."""
    first = next(iter(_arrays(model)), None)
    if first is None or isinstance(first, np.ndarray):
        return "cpu"
    if array_api_compat.is_cupy_array(first):
        return f"cuda:{first.device.id}"
    return device_of(first)
