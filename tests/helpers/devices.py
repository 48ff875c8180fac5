"""array-api-strict as a second array library with two devices, the stand-in for CuPy on a GPU in the device
tests: ``DEVICE1`` refuses any conversion to NumPy, so a hidden NumPy call on the device path fails loudly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from normlab import nn

xs = pytest.importorskip("array_api_strict", reason="array-api-strict is a test dependency")

CPU, DEVICE1 = xs.Device("CPU_DEVICE"), xs.Device("device1")


def host_copy(a: Any) -> np.ndarray:
    """``a`` as a NumPy array (a strict array goes through its CPU device first)."""
    return a if isinstance(a, np.ndarray) else np.asarray(a.to_device(CPU))


def strict_copy(model: nn.Module, device: Any) -> nn.Module:
    """``model`` with every parameter and buffer copied into array-api-strict on ``device`` by hand (not
    through ``Module.to``, which some of the tests check)."""
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                p.data = xs.asarray(p.data, device=device)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = xs.asarray(b, device=device)
    return model


def on_device1(model: nn.Module) -> nn.Module:
    """``model`` copied to array-api-strict's ``device1``."""
    return strict_copy(model, DEVICE1)


@dataclass(frozen=True)
class Device:
    """How a test reaches a device: ``target`` for ``Module.to``, ``put`` (NumPy -> device array), ``get``
    (device array -> NumPy) and ``holds`` (whether an array lives there)."""

    target: Any
    put: Callable[[np.ndarray], Any]
    get: Callable[[Any], np.ndarray]
    holds: Callable[[Any], bool]


STRICT = Device(
    target=DEVICE1,
    put=lambda a: xs.asarray(a, device=DEVICE1),
    get=host_copy,
    holds=lambda a: getattr(a, "device", None) == DEVICE1,
)
