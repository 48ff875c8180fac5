"""Parameter groups that keep weight decay off normalization parameters and biases."""

from __future__ import annotations

from typing import Any

from normlab.nn.module import Module
from normlab.nn.norm import _Normalization


def param_groups_no_decay(model: Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups for an optimizer: weights with ``weight_decay``, and every parameter of a
    normalization layer (BN, LN, GN, IN, RMSNorm: its scale and shift) plus every bias with decay 0.

    Decaying BN's scale towards 0 fights the normalization rather than regularizing the function, and decaying
    biases does not limit capacity; the common recipe (e.g. Goyal et al., 2017) leaves both undecayed.
    Frozen parameters (``requires_grad=False``) are left out.
    """
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, _Normalization) for p in m.parameters()
    }
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in norm_params or name.rsplit(".", 1)[-1] == "bias":
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
