"""Layers for batch norm's known failures: Batch Renormalization and Weight Standardization.

(Ghost Batch Norm is the ``virtual_batch_size`` option of the BatchNorm layers.)  The math is in
:mod:`normlab.functional.variants`; these hold the state.

**Why Batch Renorm is its own class** (Keras makes it an option of ``BatchNormalization``): it keeps a
different state — the moving *standard deviation* that defines ``r`` and ``d``, and the step count that
drives the clipping warm-up — so a ``BatchNorm2d``'s state dict stays PyTorch's, and anything that must treat
renorm differently (folding, conversion to PyTorch, the doctor) can tell it by its type.  The arguments take
Keras 3's names (``renorm_clipping``, ``renorm_momentum``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from normlab import functional as F
from normlab import kernels
from normlab.backend import namespace
from normlab.functional.variants import RenormClipping, RenormSchedule
from normlab.nn.layers import Conv2d
from normlab.nn.norm import _BatchNorm, _flat, _next_count
from normlab.nn.registry import register_module

Clipping = RenormClipping | RenormSchedule


def _as_clipping(value: Any, where: str) -> Clipping:
    """``renorm_clipping`` as given: ``None`` (the paper's warm-up), a RenormClipping or RenormSchedule, a
    Keras-style dict ``{"rmax", "rmin", "dmax"}`` (a missing or ``None`` limit does not clip), or
    ``{"schedule": {...}}`` (RenormSchedule's fields)."""
    if value is None:
        return RenormSchedule()
    if isinstance(value, RenormClipping | RenormSchedule):
        return value
    if isinstance(value, dict):
        if set(value) == {"schedule"} and isinstance(value["schedule"], dict):
            return RenormSchedule(**value["schedule"])
        unknown = set(value) - {"rmax", "rmin", "dmax"}
        if unknown:
            raise ValueError(
                f"{where}: renorm_clipping accepts the keys 'rmax', 'rmin', 'dmax' (or 'schedule'), "
                f"got {sorted(unknown)}"
            )
        r_max, d_max = value.get("rmax"), value.get("dmax")
        return RenormClipping(
            math.inf if r_max is None else r_max,
            math.inf if d_max is None else d_max,
            value.get("rmin"),
        )
    raise ValueError(
        f"{where}: renorm_clipping must be None, a RenormClipping, a RenormSchedule or a dict, got {value!r}"
    )


def _clipping_config(clipping: Clipping) -> dict[str, Any]:
    """JSON form of the clipping that :func:`_as_clipping` reads back (inf written as ``None``)."""
    if isinstance(clipping, RenormSchedule):
        return {"schedule": dict(vars(clipping))}

    def finite(v: float | None) -> float | None:
        return None if v is None or math.isinf(v) else v

    return {"rmax": finite(clipping.r_max), "rmin": clipping.r_min, "dmax": finite(clipping.d_max)}


class _BatchRenorm(_BatchNorm):
    r"""Batch Renormalization (Ioffe, 2017): batch norm whose training output is corrected towards the moving
    statistics, so training and inference compute nearly the same function with small or non-i.i.d. batches.

    In training, with the batch's mean :math:`\mu_B` and :math:`\sigma_B = \sqrt{\mathrm{var}_B + \epsilon}`::

        r = clip(σ_B / σ, 1/r_max, r_max),   d = clip((μ_B − μ) / σ, −d_max, d_max)
        y = weight · ((x − μ_B) / σ_B · r + d) + bias          (r, d constants for the gradient)

    then the moving averages move towards the batch: ``μ ← μ + m (μ_B − μ)``, ``σ ← σ + m (σ_B − σ)``
    (``m = momentum``, PyTorch's form; a Keras momentum ``k`` is ``1 − k``).  Eval mode is batch norm with
    ``running_mean = μ`` and ``running_var = σ² − eps``, i.e. ``(x − μ) / σ``: the same as Keras 3.

    Args:
        num_features: C, the number of channels.
        eps: added to the batch variance inside σ_B; >= 0.
        momentum: weight of the new batch in the moving averages, in [0, 1] (``None``: cumulative average).
        affine: learn ``weight`` (init 1) and ``bias`` (init 0).
        track_running_stats: must be ``True`` (the correction needs the moving statistics).
        renorm_clipping: the limits of r and d.  ``None`` (default): the paper's warm-up
            (:class:`~normlab.functional.RenormSchedule`: batch norm for 5k steps, then r_max → 3 by 40k,
            d_max → 5 by 25k), driven by ``num_batches_tracked``; a
            :class:`~normlab.functional.RenormClipping` for fixed limits; or Keras's dict
            ``{"rmax": ..., "rmin": ..., "dmax": ...}``.
        renorm_momentum: ``None`` (default, the paper): one set of moving statistics serves both ``r, d`` and
            inference.  A number: as Keras, ``r`` and ``d`` use a second set (``renorm_mean``,
            ``renorm_std``) averaged with this momentum (normlab's form).
        dtype: of parameters and statistics.

    Buffers: ``running_mean``, ``running_var`` (σ² − eps, for inference), ``running_std`` (σ),
    ``num_batches_tracked`` (the step count of the warm-up), and with ``renorm_momentum`` ``renorm_mean``,
    ``renorm_std``.  The variance inside σ_B is the biased one, as in the paper and Keras.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        renorm_clipping: Any = None,
        renorm_momentum: float | None = None,
        dtype: Any = None,
    ) -> None:
        name = type(self).__name__
        if not track_running_stats:
            raise ValueError(
                f"{name}: batch renormalization corrects towards the moving statistics, so it needs "
                "track_running_stats=True, got False"
            )
        clipping = _as_clipping(renorm_clipping, name)
        if renorm_momentum is not None and (
            isinstance(renorm_momentum, bool)
            or not isinstance(renorm_momentum, numbers.Real)
            or not 0 <= renorm_momentum <= 1
        ):
            raise ValueError(
                f"{name}: renorm_momentum must be in [0, 1] or None, got {renorm_momentum!r}"
            )
        super().__init__(
            num_features, eps, momentum, affine, True, running_var="biased", dtype=dtype
        )
        self.renorm_clipping = clipping
        self.renorm_momentum = None if renorm_momentum is None else float(renorm_momentum)
        dt = self.running_mean.dtype
        self.register_buffer("running_std", np.ones(num_features, dtype=dt))
        if self.renorm_momentum is not None:
            self.register_buffer("renorm_mean", np.zeros(num_features, dtype=dt))
            self.register_buffer("renorm_std", np.ones(num_features, dtype=dt))

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        for name, fill in (("running_std", 1.0), ("renorm_mean", 0.0), ("renorm_std", 1.0)):
            if name in self._buffers:
                buffer = self._buffers[name]
                setattr(self, name, namespace(buffer).full_like(buffer, fill))

    def clipping(self) -> RenormClipping:
        """The limits in force for the next training step."""
        if isinstance(self.renorm_clipping, RenormSchedule):
            return self.renorm_clipping.at(int(self.num_batches_tracked))
        return self.renorm_clipping

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        if not self.training or x.size == 0:  # inference (or an empty batch): batch norm's forward
            return self.forward_with(kernels.resolve("batch_norm", x), x)
        if x.size // self.num_features < 2:
            raise ValueError(
                f"{self._label()}: expected more than 1 value per channel when using batch statistics "
                f"(training), got input of shape {x.shape}"
            )
        separate = self.renorm_momentum is not None
        moving_mean = self.renorm_mean if separate else self.running_mean
        moving_std = self.renorm_std if separate else self.running_std
        y, cache = F.batch_renorm_forward(
            x,
            self._w(),
            self._b(),
            moving_mean,
            moving_std,
            clipping=self.clipping(),
            eps=self.eps,
            norm=F.NormOp(*kernels.resolve("batch_norm", x)),
        )
        self._track(_flat(cache.mean), _flat(cache.var), cache.count)
        self._keep(cache, F.batch_renorm_backward)
        return y

    def _apply_batch_stats(self, batch_mean: np.ndarray, batch_var: np.ndarray, count: int) -> None:
        """The moving averages of the mean and of σ_B = sqrt(var_B + eps) (``batch_var`` biased)."""
        xp = np if isinstance(batch_var, np.ndarray) else namespace(batch_var)
        batch_std = xp.sqrt(batch_var + self.eps)
        if self._refuse_nonfinite(batch_mean, batch_std, "moving"):
            return
        self.num_batches_tracked = _next_count(self.num_batches_tracked)
        if self.renorm_momentum is not None:
            self.renorm_mean, self.renorm_std = F.update_moving_moments(
                self.renorm_mean, self.renorm_std, batch_mean, batch_std, self.renorm_momentum
            )
        self.running_mean, self.running_std = F.update_moving_moments(
            self.running_mean, self.running_std, batch_mean, batch_std, self._momentum_factor()
        )
        # eval normalizes by sqrt(running_var + eps) = σ (clamped at 0 against rounding, as Keras does)
        if isinstance(self.running_std, np.ndarray):
            self.running_var = np.maximum(self.running_std**2 - self.eps, 0).astype(
                self.running_var.dtype
            )
        else:
            self.running_var = xp.astype(
                xp.clip(self.running_std**2 - self.eps, min=0), self.running_var.dtype
            )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["running_var"], config["track_running_stats"]
        config["renorm_clipping"] = _clipping_config(self.renorm_clipping)
        config["renorm_momentum"] = self.renorm_momentum
        return config

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"renorm_clipping={self.renorm_clipping}, renorm_momentum={self.renorm_momentum}"
        )


@register_module
class BatchRenorm1d(_BatchRenorm):
    __doc__ = (_BatchRenorm.__doc__ or "") + "\n    Input: (N, C) or (N, C, L).\n"
    _ranks = (2, 3)
    _expected = "2-D input (N, C) or 3-D input (N, C, L)"


@register_module
class BatchRenorm2d(_BatchRenorm):
    __doc__ = (_BatchRenorm.__doc__ or "") + (
        """
    Input: (N, C, H, W); the output has the input's shape and dtype.

    Examples:
        >>> import numpy as np
        >>> from normlab import nn
        >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 4, 3, 3)).astype(np.float32)
        >>> brn = nn.BatchRenorm2d(4)  # the paper's warm-up: r_max = 1, d_max = 0 for the first steps
        >>> brn.clipping()
        RenormClipping(r_max=1.0, d_max=0.0, r_min=None)
        >>> bool(np.allclose(brn(x), nn.BatchNorm2d(4)(x), atol=1e-5))  # so it starts as batch norm
        True
        >>> fixed = nn.BatchRenorm2d(4, renorm_clipping={"rmax": 3, "rmin": 1 / 3, "dmax": 5})  # Keras's names
        >>> list(fixed.state_dict())
        ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked', 'running_std']
"""
    )
    _ranks = (4,)
    _expected = "4-D input (N, C, H, W)"


@register_module
class BatchRenorm3d(_BatchRenorm):
    __doc__ = (_BatchRenorm.__doc__ or "") + "\n    Input: (N, C, D, H, W).\n"
    _ranks = (5,)
    _expected = "5-D input (N, C, D, H, W)"


@register_module
class WSConv2d(Conv2d):
    """``Conv2d`` with Weight Standardization (Qiao et al., 2019): each output channel's kernel is
    standardized to mean 0 and variance 1 over (in_channels, kh, kw) before the convolution, in every forward
    (``ws_eps`` added to the variance, as timm's ``StdConv2d``); the gradient flows back through the
    standardization to ``weight``.  Usually followed by GroupNorm, where batch statistics are unavailable.

    Arguments as :class:`~normlab.nn.Conv2d`, plus ``ws_eps`` (> 0).  A kernel of one element per output
    channel (``in_channels·kh·kw == 1``) cannot be standardized: ``ValueError``.
    """

    def __init__(self, *args: Any, ws_eps: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(ws_eps, bool) or not isinstance(ws_eps, numbers.Real) or not ws_eps > 0:
            raise ValueError(f"WSConv2d: ws_eps must be a number > 0, got {ws_eps!r}")
        if math.prod(self.weight.shape[1:]) < 2:
            raise ValueError(
                "WSConv2d: weight standardization needs more than one weight per output channel, got "
                f"in_channels={self.in_channels}, kernel_size={self.kernel_size}"
            )
        self.ws_eps = float(ws_eps)

    def _conv_weight(self) -> tuple[np.ndarray, Any]:
        return F.weight_standardization_forward(self.weight.data, self.ws_eps)

    def _weight_gradient(self, dkernel: np.ndarray, weight_cache: Any) -> np.ndarray:
        return F.weight_standardization_backward(dkernel, weight_cache)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ws_eps": self.ws_eps}
