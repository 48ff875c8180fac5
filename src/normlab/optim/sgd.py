r"""Stochastic gradient descent with momentum (heavy ball or Nesterov), dampening and L2 weight decay.

With :math:`g_t` the gradient, :math:`\lambda` the weight decay, :math:`\mu` the momentum and :math:`\tau` the
dampening (``torch.optim.SGD``'s formulation, step for step):

.. math::

    g_t &\leftarrow g_t + \lambda\,\theta_{t-1}                      && \text{L2 penalty, coupled to the gradient} \\
    b_t &= \mu\, b_{t-1} + (1 - \tau)\, g_t \quad (b_1 = g_1)          && \text{momentum buffer} \\
    d_t &= g_t + \mu\, b_t \ \text{(Nesterov)} \quad\text{or}\quad b_t && \\
    \theta_t &= \theta_{t-1} - \eta\, d_t

Without momentum :math:`d_t = g_t`.  Note the seeds' ``Momentum`` class keeps :math:`v = \mu v - \eta g` (the
learning rate inside the buffer); that differs from this form only when the learning rate changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from normlab import kernels
from normlab.nn.module import Parameter
from normlab.optim.optimizer import Optimizer, check_non_negative


class SGD(Optimizer):
    """SGD; ``lr`` 1e-3 by default (as ``torch.optim.SGD``).  Nesterov needs momentum > 0 and no dampening."""

    state_keys = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": bool(nesterov),
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative(group, "lr", "momentum", "dampening", "weight_decay")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and dampening = 0")

    def _update(
        self, p: Parameter, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        # the rule itself: normlab.functional.sgd_update, through the backend record (normlab.kernels)
        buffer = kernels.resolve("sgd_update", p.data).forward(
            p.data,
            grad,
            state.get("momentum_buffer"),
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
        )
        if buffer is not None:
            state["momentum_buffer"] = buffer
