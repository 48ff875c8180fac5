r"""Optimizers with per-parameter step sizes: AdaGrad, RMSProp, Adam and AdamW.

Each follows ``torch.optim``'s formulation step for step (tests check 20 steps against it).  :math:`g_t` is the
gradient, with the L2 term :math:`\lambda\theta_{t-1}` added to it when ``weight_decay`` :math:`\lambda > 0`
(coupled decay), except in AdamW.

**AdaGrad** (Duchi et al., 2011): :math:`s_t = s_{t-1} + g_t^2`,
:math:`\theta_t = \theta_{t-1} - \eta_t\, g_t / (\sqrt{s_t} + \epsilon)` with
:math:`\eta_t = \eta / (1 + (t-1)\,\text{lr\_decay})`.

**RMSProp** (Tieleman & Hinton, 2012): :math:`v_t = \alpha v_{t-1} + (1-\alpha) g_t^2`; centered also keeps
:math:`m_t = \alpha m_{t-1} + (1-\alpha) g_t` and uses :math:`v_t - m_t^2`;
:math:`\Delta_t = g_t / (\sqrt{\cdot} + \epsilon)`; with momentum :math:`b_t = \mu b_{t-1} + \Delta_t` and
:math:`\theta_t = \theta_{t-1} - \eta\, b_t`, else :math:`\theta_t = \theta_{t-1} - \eta\,\Delta_t`.

**Adam** (Kingma & Ba, 2015): :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t`,
:math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2`, bias corrections :math:`c_1 = 1-\beta_1^t`,
:math:`c_2 = 1-\beta_2^t`, and
:math:`\theta_t = \theta_{t-1} - \frac{\eta}{c_1}\, m_t / (\sqrt{v_t}/\sqrt{c_2} + \epsilon)`.  AMSGrad uses the
running maximum of :math:`v_t` in the denominator.

**AdamW** (Loshchilov & Hutter, 2019): Adam with *decoupled* weight decay: first
:math:`\theta \leftarrow \theta (1 - \eta\lambda)`, then the Adam step on the plain gradient.  With adaptive
step sizes, coupled L2 is scaled down where gradients are large; decoupled decay shrinks every weight alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from normlab import kernels
from normlab.backend import namespace
from normlab.nn.module import Parameter
from normlab.optim.optimizer import Optimizer, check_fraction, check_non_negative


def _with_l2(grad: np.ndarray, p: Parameter, weight_decay: float) -> np.ndarray:
    """The gradient of loss + (weight_decay / 2)·||θ||², i.e. L2 regularization coupled to the gradient."""
    return grad + weight_decay * p.data if weight_decay != 0 else grad


class AdaGrad(Optimizer):
    """AdaGrad; defaults as ``torch.optim.Adagrad`` (lr 1e-2, eps 1e-10)."""

    state_keys = ("sum",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ) -> None:
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "eps": eps,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative(
            group, "lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"
        )

    def _update(
        self, p: Parameter, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        if "sum" not in state:
            state["step"] = 0
            state["sum"] = namespace(p.data).full_like(p.data, group["initial_accumulator_value"])
        state["step"] += 1
        g = _with_l2(grad, p, group["weight_decay"])
        lr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        state["sum"] += g * g
        p.data -= lr * g / (namespace(g).sqrt(state["sum"]) + group["eps"])


class RMSProp(Optimizer):
    """RMSProp; defaults as ``torch.optim.RMSprop`` (lr 1e-2, alpha 0.99, eps 1e-8)."""

    state_keys = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "centered": bool(centered),
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative(group, "lr", "alpha", "eps", "weight_decay", "momentum")

    def _update(
        self, p: Parameter, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        alpha = group["alpha"]
        if "square_avg" not in state:
            state["step"] = 0
            state["square_avg"] = namespace(p.data).zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = namespace(p.data).zeros_like(p.data)
            if group["momentum"] > 0:
                state["momentum_buffer"] = namespace(p.data).zeros_like(p.data)
        state["step"] += 1
        g = _with_l2(grad, p, group["weight_decay"])
        square_avg = state["square_avg"]
        square_avg *= alpha
        square_avg += (1 - alpha) * g * g
        if group["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg += (1 - alpha) * (g - grad_avg)
            denom = namespace(square_avg).sqrt(square_avg - grad_avg * grad_avg) + group["eps"]
        else:
            denom = namespace(square_avg).sqrt(square_avg) + group["eps"]
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= group["momentum"]
            buf += g / denom
            p.data -= group["lr"] * buf
        else:
            p.data -= group["lr"] * g / denom


class Adam(Optimizer):
    """Adam with optional AMSGrad; ``weight_decay`` is coupled L2 (use :class:`AdamW` for decoupled decay).
    Defaults as ``torch.optim.Adam`` (lr 1e-3, betas (0.9, 0.999), eps 1e-8)."""

    state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    decoupled = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": bool(amsgrad),
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative(group, "lr", "eps", "weight_decay")
        betas = tuple(group["betas"])
        if len(betas) != 2:
            raise ValueError(f"invalid betas: {group['betas']!r} (expected two numbers)")
        check_fraction("beta1", betas[0])
        check_fraction("beta2", betas[1])

    def _update(
        self, p: Parameter, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        beta1, beta2 = group["betas"]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = namespace(p.data).zeros_like(p.data)
            state["exp_avg_sq"] = namespace(p.data).zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = namespace(p.data).zeros_like(p.data)
        state["step"] += 1
        # the rule itself: normlab.functional.adam_update, or its numba twin (normlab.kernels)
        arrays = (p.data, grad, state["exp_avg"], state["exp_avg_sq"])
        name = "amsgrad_update" if group["amsgrad"] else "adam_update"
        kernels.resolve(name, *arrays).forward(
            *arrays,
            state.get("max_exp_avg_sq") if group["amsgrad"] else None,
            step=state["step"],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled=self.decoupled,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (``weight_decay`` 1e-2 by default, as ``torch.optim.AdamW``)."""

    decoupled = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


Adagrad = AdaGrad  # PyTorch's spelling
RMSprop = RMSProp  # PyTorch's spelling
