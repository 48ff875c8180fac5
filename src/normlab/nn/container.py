"""``Sequential``: children applied in order; backward runs them in reverse."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from normlab.nn.module import Module
from normlab.nn.registry import build_module, module_spec, register_module


@register_module
class Sequential(Module):
    """A chain of modules: ``forward`` feeds each child's output to the next, ``backward`` passes the
    gradient through the children in reverse order (the chain rule, one layer at a time).

    Children are registered under "0", "1", ..., so state-dict keys are PyTorch's (``0.weight``,
    ``1.running_mean``, ...).  Indexing returns a child (``model[0]``) or, for a slice, a new ``Sequential``
    sharing the same child objects.

    After ``requires_input_grad_(False)`` (the input is data), the first layer is told so and may skip
    computing dL/dx; ``backward`` then returns ``None``.  (Fusing a batch norm with the activation after it is
    a separate step: :func:`normlab.nn.fuse`.)

    Examples:
        >>> import numpy as np
        >>> from normlab import nn
        >>> model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3, rng=1))
        >>> model(np.ones((2, 4), np.float32)).shape
        (2, 3)
        >>> list(model.state_dict())[:3]
        ['0.weight', '0.bias', '1.weight']
    """

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is a {type(layer).__name__}, not a Module")
            self.add_module(str(i), layer)

    def append(self, layer: Module) -> Sequential:
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append: expected a Module, got {type(layer).__name__}")
        self.add_module(str(len(self)), layer)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def __getitem__(self, index: int | slice) -> Any:
        layers = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(*layers[index])
        if not -len(layers) <= index < len(layers):
            raise IndexError(f"Sequential index {index} out of range for {len(layers)} layers")
        return layers[index]

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self._modules.values():
            x = layer(x)
        return x

    def backward(self, grad_output: np.ndarray) -> np.ndarray | None:
        """The gradient through the children in reverse order; ``None`` when ``requires_input_grad`` is off
        and the first layer skipped the input gradient."""
        for layer in reversed(self._modules.values()):
            grad_output = layer.backward(grad_output)
        return grad_output

    def requires_input_grad_(self, requires: bool = True) -> Sequential:
        """As :meth:`Module.requires_input_grad_`, passed on to the first layer (call it after building)."""
        super().requires_input_grad_(requires)
        layers = list(self._modules.values())
        if layers:
            layers[0].requires_input_grad_(requires)
        return self

    def get_config(self) -> dict[str, Any]:
        return {"layers": [module_spec(layer) for layer in self]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        layers = config.get("layers")
        if set(config) != {"layers"} or not isinstance(layers, list):
            raise ValueError(
                f"Sequential config must be {{'layers': [...]}}, got keys {sorted(config)}"
            )
        return cls(*(build_module(spec) for spec in layers))
