"""Network layers: thin holders of parameters and mode around the pairs in ``normlab.functional``.

Each ``forward`` validates its input (errors name the layer and the expected vs received shape or dtype),
calls the functional forward and keeps the cache for exactly one ``backward`` (nothing is kept under
``no_grad()``).  ``backward(dy)`` returns dL/dx and accumulates parameter gradients into ``.grad``.
Each layer runs the op :func:`normlab.kernels.resolve` returns (a numba fast path where one is registered,
else the reference) and keeps that op's backward with the cache.  ``Linear`` and ``Conv2d`` return ``None`` from
``backward`` instead of dL/dx when ``requires_input_grad`` is off (see
:meth:`normlab.nn.Module.requires_input_grad_`).

Names, arguments, defaults and state-dict keys are PyTorch's.  Default initialization (see
:mod:`normlab.nn.init`): ``Linear`` and ``Conv2d`` draw the weight from ``kaiming_uniform(a=sqrt(5))`` =
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and the bias from the same interval, using the ``rng`` they are given (a
``numpy.random.Generator``, an int seed, or ``None`` for fresh OS entropy); no other layer here has
parameters.  NumPy's global random state is never used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from normlab import functional as F
from normlab import kernels
from normlab.backend import (
    FLOAT_DTYPES,
    as_param_dtype,
    check_float_array,
    is_grad_enabled,
    namespace,
)
from normlab.functional.conv import Pair, pair, window_geometry
from normlab.nn import init
from normlab.nn.module import Module, Parameter, _is_array
from normlab.nn.registry import dtype_name, register_module


class CachedLayer(Module):
    """A layer whose forward keeps what its backward needs, for exactly one backward."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: Any = None
        self._output_shape: tuple[int, ...] | None = None

    def _label(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def _check_input(self, x: Any) -> np.ndarray:
        if type(x) is np.ndarray and x.dtype in FLOAT_DTYPES:  # the common case: no label to format
            return x
        return check_float_array(x, self._label())

    def _keep(self, cache: Any, y: np.ndarray) -> None:
        if is_grad_enabled():
            self._cache, self._output_shape = cache, tuple(y.shape)
        else:
            self._cache = self._output_shape = None

    def _take_cache(self, grad_output: Any) -> tuple[np.ndarray, Any]:
        """The gradient (validated against the output's shape) and the cache, which is then dropped."""
        if self._cache is None:
            raise RuntimeError(
                f"{self._label()}: backward needs a forward pass first (each forward allows one backward; "
                "forward under no_grad() keeps nothing)"
            )
        dy = grad_output
        if type(dy) is not np.ndarray or dy.dtype not in FLOAT_DTYPES:
            dy = check_float_array(grad_output, self._label(), "gradient")
        if dy.shape != self._output_shape:
            raise ValueError(
                f"{self._label()}: expected a gradient of shape {self._output_shape} (the output's), "
                f"got {tuple(dy.shape)}"
            )
        cache, self._cache = self._cache, None
        return dy, cache

    def get_config(self) -> dict[str, Any]:
        return {}


def _accumulate(weight: Parameter, dweight: np.ndarray, bias: Parameter | None, dbias: Any) -> None:
    weight.accumulate_grad(dweight)
    if bias is not None and dbias is not None:
        bias.accumulate_grad(dbias)


# --------------------------------------------------------------------------------------- linear
class _WeightAndBias(CachedLayer):
    """A layer with a ``weight`` and an optional ``bias`` drawn with PyTorch's default init."""

    weight: Parameter
    bias: Parameter | None

    def reset_parameters(self, rng: init.RandomSource = None) -> None:
        """Redraw weight and bias with the default init (see the class docstring)."""
        gen = init.as_generator(rng, type(self).__name__)
        w, b = init.default_weight_and_bias(
            self.weight.shape, gen, self.bias is not None, dtype=self.weight.dtype
        )
        self.weight.data = w
        if self.bias is not None:
            self.bias.data = b


@register_module
class Linear(_WeightAndBias):
    """Fully connected layer ``y = x @ weight.T + bias``.

    Input (*, in_features), output (*, out_features).  ``weight`` (out_features, in_features) and ``bias``
    (out_features,) default to U(-1/sqrt(in_features), 1/sqrt(in_features)) drawn from ``rng``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rng: init.RandomSource = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features", "Linear")
        self.out_features = _positive_int(out_features, "out_features", "Linear")
        dt = as_param_dtype(dtype)
        self.weight = Parameter(np.zeros((self.out_features, self.in_features), dtype=dt))
        self.register_parameter(
            "bias", Parameter(np.zeros(self.out_features, dtype=dt)) if bias else None
        )
        self.reset_parameters(rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            hint = ""
            if x.ndim > 2 and math.prod(x.shape[1:]) == self.in_features:
                hint = " (flatten it first, e.g. with nn.Flatten())"
            raise ValueError(
                f"{self._label()}: expected input of shape (N, {self.in_features}), i.e. "
                f"{self.in_features} features in the last dimension, got shape {x.shape}{hint}"
            )
        op = kernels.resolve("linear", x)
        y, cache = op.forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        self._keep((cache, op.backward), y)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray | None:
        """dL/dx (``None`` if ``requires_input_grad`` is off); accumulates the parameter gradients."""
        dy, (cache, backward) = self._take_cache(grad_output)
        grads = backward(dy, cache, input_grad=self.requires_input_grad)
        _accumulate(self.weight, grads.dweight, self.bias, grads.dbias)
        return grads.dx

    def get_config(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "dtype": dtype_name(self),
        }

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# --------------------------------------------------------------------------------------- convolution
@register_module
class Conv2d(_WeightAndBias):
    """2-D convolution (cross-correlation) by im2col; zero padding, no groups.

    Input (N, in_channels, H, W), output (N, out_channels, OH, OW) with
    ``OH = (H + 2·padding - dilation·(kernel - 1) - 1) // stride + 1`` (same for W).  ``weight``
    (out_channels, in_channels, kh, kw) and ``bias`` (out_channels,) default to
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), ``fan_in = in_channels·kh·kw``, drawn from ``rng``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Pair,
        stride: int | Pair = 1,
        padding: int | Pair = 0,
        dilation: int | Pair = 1,
        bias: bool = True,
        *,
        rng: init.RandomSource = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels", "Conv2d")
        self.out_channels = _positive_int(out_channels, "out_channels", "Conv2d")
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = pair(stride, "stride", "Conv2d")
        self.padding = pair(padding, "padding", "Conv2d", minimum=0)
        self.dilation = pair(dilation, "dilation", "Conv2d")
        dt = as_param_dtype(dtype)
        self.weight = Parameter(
            np.zeros((self.out_channels, self.in_channels, *self.kernel_size), dtype=dt)
        )
        self.register_parameter(
            "bias", Parameter(np.zeros(self.out_channels, dtype=dt)) if bias else None
        )
        self.reset_parameters(rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self._label()}: expected 4-D input (N, {self.in_channels}, H, W), got shape {x.shape}"
            )
        # checked here too so that the error names this layer
        window_geometry(
            x.shape, self.kernel_size, self.stride, self.padding, self.dilation, self._label()
        )
        op = kernels.resolve("conv2d", x)
        weight, weight_cache = self._conv_weight()
        y, cache = op.forward(
            x,
            weight,
            None if self.bias is None else self.bias.data,
            self.stride,
            self.padding,
            self.dilation,
        )
        self._keep(
            (cache, op.backward, weight_cache), y
        )  # a backward always matches its forward's op
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray | None:
        """dL/dx (``None`` if ``requires_input_grad`` is off); accumulates the parameter gradients."""
        dy, (cache, backward, weight_cache) = self._take_cache(grad_output)
        grads = backward(dy, cache, input_grad=self.requires_input_grad)
        dweight = self._weight_gradient(grads.dweight, weight_cache)
        _accumulate(self.weight, dweight, self.bias, grads.dbias)
        return grads.dx

    def _conv_weight(self) -> tuple[np.ndarray, Any]:
        """The kernel the convolution runs with, and what :meth:`_weight_gradient` needs: here the weight
        itself (``WSConv2d`` standardizes it first)."""
        return self.weight.data, None

    def _weight_gradient(self, dkernel: np.ndarray, weight_cache: Any) -> np.ndarray:
        """dL/dweight from dL/d(kernel used): the same array here."""
        return dkernel

    def get_config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "bias": self.bias is not None,
            "dtype": dtype_name(self),
        }

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}"
        )


# --------------------------------------------------------------------------------------- pooling
class _Pool2d(CachedLayer):
    def __init__(
        self, kernel_size: int | Pair, stride: int | Pair | None = None, padding: int | Pair = 0
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name)
        self.padding = pair(padding, "padding", name, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(
                f"{name}: padding {self.padding} must be at most half the kernel size {self.kernel_size}"
            )

    def _check_input(self, x: Any) -> np.ndarray:
        x = super()._check_input(x)
        if x.ndim != 4:
            raise ValueError(
                f"{self._label()}: expected 4-D input (N, C, H, W), got shape {x.shape}"
            )
        window_geometry(x.shape, self.kernel_size, self.stride, self.padding, (1, 1), self._label())
        return x

    def get_config(self) -> dict[str, Any]:
        return {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
        }

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


@register_module
class MaxPool2d(_Pool2d):
    """Max over each window; input (N, C, H, W).  ``stride`` defaults to ``kernel_size``; padding is -inf."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        op = kernels.resolve("max_pool2d", x)
        y, cache = op.forward(x, self.kernel_size, self.stride, self.padding)
        self._keep((cache, op.backward), y)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        dy, (cache, backward) = self._take_cache(grad_output)
        return backward(dy, cache)


@register_module
class AvgPool2d(_Pool2d):
    """Mean over each window; input (N, C, H, W).  ``count_include_pad=True`` (PyTorch's default) divides by
    the kernel size even where the window covers zero padding; False divides by the real values counted."""

    def __init__(
        self,
        kernel_size: int | Pair,
        stride: int | Pair | None = None,
        padding: int | Pair = 0,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        op = kernels.resolve("avg_pool2d", x)
        y, cache = op.forward(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.count_include_pad,
        )
        self._keep((cache, op.backward), y)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        dy, (cache, backward) = self._take_cache(grad_output)
        return backward(dy, cache)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"count_include_pad": self.count_include_pad}


# --------------------------------------------------------------------------------------- reshaping
def _reshape(a: Any, shape: tuple[int, ...]) -> Any:
    """``a.reshape(shape)`` for NumPy; the standard's ``reshape`` for arrays of another namespace."""
    return a.reshape(shape) if isinstance(a, np.ndarray) else namespace(a).reshape(a, shape)


@register_module
class Flatten(CachedLayer):
    """Merge axes ``start_dim`` .. ``end_dim`` into one: (N, C, H, W) -> (N, C·H·W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not _is_array(x):
            x = np.asarray(x)
        start, end = self.start_dim % max(x.ndim, 1), self.end_dim % max(x.ndim, 1)
        if x.ndim == 0 or start > end:
            raise ValueError(
                f"{self._label()}: cannot flatten dims {self.start_dim}..{self.end_dim} of shape {x.shape}"
            )
        merged = math.prod(x.shape[start : end + 1])
        y = _reshape(x, (*x.shape[:start], merged, *x.shape[end + 1 :]))
        self._keep(x.shape, y)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        dy, input_shape = self._take_cache(grad_output)
        return _reshape(dy, input_shape)

    def get_config(self) -> dict[str, Any]:
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


# --------------------------------------------------------------------------------------- dropout
@register_module
class Dropout(CachedLayer):
    """Inverted dropout: in training, zero each value with probability ``p`` and scale the rest by 1/(1-p);
    in eval mode, the identity.

    The masks come from this layer's own ``generator`` (a ``numpy.random.Generator``), seeded by ``seed``:
    an int, a Generator to draw the seed from, or ``None`` for fresh OS entropy.  NumPy's global random state
    is never used.  Checkpoints save and restore the generator's state; ``fit(seed=...)`` reseeds it.
    """

    def __init__(self, p: float = 0.5, *, seed: init.RandomSource = None) -> None:
        super().__init__()
        self.p = F.check_probability(p, "Dropout")
        self.generator = _own_generator(seed)

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, cache = F.dropout_forward(self._check_input(x), self.p, self.generator, self.training)
        self._keep(cache, y)
        return y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        dy, cache = self._take_cache(grad_output)
        return F.dropout_backward(dy, cache)

    def get_config(self) -> dict[str, Any]:
        return {"p": self.p}

    def extra_repr(self) -> str:
        return f"p={self.p}"


def dropout_generators(model: Module) -> list[tuple[str, Module]]:
    """``(name, module)`` of every module of ``model`` that owns a ``numpy.random.Generator`` (dropout), in
    registration order: what checkpoints save and ``fit(seed=...)`` reseeds."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "generator", None), np.random.Generator)
    ]


def _own_generator(seed: init.RandomSource) -> np.random.Generator:
    """A generator owned by one layer: never shared, so no other consumer shifts its stream."""
    if isinstance(seed, np.random.Generator):
        return np.random.default_rng(int(seed.integers(2**63)))
    return init.as_generator(seed, "Dropout")


def _positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)
