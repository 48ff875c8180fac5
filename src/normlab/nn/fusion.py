"""Fusion as an explicit step: :func:`fuse` returns a model in which each batch norm directly followed by a
ReLU or sigmoid runs as one op (as PyTorch's ``fuse_modules``), with the same results.

The fused model holds the *same* layer objects as the model it was made from (same ``Parameter`` objects, same
running-statistics buffers, same mode), so training the fused model trains the original; only the containers
are new.  Its state-dict keys differ (``1.bn.weight``); save and load through the original model.

Examples:
    >>> import numpy as np
    >>> from normlab import nn
    >>> model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3, rng=1))
    >>> fused = nn.fuse(model)
    >>> [type(layer).__name__ for layer in fused]
    ['Linear', 'BatchNormAct', 'Linear']
    >>> fused[1].bn is model[1] and fused[0] is model[0]
    True
"""

from __future__ import annotations

import numpy as np

from normlab import kernels
from normlab.nn.activation import ReLU, Sigmoid
from normlab.nn.container import Sequential
from normlab.nn.module import Module
from normlab.nn.norm import BatchNorm1d, BatchNorm2d, BatchNorm3d

_BATCH_NORMS = (BatchNorm1d, BatchNorm2d, BatchNorm3d)
_FUSED_OP = {
    ReLU: "batch_norm_relu",
    Sigmoid: "batch_norm_sigmoid",
}  # activation -> the fused op's name


class BatchNormAct(Module):
    """A batch norm and the activation after it (``ReLU`` or ``Sigmoid``), held as ``bn`` and ``act``.

    The reference is the two layers in sequence: ``act(bn(x))`` forward, ``bn.backward(act.backward(dy))``
    backward.  Where the backend has the fused kernel for the input (:func:`normlab.kernels.fast_path`: numba,
    float32/float64, non-empty), forward runs it through the batch norm layer instead (its parameters,
    statistics and mode, its running statistics updated), and backward is that kernel's: the activation is
    applied in place on the normalized output, one array and one layer call fewer, the same numbers bit for
    bit as the two kernels one after the other.
    """

    def __init__(self, bn: Module, act: Module) -> None:
        super().__init__()
        if not _fusable(bn, act):
            raise TypeError(
                f"BatchNormAct: expected a BatchNorm1d/2d/3d (without virtual_batch_size) and a ReLU or Sigmoid, "
                f"got {type(bn).__name__} and {type(act).__name__}"
            )
        self.bn = bn
        self.act = act
        self._op_name = _FUSED_OP[type(act)]
        self._ran_fused: bool | None = None  # how the last forward ran: what backward undoes

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self.bn._check_input(x)
        op = kernels.fast_path(self._op_name, x)
        if op is None:  # the reference: the two layers in sequence
            self._ran_fused = False
            return self.act(self.bn(x))
        self._ran_fused = True
        return self.bn.forward_with(op, x)

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        ran_fused, self._ran_fused = self._ran_fused, None
        if ran_fused is None:
            raise RuntimeError("BatchNormAct: backward needs a forward pass first")
        if ran_fused:
            return self.bn.backward(grad_output)
        return self.bn.backward(self.act.backward(grad_output))

    def extra_repr(self) -> str:
        return self._op_name


def _fusable(norm: Module, activation: Module) -> bool:
    """A plain batch norm (not Ghost BN: its chunks have no fused kernel) directly before a ReLU/Sigmoid."""
    return (
        type(norm) in _BATCH_NORMS
        and getattr(norm, "virtual_batch_size", None) is None
        and type(activation) in _FUSED_OP
    )


def fuse(model: Module) -> Module:
    """A new model computing what ``model`` computes, each ``BatchNorm1d/2d/3d`` directly followed by a
    ``ReLU`` or ``Sigmoid`` in a ``Sequential`` (nested ones too) replaced by a :class:`BatchNormAct` holding
    those two layer objects.  Every other layer is the same object as in ``model``; containers are new.
    ``model`` itself is not changed.  A model that is not a ``Sequential`` has nothing to fuse and is
    returned as it is."""
    if not isinstance(model, Sequential):
        return model
    layers = [fuse(layer) for layer in model]
    fused: list[Module] = []
    i = 0
    while i < len(layers):
        pair = layers[i : i + 2]
        if len(pair) == 2 and _fusable(*pair):
            fused.append(BatchNormAct(*pair))
            i += 2
        else:
            fused.append(layers[i])
            i += 1
    out = Sequential(*fused)
    out.training = model.training
    out.requires_input_grad = model.requires_input_grad
    return out
