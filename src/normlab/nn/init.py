r"""Weight initializers.  Each returns a new array and draws from the generator it is given, never from
NumPy's global random state, so a model built from the same seed is the same model.

Fans of a weight of shape (out, in) or (out, in, kh, kw): ``fan_in = in·kh·kw``, ``fan_out = out·kh·kw``.

===========================  ======================================================================
initializer                  distribution
===========================  ======================================================================
``normal(std)``              :math:`\mathcal N(\mathrm{mean}, \mathrm{std}^2)` (the seeds' ``weight_init_std``)
``uniform(low, high)``       :math:`U(\mathrm{low}, \mathrm{high})`
``xavier_uniform``           :math:`U(-a, a)`, :math:`a = \mathrm{gain}\sqrt{6 / (\mathrm{fan\_in} + \mathrm{fan\_out})}`
``xavier_normal``            :math:`\mathcal N(0, \sigma^2)`, :math:`\sigma = \mathrm{gain}\sqrt{2 / (\mathrm{fan\_in} + \mathrm{fan\_out})}`
``kaiming_uniform``          :math:`U(-b, b)`, :math:`b = \sqrt 3\,\mathrm{gain} / \sqrt{\mathrm{fan}}`
``kaiming_normal``           :math:`\mathcal N(0, \sigma^2)`, :math:`\sigma = \mathrm{gain} / \sqrt{\mathrm{fan}}`
``zeros``, ``ones``          constants
===========================  ======================================================================

``gain`` is :func:`calculate_gain` (PyTorch's table): 1 for linear/sigmoid, 5/3 for tanh, :math:`\sqrt 2` for
ReLU, :math:`\sqrt{2 / (1 + a^2)}` for leaky ReLU with slope ``a``.  Xavier (Glorot & Bengio, 2010) keeps the
variance of activations and gradients equal for symmetric activations; Kaiming/He (He et al., 2015) doubles it
for ReLU, which zeroes half of its input.  ``glorot_*`` and ``he_*`` are the same functions under the other
names.  Values are drawn in float64 and cast to ``dtype`` (float32 by default).

Default init of normlab's layers (PyTorch's):

* ``Linear``, ``Conv2d``: weight ``kaiming_uniform(a=sqrt(5))``, which is :math:`U(-1/\sqrt{\mathrm{fan\_in}},
  1/\sqrt{\mathrm{fan\_in}})`; bias :math:`U(-1/\sqrt{\mathrm{fan\_in}}, 1/\sqrt{\mathrm{fan\_in}})`;
* normalization layers: weight ones, bias zeros, running mean zeros, running variance ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from normlab.backend import as_param_dtype

Shape = tuple[int, ...]
RandomSource = np.random.Generator | int | None

_LINEAR_GAINS = {"linear", "identity", "sigmoid"} | {
    f"conv{d}" for d in ("1d", "2d", "3d", "_transpose1d", "_transpose2d", "_transpose3d")
}


def as_generator(rng: RandomSource, where: str = "init") -> np.random.Generator:
    """A Generator from a Generator (used as is), a seed, or ``None`` (fresh entropy from the OS)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(
        f"{where}: rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}"
    )


def calculate_fan_in_and_fan_out(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel): ``in·prod(kernel)``, ``out·prod(kernel)``."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(
            f"fan in and fan out need a weight with at least 2 dimensions, got shape {shape}"
        )
    receptive_field = math.prod(shape[2:])
    return shape[1] * receptive_field, shape[0] * receptive_field


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended std multiplier for a nonlinearity (PyTorch's values)."""
    if nonlinearity in _LINEAR_GAINS:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1.0 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _fan(shape: Shape, mode: str) -> int:
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


def _finish(values: np.ndarray, dtype: Any) -> np.ndarray:
    return values.astype(as_param_dtype(dtype))


def zeros(shape: Shape, *, dtype: Any = None) -> np.ndarray:
    return np.zeros(shape, dtype=as_param_dtype(dtype))


def ones(shape: Shape, *, dtype: Any = None) -> np.ndarray:
    return np.ones(shape, dtype=as_param_dtype(dtype))


def uniform(
    shape: Shape,
    rng: np.random.Generator,
    low: float = 0.0,
    high: float = 1.0,
    *,
    dtype: Any = None,
) -> np.ndarray:
    """Values from U(low, high)."""
    return _finish(as_generator(rng).uniform(low, high, size=shape), dtype)


def normal(
    shape: Shape,
    rng: np.random.Generator,
    std: float = 0.01,
    mean: float = 0.0,
    *,
    dtype: Any = None,
) -> np.ndarray:
    """Values from N(mean, std²); ``std`` is the seeds' ``weight_init_std`` (0.01 there by default)."""
    if std < 0:
        raise ValueError(f"normal: std must be >= 0, got {std}")
    return _finish(as_generator(rng).normal(mean, std, size=shape), dtype)


def xavier_uniform(
    shape: Shape, rng: np.random.Generator, gain: float = 1.0, *, dtype: Any = None
) -> np.ndarray:
    """Glorot uniform: U(-a, a) with a = gain·sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, rng, -bound, bound, dtype=dtype)


def xavier_normal(
    shape: Shape, rng: np.random.Generator, gain: float = 1.0, *, dtype: Any = None
) -> np.ndarray:
    """Glorot normal: N(0, σ²) with σ = gain·sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    return normal(shape, rng, gain * math.sqrt(2.0 / (fan_in + fan_out)), dtype=dtype)


def kaiming_uniform(
    shape: Shape,
    rng: np.random.Generator,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    *,
    dtype: Any = None,
) -> np.ndarray:
    """He uniform: U(-b, b) with b = sqrt(3)·gain/sqrt(fan); ``a`` is the leaky-ReLU slope in the gain."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    bound = math.sqrt(3.0) * std  # a uniform on [-b, b] has std b / sqrt(3)
    return uniform(shape, rng, -bound, bound, dtype=dtype)


def kaiming_normal(
    shape: Shape,
    rng: np.random.Generator,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    *,
    dtype: Any = None,
) -> np.ndarray:
    """He normal: N(0, σ²) with σ = gain/sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    return normal(shape, rng, std, dtype=dtype)


glorot_uniform = xavier_uniform
glorot_normal = xavier_normal
he_uniform = kaiming_uniform
he_normal = kaiming_normal


def default_weight_and_bias(
    weight_shape: Shape, rng: np.random.Generator, with_bias: bool, *, dtype: Any = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The default init of ``Linear`` and ``Conv2d`` (PyTorch's): weight ``kaiming_uniform(a=sqrt(5))`` and
    bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the weight is drawn first, then the bias."""
    weight = kaiming_uniform(weight_shape, rng, a=math.sqrt(5.0), dtype=dtype)
    if not with_bias:
        return weight, None
    fan_in, _ = calculate_fan_in_and_fan_out(weight_shape)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return weight, uniform((weight_shape[0],), rng, -bound, bound, dtype=dtype)
