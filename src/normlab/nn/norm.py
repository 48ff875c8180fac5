"""Normalization layers: thin holders of parameters, running statistics and mode around the normalization ops.

Each forward validates its input, then runs the op :func:`normlab.kernels.resolve` returns: the fused numba
kernels by default, the readable ``functional.norm`` reference with ``NORMLAB_KERNELS=reference`` or where no
kernel applies (the two are tested equal).

Names, arguments, defaults and state-dict keys are PyTorch's, so weights move between the two as a plain dict
of arrays.  Conventions (see ``CONVENTIONS.md``):

* running statistics follow ``r <- (1 - momentum) * r + momentum * batch`` with ``momentum=0.1``;
  ``momentum=None`` gives the cumulative average over ``num_batches_tracked`` batches.  A Keras momentum
  ``k`` is ``1 - k`` here (:func:`momentum_from_keras`);
* ``running_var`` stores the unbiased batch variance by default (PyTorch); ``running_var="biased"`` stores the
  biased one (Keras, Flax, the seed's NumPy layer).  Normalizing in training always uses the biased variance;
* ``eps`` may be 0: a channel with zero variance then outputs ``bias``, never NaN.

Choices that differ from PyTorch, on purpose:

* An **empty batch** returns an empty output and changes no buffer (PyTorch still counts it in
  ``num_batches_tracked``).
* **Non-finite statistics** (a NaN or inf in the input, or a float64 variance that overflows, as values
  near 1e200 give) make every output of their group NaN, in every layer and on every path (PyTorch gives
  the bias for an overflowing variance, and 0 for the finite values of an RMS norm row holding an inf), and
  a ``RuntimeWarning`` names the layer and the channels, rows or groups.  The running statistics are *not*
  updated from such a batch: one bad batch would otherwise poison every later evaluation, silently.
* **Degenerate normalizations raise**: training batch norm with one value per channel (PyTorch raises too),
  instance norm with one spatial value, group norm with one value per group, layer norm over a single value.
  Each would output ``bias`` whatever the input, which is always a bug in the model.
* **Instance norm** with ``track_running_stats=True`` counts its training batches in ``num_batches_tracked``
  and honours ``momentum=None`` as a cumulative average; PyTorch leaves the counter at 0 and never updates
  the running statistics when ``momentum=None``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from normlab import functional as F
from normlab import kernels
from normlab.backend import FLOAT_DTYPES, check_float_array, is_grad_enabled, namespace
from normlab.functional import checks
from normlab.functional.norm import NormGrads
from normlab.nn.module import Module, Parameter
from normlab.nn.registry import dtype_name

RUNNING_VAR_ESTIMATORS = ("unbiased", "biased")


# NumPy arrays keep their methods (the fast path, unchanged); arrays of another namespace (CuPy,
# array-api-strict) go through the functions of the Array API standard
def _flat(a: Any) -> Any:
    return a.reshape(-1) if isinstance(a, np.ndarray) else namespace(a).reshape(a, (-1,))


def _reshaped(a: Any, shape: tuple[int, ...]) -> Any:
    return a.reshape(shape) if isinstance(a, np.ndarray) else namespace(a).reshape(a, shape)


def _copy(a: Any) -> Any:
    return a.copy() if isinstance(a, np.ndarray) else namespace(a).asarray(a, copy=True)


def _bad_positions(bad: Any, index_shape: tuple[int, ...]) -> tuple[list[Any], int]:
    """The first 10 indices (ints, or tuples for several axes) where the boolean ``bad`` is true once
    reshaped to ``index_shape``, and how many there are in all.  Only called once ``bad`` holds a true
    value: on a device, the few indices are read back one by one (no conversion of the mask to NumPy)."""
    if isinstance(bad, np.ndarray):
        coords = np.nonzero(bad.reshape(index_shape))
    else:
        xp = namespace(bad)
        coords = xp.nonzero(xp.reshape(bad, index_shape))
    total = int(coords[0].shape[0])
    where = [
        tuple(int(c[i]) for c in coords) if len(coords) > 1 else int(coords[0][i])
        for i in range(min(total, 10))
    ]
    return where, total


def _any(mask: Any) -> bool:
    return bool(mask.any()) if isinstance(mask, np.ndarray) else bool(namespace(mask).any(mask))


def _next_count(count: Any) -> Any:
    """``num_batches_tracked + 1``, a 0-d int64 array on the counter's device."""
    if isinstance(count, np.ndarray):
        return np.array(count + 1, dtype=np.int64)
    return count + 1  # a 0-d int64 array of its namespace stays one


def momentum_from_keras(keras_momentum: float) -> float:
    """Convert a Keras/Flax momentum (weight of the *old* value, e.g. 0.99) to normlab/PyTorch's (0.01)."""
    if not 0.0 <= keras_momentum <= 1.0:
        raise ValueError(f"momentum_from_keras: expected a value in [0, 1], got {keras_momentum}")
    return 1.0 - keras_momentum


def momentum_to_keras(momentum: float) -> float:
    """Convert a normlab/PyTorch momentum (weight of the *new* batch, e.g. 0.1) to Keras's (0.9)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum_to_keras: expected a value in [0, 1], got {momentum}")
    return 1.0 - momentum


# constructor checks: the shared ones of normlab.functional.checks, named by the layer
_check_eps = checks.check_eps
_check_positive_int = checks.check_positive_int
_check_shape = checks.normalized_shape_arg


class _Normalization(Module):
    """What every normalization layer shares: the cache between forward and backward, and backward itself.

    Forward validates, runs the op :func:`normlab.kernels.resolve` returns (a numba kernel or the NumPy
    reference) and keeps the cache together with that op's backward, so a backward always matches its
    forward.
    """

    def __init__(self) -> None:
        super().__init__()
        # NormCache or KernelNormCache: what the forward's ops need for backward
        self._cache: Any = None
        self._backward_op: Callable[[np.ndarray, Any], NormGrads] | None = None

    def _label(self) -> str:
        return type(self).__name__

    def _check_float(self, x: Any) -> np.ndarray:
        if type(x) is np.ndarray and x.dtype in FLOAT_DTYPES:  # the common case: no label to format
            return x
        return check_float_array(x, self._label())

    def _warn_nonfinite(self, var: np.ndarray, index_shape: tuple[int, ...], unit: str) -> None:
        """The one policy for statistics taken from the input that are not finite (a NaN or inf in the input,
        or a variance that overflows): the output of those groups is NaN (see ``functional.norm``), and a
        ``RuntimeWarning`` names the layer and where.  ``var`` reshaped to ``index_shape`` indexes ``unit``."""
        bad = ~np.isfinite(var) if isinstance(var, np.ndarray) else ~namespace(var).isfinite(var)
        if not _any(bad):
            return
        where, total = _bad_positions(bad, index_shape)
        more = f" and {total - 10} more" if total > 10 else ""
        warnings.warn(
            f"{self._label()}: statistics are not finite (NaN or inf in the input, or a variance that "
            f"overflows) in {unit} {where[:10]}{more}; the output there is NaN",
            RuntimeWarning,
            stacklevel=3,
        )

    def _keep(self, cache: Any, backward: Callable[[np.ndarray, Any], NormGrads]) -> None:
        self._cache = cache if is_grad_enabled() else None
        self._backward_op = backward if is_grad_enabled() else None

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Return dL/dx for the last forward and accumulate dL/dweight, dL/dbias into ``.grad``."""
        if self._cache is None:
            raise RuntimeError(
                f"{self._label()}: backward needs a forward pass first (each forward allows one backward; "
                "forward under no_grad() keeps nothing)"
            )
        dy = grad_output
        if type(dy) is not np.ndarray or dy.dtype not in FLOAT_DTYPES:
            dy = check_float_array(grad_output, self._label(), "gradient")
        if dy.shape != self._cache.input_shape:
            raise ValueError(
                f"{self._label()}: expected a gradient of shape {self._cache.input_shape} "
                f"(the output's), got {dy.shape}"
            )
        assert self._backward_op is not None
        grads = self._backward_op(dy, self._cache)
        self._cache = self._backward_op = None
        weight: Parameter | None = self._parameters.get("weight")
        bias: Parameter | None = self._parameters.get("bias")
        if weight is not None and grads.dweight is not None:
            weight.accumulate_grad(grads.dweight)
        if bias is not None and grads.dbias is not None:
            bias.accumulate_grad(grads.dbias)
        return grads.dx


class _NormBase(_Normalization):
    """Per-channel normalization with optional affine parameters and running statistics (BN, IN)."""

    _expected: str  # description of accepted input ranks, for error messages
    _ranks: tuple[int, ...]  # accepted input ranks

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        running_var: str = "unbiased",
        dtype: Any = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_features = _check_positive_int(num_features, "num_features", name)
        self.eps = _check_eps(eps, name)
        if momentum is not None and (
            not isinstance(momentum, numbers.Real)
            or isinstance(momentum, bool)
            or not 0 <= momentum <= 1
        ):
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")
        if running_var not in RUNNING_VAR_ESTIMATORS:
            raise ValueError(
                f"{name}: running_var must be 'unbiased' or 'biased', got {running_var!r}"
            )
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.running_var_estimator = running_var
        self.frozen = False  # set by freeze_batch_norm: eval-mode statistics whatever train() says
        self._deferred_stats: list[tuple[np.ndarray, np.ndarray, int]] | None = None
        dt = checks.param_dtype(dtype, name)
        if self.affine:
            self.weight = Parameter(np.ones(num_features, dtype=dt))
            self.bias = Parameter(np.zeros(num_features, dtype=dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dt))
            self.register_buffer("running_var", np.ones(num_features, dtype=dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    # ------------------------------------------------------------------------------- state
    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches counted."""
        if self.track_running_stats:
            xp = namespace(self.running_mean)
            self.running_mean = xp.zeros_like(self.running_mean)
            self.running_var = xp.ones_like(self.running_var)
            self.num_batches_tracked = xp.zeros_like(self.num_batches_tracked)

    def reset_parameters(self) -> None:
        """Running statistics reset, weight 1, bias 0 (the identity transform)."""
        self.reset_running_stats()
        if self.affine:
            xp = namespace(self.weight.data)
            self.weight.data = xp.ones_like(self.weight.data)
            self.bias.data = xp.zeros_like(self.bias.data)

    def _upgrade_state_dict(self, state: dict[str, Any], prefix: str) -> None:
        # state dicts saved before num_batches_tracked existed (PyTorch < 0.4.1) load with a count of 0
        key = prefix + "num_batches_tracked"
        if self.track_running_stats and prefix + "running_mean" in state and key not in state:
            state[key] = np.array(0, dtype=np.int64)

    def _state_value_problems(self, values: Mapping[str, np.ndarray]) -> list[tuple[str, str]]:
        # eval divides by sqrt(running_var + eps): a NaN, infinite or negative variance would make every
        # output NaN or the bias whatever the input, so such a state is refused, not loaded
        problems = []
        for name, ok in (
            ("running_mean", np.isfinite),
            ("running_var", lambda v: np.isfinite(v) & (v >= 0)),
        ):
            value = values.get(name)
            if value is None:
                continue
            bad = np.flatnonzero(~ok(value))
            if bad.size:
                shown = ", ".join(f"{float(value[c])!r} at channel {c}" for c in bad[:8].tolist())
                more = f" and {bad.size - 8} more" if bad.size > 8 else ""
                need = "finite" if name == "running_mean" else "finite and >= 0"
                problems.append(
                    (name, f"{self._label()}: {name} must be {need}, got {shown}{more}")
                )
        return problems

    def train(self, mode: bool = True) -> Module:
        super().train(mode)
        if self.frozen:
            self.training = False
        return self

    # ------------------------------------------------------------------------------- forward
    def _label(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def _check_ranks(self, x: Any) -> np.ndarray:
        x = self._check_float(x)
        if x.ndim not in self._ranks:
            raise ValueError(
                f"{self._label()}: expected {self._expected}, got {x.ndim}-D input of shape {x.shape}"
            )
        return x

    def _check_channels(self, x: np.ndarray) -> None:
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{self._label()}: expected {self.num_features} channels at dim 1, got {x.shape[1]} "
                f"(input shape {x.shape})"
            )

    def _momentum_factor(self) -> float:
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked)
        return float(self.momentum)

    def _store_variance(self, biased_var: np.ndarray, count: int) -> np.ndarray:
        """The variance to average into ``running_var``, in the configured estimator."""
        if self.running_var_estimator == "unbiased":
            return F.unbiased_variance(biased_var, count)
        return biased_var

    def _track(self, batch_mean: np.ndarray, biased_var: np.ndarray, count: int) -> None:
        """A training forward's statistics (``count`` values per channel): into the running statistics now,
        or, while ``fit`` accumulates gradients over micro-batches, kept until :meth:`flush_batch_stats`
        merges the step's micro-batches into one update (as one batch of them all would have made)."""
        if self._deferred_stats is not None:
            self._deferred_stats.append((_copy(batch_mean), _copy(biased_var), count))
        else:
            self._apply_batch_stats(batch_mean, biased_var, count)

    def _apply_batch_stats(
        self, batch_mean: np.ndarray, biased_var: np.ndarray, count: int
    ) -> None:
        self._update_running_stats(batch_mean, self._store_variance(biased_var, count))

    def defer_batch_stats(self) -> None:
        """Keep the statistics of the next training forwards for one merged update (see :meth:`_track`)."""
        self._deferred_stats = []

    def flush_batch_stats(self) -> None:
        """Apply the statistics kept since :meth:`defer_batch_stats` as one update, merged exactly (Chan's
        formula), and stop deferring."""
        parts, self._deferred_stats = self._deferred_stats, None
        if parts:
            mean, var, count = F.merge_moments(parts)
            self._apply_batch_stats(mean, var, count)

    def _update_running_stats(self, batch_mean: np.ndarray, batch_var: np.ndarray) -> None:
        if self._refuse_nonfinite(batch_mean, batch_var, "running"):
            return
        self.num_batches_tracked = _next_count(self.num_batches_tracked)
        self.running_mean, self.running_var = F.update_running_stats(
            self.running_mean, self.running_var, batch_mean, batch_var, self._momentum_factor()
        )

    def _refuse_nonfinite(self, batch_mean: Any, batch_spread: Any, which: str) -> bool:
        """Warn and return True when a channel's batch statistics are not finite (no update then)."""
        xp = np if isinstance(batch_mean, np.ndarray) else namespace(batch_mean)
        bad = ~(xp.isfinite(batch_mean) & xp.isfinite(batch_spread))
        if not _any(bad):
            return False
        channels, total = _bad_positions(bad, (bad.shape[0],))
        warnings.warn(
            f"{self._label()}: batch statistics are not finite in channel(s) {channels}"
            f"{' ...' if total > 10 else ''}; {which} statistics were not updated from this batch",
            RuntimeWarning,
            stacklevel=4,
        )
        return True

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as JSON values (for saving the architecture)."""
        return {
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
            "track_running_stats": self.track_running_stats,
            "running_var": self.running_var_estimator,
            "dtype": dtype_name(self),
        }

    def extra_repr(self) -> str:
        s = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )
        if self.running_var_estimator != "unbiased":
            s += f", running_var='{self.running_var_estimator}'"
        return s


class _BatchNorm(_NormBase):
    r"""Batch normalization (Ioffe & Szegedy, 2015) over channels-first input, statistics per channel.

    In training, each channel c is normalized with the mean and biased variance of its values over the batch
    and every spatial position, then scaled and shifted::

        y = (x - mean_c) / sqrt(var_c + eps) * weight[c] + bias[c]

    and the running statistics are updated (see the module docstring).  In eval mode the running statistics
    replace the batch's, so the output of one sample no longer depends on the rest of the batch.  With
    ``track_running_stats=False`` there are no running statistics and batch statistics are used in both modes.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance; >= 0.
        momentum: weight of the new batch in the running average, in [0, 1]; ``None`` for a cumulative average.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0).
        track_running_stats: keep ``running_mean`` (init 0), ``running_var`` (init 1), ``num_batches_tracked``.
        running_var: ``"unbiased"`` (PyTorch) or ``"biased"`` (Keras, Flax) variance in ``running_var``.
        virtual_batch_size: Ghost Batch Norm (Hoffer et al., 2017): in training, each chunk of this many
            consecutive samples is normalized with its own statistics; the training batch must be a multiple
            of it (else ``ValueError``).  The running statistics are updated once per forward, from the
            statistics of the whole batch merged exactly from the chunks' (the same update as without
            chunks).  Eval mode is plain batch norm.  ``None`` (default): no chunks.
        dtype: dtype of parameters and running statistics (float32 by default).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        running_var: str = "unbiased",
        virtual_batch_size: int | None = None,
        dtype: Any = None,
    ) -> None:
        v = virtual_batch_size
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1):
            raise ValueError(
                f"{type(self).__name__}: virtual_batch_size must be an int >= 1 or None, got {v!r}"
            )
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            running_var=running_var,
            dtype=dtype,
        )
        self.virtual_batch_size = None if v is None else int(v)
        # set by fit's exact gradient accumulation for one step (normlab.nn.accumulation.SplitBatchNorm)
        self.split_batch: Any = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x)
        if self.split_batch is not None and self.training and x.size:
            return self.split_batch.forward(x)
        op = kernels.resolve("batch_norm", x)
        if self.virtual_batch_size is not None and self.training and x.size:
            return self._ghost_forward(op, x)
        return self.forward_with(op, x)

    def _ghost_forward(self, op: kernels.Op, x: np.ndarray) -> np.ndarray:
        """Training forward of Ghost Batch Norm: every check before any state changes."""
        v, n = self.virtual_batch_size, x.shape[0]
        assert v is not None
        if n % v:
            raise ValueError(
                f"{self._label()}: virtual_batch_size={v} needs a training batch that is a multiple of it, "
                f"got a batch of {n} (input shape {x.shape}); drop the last partial batch or change v"
            )
        if x.size // self.num_features // (n // v) < 2:
            raise ValueError(
                f"{self._label()}: expected more than 1 value per channel in each virtual batch of {v}, "
                f"got input of shape {x.shape}"
            )
        y, cache = F.ghost_batch_norm_forward(
            x, self._w(), self._b(), virtual_batch_size=v, eps=self.eps, norm=F.NormOp(*op)
        )
        if self.track_running_stats:
            self._track(_flat(cache.mean), _flat(cache.var), cache.count)
        self._keep(cache, F.ghost_batch_norm_backward)
        return y

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.virtual_batch_size is not None:
            config["virtual_batch_size"] = self.virtual_batch_size
        return config

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.virtual_batch_size is not None:
            s += f", virtual_batch_size={self.virtual_batch_size}"
        return s

    def _check_input(self, x: Any) -> np.ndarray:
        x = self._check_ranks(x)
        self._check_channels(x)
        return x

    def forward_with(self, op: kernels.Op, x: np.ndarray) -> np.ndarray:
        """Run ``op`` (batch norm's signature: ``batch_norm`` or a fused ``batch_norm_<activation>``) on the
        validated input ``x`` as this layer's forward: this layer's parameters, statistics and mode, the
        running statistics updated, ``op.backward`` kept for the next :meth:`backward`.
        (:class:`normlab.nn.BatchNormAct` runs its fused kernel through this.)"""
        use_batch_stats = self.training or not self.track_running_stats
        forward, backward = op
        if x.size == 0:  # empty batch: empty output, no statistics, no buffer touched
            y, cache = forward(x, self._w(), self._b(), use_input_stats=True, eps=self.eps)
            self._keep(cache, backward)
            return y
        count = x.size // self.num_features
        if use_batch_stats and count < 2:
            raise ValueError(
                f"{self._label()}: expected more than 1 value per channel when using batch statistics "
                f"(training), got input of shape {x.shape}"
            )
        y, cache = forward(
            x,
            self._w(),
            self._b(),
            self.running_mean,
            self.running_var,
            use_input_stats=use_batch_stats,
            eps=self.eps,
        )
        if (
            self.training and self.track_running_stats
        ):  # the running update warns about bad statistics
            self._track(_flat(cache.mean), _flat(cache.var), count)
        elif use_batch_stats:
            self._warn_nonfinite(cache.var, (self.num_features,), "channel(s)")
        self._keep(cache, backward)
        return y

    def _w(self) -> np.ndarray | None:
        return None if self.weight is None else self.weight.data

    def _b(self) -> np.ndarray | None:
        return None if self.bias is None else self.bias.data


class BatchNorm1d(_BatchNorm):
    __doc__ = (_BatchNorm.__doc__ or "") + (
        """
    Input: (N, C) or (N, C, L); the output has the input's shape and dtype.

    Examples:
        >>> import numpy as np
        >>> from normlab import nn
        >>> bn = nn.BatchNorm1d(3)
        >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(64, 3)).astype(np.float32)
        >>> y = bn(x)  # training mode: normalized with this batch's mean and variance
        >>> bool(np.allclose(y.mean(axis=0), 0, atol=1e-5)), bool(np.allclose(y.var(axis=0), 1, atol=1e-3))
        (True, True)
        >>> bn.running_mean.round(2)  # 10 % of the way from 0 to the batch mean (momentum=0.1)
        array([0.46, 0.51, 0.54], dtype=float32)
        >>> dx = bn.backward(np.ones_like(y))  # dL/dx; dL/dweight, dL/dbias accumulate in .grad
        >>> bn.bias.grad, float(np.abs(dx).max())  # L = sum(y) = 64 * sum(bias) whatever x, so dL/dx = 0
        (array([64., 64., 64.], dtype=float32), 0.0)
        >>> y_eval = bn.eval()(x)  # eval mode: normalized with the running statistics instead
"""
    )
    _ranks = (2, 3)
    _expected = "2-D input (N, C) or 3-D input (N, C, L)"


class BatchNorm2d(_BatchNorm):
    __doc__ = (_BatchNorm.__doc__ or "") + (
        """
    Input: (N, C, H, W); statistics per channel over N, H and W; the output has the input's shape and dtype.

    Examples:
        >>> import numpy as np
        >>> from normlab import nn
        >>> bn = nn.BatchNorm2d(8)
        >>> x = np.random.default_rng(0).normal(size=(4, 8, 5, 5)).astype(np.float32)
        >>> bn(x).shape
        (4, 8, 5, 5)
        >>> list(bn.state_dict())  # PyTorch's keys
        ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
"""
    )
    _ranks = (4,)
    _expected = "4-D input (N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    __doc__ = (_BatchNorm.__doc__ or "") + (
        "\n    Input: (N, C, D, H, W); statistics per channel over N, D, H and W; output of the same shape.\n"
    )
    _ranks = (5,)
    _expected = "5-D input (N, C, D, H, W)"


class _InstanceNorm(_NormBase):
    """Instance normalization (Ulyanov et al., 2016): statistics per sample and channel over spatial axes.

    Defaults as PyTorch: ``affine=False``, ``track_running_stats=False``.  With running statistics tracked,
    eval mode uses them; in training their update averages the per-instance statistics over the batch.
    Unbatched input (without N) is accepted.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        *,
        running_var: str = "unbiased",
        dtype: Any = None,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            running_var=running_var,
            dtype=dtype,
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_ranks(x)
        unbatched = x.ndim == self._ranks[0]
        xb = (
            (x[None] if isinstance(x, np.ndarray) else namespace(x).expand_dims(x, axis=0))
            if unbatched
            else x
        )
        self._check_channels(xb)
        use_input_stats = self.training or not self.track_running_stats
        count = math.prod(xb.shape[2:])
        if use_input_stats and count < 2 and xb.size > 0:
            raise ValueError(
                f"{self._label()}: expected more than 1 spatial value per instance, got input of shape "
                f"{x.shape}"
            )
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        op = kernels.resolve("instance_norm", xb)
        y, cache = op.forward(
            xb,
            w,
            b,
            self.running_mean,
            self.running_var,
            use_input_stats=use_input_stats,
            eps=self.eps,
        )
        if self.training and self.track_running_stats and xb.size > 0:
            # the running statistics follow the average over the batch of each instance's statistics
            xp = namespace(xb)
            instance_mean = _reshaped(cache.mean, xb.shape[:2])
            instance_var = self._store_variance(_reshaped(cache.var, xb.shape[:2]), count)
            self._update_running_stats(
                xp.mean(instance_mean, axis=0), xp.mean(instance_var, axis=0)
            )
        if use_input_stats and xb.size > 0:
            self._warn_nonfinite(cache.var, xb.shape[:2], "(sample, channel)")
        self._keep(cache, op.backward)
        self._unbatched = unbatched
        return y[0, ...] if unbatched else y

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        if self._cache is not None and getattr(self, "_unbatched", False):
            dy = check_float_array(grad_output, self._label(), "gradient")
            xp = namespace(dy)
            return super().backward(xp.expand_dims(dy, axis=0))[0, ...]
        return super().backward(grad_output)


class InstanceNorm1d(_InstanceNorm):
    __doc__ = (_InstanceNorm.__doc__ or "") + "\n    Input: (N, C, L) or unbatched (C, L).\n"
    _ranks = (2, 3)
    _expected = "3-D input (N, C, L) or 2-D unbatched input (C, L)"


class InstanceNorm2d(_InstanceNorm):
    __doc__ = (_InstanceNorm.__doc__ or "") + "\n    Input: (N, C, H, W) or unbatched (C, H, W).\n"
    _ranks = (3, 4)
    _expected = "4-D input (N, C, H, W) or 3-D unbatched input (C, H, W)"


class InstanceNorm3d(_InstanceNorm):
    __doc__ = (
        _InstanceNorm.__doc__ or ""
    ) + "\n    Input: (N, C, D, H, W) or unbatched (C, D, H, W).\n"
    _ranks = (4, 5)
    _expected = "5-D input (N, C, D, H, W) or 4-D unbatched input (C, D, H, W)"


class LayerNorm(_Normalization):
    """Layer normalization (Ba et al., 2016) over the trailing ``normalized_shape`` axes of each sample.

    Each sample is normalized with the mean and biased variance of its own values over those axes, so the
    output does not depend on the rest of the batch, and training and eval compute the same function (no
    running statistics).

    Args:
        normalized_shape: the trailing axes to normalize over, e.g. ``D`` for (N, D) or (N, L, D) input, or
            ``(C, H, W)``.  Their product must be at least 2.
        eps: added to the variance; >= 0.
        elementwise_affine: learn ``weight`` (init 1) and ``bias`` (init 0), both of shape ``normalized_shape``.
        bias: with ``elementwise_affine``, ``False`` keeps only the weight.
        dtype: of the parameters (float32 by default).

    Input: (*, *normalized_shape); the output has the input's shape and dtype.

    Examples:
        >>> import numpy as np
        >>> from normlab import nn
        >>> ln = nn.LayerNorm(6)
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 4, 6)).astype(np.float32)
        >>> y = ln(x)
        >>> y.shape, bool(np.allclose(y.mean(axis=-1), 0, atol=1e-5))
        ((2, 4, 6), True)
        >>> bool(np.allclose(ln(x[:1]), y[:1]))  # a sample's output does not depend on the others
        True
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _check_shape(normalized_shape, "LayerNorm")
        if math.prod(self.normalized_shape) < 2:
            raise ValueError(
                f"LayerNorm: normalizing over a single value outputs the bias whatever the input; "
                f"got normalized_shape={self.normalized_shape}"
            )
        self.eps = _check_eps(eps, "LayerNorm")
        self.elementwise_affine = bool(elementwise_affine)
        dt = checks.param_dtype(dtype, "LayerNorm")
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dt))
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dt))

    def _label(self) -> str:
        return f"LayerNorm({self.normalized_shape})"

    def get_config(self) -> dict[str, Any]:
        return {
            "normalized_shape": list(self.normalized_shape),
            "eps": self.eps,
            "elementwise_affine": self.elementwise_affine,
            "bias": self.bias is not None or not self.elementwise_affine,
            "dtype": dtype_name(self),
        }

    def reset_parameters(self) -> None:
        if self.weight is not None:
            xp = namespace(self.weight.data)
            self.weight.data = xp.ones_like(self.weight.data)
        if self.bias is not None:
            xp = namespace(self.bias.data)
            self.bias.data = xp.zeros_like(self.bias.data)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_float(x)
        checks.check_trailing(x, self.normalized_shape, self._label())
        op = kernels.resolve("layer_norm", x)
        y, cache = op.forward(
            x,
            self.normalized_shape,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            self.eps,
        )
        self._warn_rows(x, cache)
        self._keep(cache, op.backward)
        return y

    def _warn_rows(self, x: np.ndarray, cache: Any) -> None:
        batch = x.shape[: x.ndim - len(self.normalized_shape)]
        if x.size:
            self._warn_nonfinite(cache.var, batch or (1,), "row(s)")

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class RMSNorm(_Normalization):
    """RMS normalization (Zhang & Sennrich, 2019): ``x / sqrt(mean(x**2) + eps) * weight``, no centering.

    ``eps=None`` uses the machine epsilon of the input's dtype (as PyTorch).  ``weight`` (init 1) has
    ``normalized_shape``; there is no bias.
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _check_shape(normalized_shape, "RMSNorm")
        self.eps = None if eps is None else _check_eps(eps, "RMSNorm")
        self.elementwise_affine = bool(elementwise_affine)
        dt = checks.param_dtype(dtype, "RMSNorm")
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dtype=dt))
        else:
            self.register_parameter("weight", None)

    def _label(self) -> str:
        return f"RMSNorm({self.normalized_shape})"

    def get_config(self) -> dict[str, Any]:
        return {
            "normalized_shape": list(self.normalized_shape),
            "eps": self.eps,
            "elementwise_affine": self.elementwise_affine,
            "dtype": dtype_name(self),
        }

    def reset_parameters(self) -> None:
        if self.weight is not None:
            self.weight.data = namespace(self.weight.data).ones_like(self.weight.data)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_float(x)
        checks.check_trailing(x, self.normalized_shape, self._label())
        w = None if self.weight is None else self.weight.data
        op = kernels.resolve("rms_norm", x)
        y, cache = op.forward(x, self.normalized_shape, w, self.eps)
        LayerNorm._warn_rows(self, x, cache)  # type: ignore[arg-type]
        self._keep(cache, op.backward)
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class GroupNorm(_Normalization):
    """Group normalization (Wu & He, 2018): channels split into ``num_groups`` groups; each sample's group is
    normalized over its channels and spatial positions.

    Independent of the batch size (a batch of one works); same in training and eval.  ``num_groups=1`` is
    layer norm over (C, *), ``num_groups=num_channels`` is instance norm, both with per-channel affine.

    Args:
        num_groups: G; must divide ``num_channels``.
        num_channels: C.
        eps: added to the variance; >= 0.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0), per channel, shape (C,).
        dtype: of the parameters (float32 by default).

    Input: (N, C, *); the output has the input's shape and dtype.

    Examples:
        >>> import numpy as np
        >>> from normlab import nn
        >>> gn = nn.GroupNorm(2, 6)
        >>> x = np.random.default_rng(0).normal(size=(1, 6, 4, 4)).astype(np.float32)
        >>> y = gn(x)  # one sample is enough
        >>> groups = y.reshape(1, 2, -1)  # (N, G, C/G * H * W)
        >>> bool(np.allclose(groups.mean(axis=-1), 0, atol=1e-5)), bool(np.allclose(groups.var(axis=-1), 1, atol=1e-3))
        (True, True)
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.num_groups = _check_positive_int(num_groups, "num_groups", "GroupNorm")
        self.num_channels = _check_positive_int(num_channels, "num_channels", "GroupNorm")
        if num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        self.eps = _check_eps(eps, "GroupNorm")
        self.affine = bool(affine)
        dt = checks.param_dtype(dtype, "GroupNorm")
        if self.affine:
            self.weight = Parameter(np.ones(num_channels, dtype=dt))
            self.bias = Parameter(np.zeros(num_channels, dtype=dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _label(self) -> str:
        return f"GroupNorm({self.num_groups}, {self.num_channels})"

    def get_config(self) -> dict[str, Any]:
        return {
            "num_groups": self.num_groups,
            "num_channels": self.num_channels,
            "eps": self.eps,
            "affine": self.affine,
            "dtype": dtype_name(self),
        }

    def reset_parameters(self) -> None:
        if self.affine:
            xp = namespace(self.weight.data)
            self.weight.data = xp.ones_like(self.weight.data)
            self.bias.data = xp.zeros_like(self.bias.data)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_float(x)
        if x.ndim < 2:
            raise ValueError(f"{self._label()}: expected input (N, C, *), got shape {x.shape}")
        if x.shape[1] != self.num_channels:
            raise ValueError(
                f"{self._label()}: expected {self.num_channels} channels at dim 1, got {x.shape[1]} "
                f"(input shape {x.shape})"
            )
        group_size = (self.num_channels // self.num_groups) * math.prod(x.shape[2:])
        if group_size < 2 and x.size > 0:
            raise ValueError(
                f"{self._label()}: each group holds a single value for input of shape {x.shape}; "
                "the output would be the bias whatever the input"
            )
        op = kernels.resolve("group_norm", x)
        y, cache = op.forward(
            x,
            self.num_groups,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            self.eps,
        )
        if x.size:
            self._warn_nonfinite(cache.var, (x.shape[0], self.num_groups), "(sample, group)")
        self._keep(cache, op.backward)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
