r"""Synchronized batch norm: batch statistics over the samples of *every* rank of a data-parallel run.

With K ranks each holding b samples, ``BatchNorm`` normalizes each rank's b samples with their own statistics
(K small batches, "local" or "ghost" BN); ``SyncBatchNorm`` normalizes with the statistics of all K·b samples,
so K ranks compute exactly what one process computes on the concatenated batch.

Forward, per channel, each rank contributes its count :math:`n_k`, its mean :math:`m_k` (the shift) and the
sum of squared deviations from it :math:`M_k = \sum (x - m_k)^2`, in float64 (the shifted sums: the shifted
sum itself is zero).  Every rank combines the K triples in rank order with Chan et al.'s pairwise update
(stable however far the ranks' means lie apart; a rank may hold any count, zero included)::

    n = n_a + n_b;   d = m_b - m_a;   m = m_a + d n_b / n;   M = M_a + M_b + d^2 n_a n_b / n

and normalizes with mean ``m`` and biased variance ``M / n``.  The running statistics take the global mean and
the unbiased ``M / (n - 1)``: those of the global batch.

Backward, with :math:`g = dy \cdot w`, each rank contributes :math:`\sum dy` and :math:`\sum dy\,\hat x` over
its samples (which are also its local ``dbias`` and ``dweight``); with their sums over ranks::

    dx = rstd * w * (dy - sum(dy) / n - xhat * sum(dy * xhat) / n)

``dweight``/``dbias`` stay local: the gradient all-reduce of data parallelism averages them like any other
parameter.  In one process (world size 1), in eval mode, and with running statistics in use, ``SyncBatchNorm``
is ``BatchNorm`` and runs its code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from normlab.backend import like, namespace, to_host
from normlab.distributed.world import ConsistentError, World, get_world
from normlab.functional.norm import NormCache, NormGrads, batch_norm_forward
from normlab.nn.module import Module
from normlab.nn.norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from normlab.nn.registry import register_module


def combine_moments(rows: np.ndarray, channels: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Chan's pairwise combination, in row (rank) order, of rows ``[n_k, mean_k (C), M_k (C)]``.

    Returns ``(n, mean, M)``: the total count and, per channel, the mean and the sum of squared deviations.
    """
    n = 0.0
    mean = np.zeros(channels)
    m2 = np.zeros(channels)
    for row in rows:
        n_b, mean_b, m2_b = row[0], row[1 : 1 + channels], row[1 + channels :]
        if n_b == 0:
            continue
        total = n + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta * delta * (n * n_b / total)
        n = total
    return n, mean, m2


@dataclass
class SyncCache:
    """Forward's cache: the normalization's (global statistics given) and the global count."""

    norm: NormCache
    count: float
    input_shape: tuple[int, ...]


@register_module
class SyncBatchNorm(_BatchNorm):
    __doc__ = (
        "Batch norm whose batch statistics are those of the global batch over all ranks (see the module).\n\n"
        "    Input: (N, C, *) with any number of spatial axes; arguments as ``BatchNorm``, plus ``world`` (default:\n"
        "    :func:`normlab.distributed.get_world` at each forward).\n"
    )
    _ranks = tuple(range(2, 33))
    _expected = "input (N, C, *) with a batch axis and a channel axis (at least 2-D)"

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
        world: World | None = None,
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
        self.world = world

    def _world(self) -> World:
        return get_world() if self.world is None else self.world

    def forward(self, x: np.ndarray) -> np.ndarray:
        world = self._world()
        use_batch_stats = self.training or not self.track_running_stats
        if world.size == 1 or not use_batch_stats:
            return super().forward(x)  # BatchNorm's own code
        x = self._check_input(x)
        return self._sync_forward(x, world)

    def _sync_forward(self, x: np.ndarray, world: World) -> np.ndarray:
        # local moments on the input's device (its namespace); only the (2C + 1) numbers cross to the
        # host for the collective, and the global mean and variance come back to the device
        xp = namespace(x)
        c = self.num_features
        axes = (0, *range(2, x.ndim))
        shape = (1, c) + (1,) * (x.ndim - 2)
        local_count = math.prod(x.shape) // c
        if local_count:
            x64 = xp.astype(x, xp.float64)
            local_mean = xp.mean(x64, axis=axes)
            local_m2 = to_host(xp.sum(xp.square(x64 - xp.reshape(local_mean, shape)), axis=axes))
            local_mean = to_host(local_mean)
        else:  # this rank holds no sample of this batch: it still takes part in the collective
            local_mean = local_m2 = np.zeros(c)
        rows = world.allgather(
            np.concatenate([[local_count], local_mean, local_m2]),
            f"{self._label()} forward statistics",
        )
        count, mean, m2 = combine_moments(rows, c)
        if count < 2:  # the same count on every rank: every rank raises the same error
            raise ConsistentError(
                f"{self._label()}: expected more than 1 value per channel over all {world.size} ranks when "
                f"using batch statistics (training), got {int(count)} (this rank's input shape "
                f"{tuple(x.shape)})"
            )
        var = m2 / count
        if self.training and self.track_running_stats:
            self._update_running_stats(
                like(mean, x), like(self._store_variance(var, int(count)), x)
            )
        y, norm_cache = batch_norm_forward(
            x, self._w(), self._b(), like(mean, x), like(var, x), training=False, eps=self.eps
        )
        self._keep(SyncCache(norm_cache, count, tuple(x.shape)), self._make_backward(world))
        return y

    def _make_backward(self, world: World) -> Any:
        def backward(dy: np.ndarray, cache: SyncCache) -> NormGrads:
            xp = namespace(dy)
            norm = cache.norm
            c = self.num_features
            axes = (0, *range(2, dy.ndim))
            shape = (1, c) + (1,) * (dy.ndim - 2)
            xhat = xp.reshape(norm.xhat, cache.input_shape)
            dy64 = xp.astype(dy, xp.float64)
            sum_dy = xp.sum(dy64, axis=axes)
            sum_dy_xhat = xp.sum(dy64 * xp.astype(xhat, xp.float64), axis=axes)
            local = np.concatenate([to_host(sum_dy), to_host(sum_dy_xhat)])
            total = world.sum(local, f"{self._label()} backward sums")
            mean_dy = like((total[:c] / cache.count).reshape(shape), dy)
            mean_dy_xhat = like((total[c:] / cache.count).reshape(shape), dy)
            ct = norm.xhat.dtype
            g = (
                xp.astype(dy, ct, copy=False)
                - xp.astype(mean_dy, ct)
                - xhat * xp.astype(mean_dy_xhat, ct)
            )
            if norm.weight is not None:
                g = g * norm.weight
            dx = xp.astype(g * xp.reshape(norm.rstd, shape), norm.input_dtype, copy=False)
            dweight = (
                None if self.weight is None else xp.astype(sum_dy_xhat, self.weight.data.dtype)
            )
            dbias = None if self.bias is None else xp.astype(sum_dy, self.bias.data.dtype)
            return NormGrads(dx, dweight, dbias)

        return backward

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.world is None else f", world={self.world!r}")


_LOCAL_BATCH_NORMS = (BatchNorm1d, BatchNorm2d, BatchNorm3d)


def convert_sync_batchnorm(module: Module, world: World | None = None) -> Module:
    """Replace every ``BatchNorm1d/2d/3d`` in ``module`` (recursively) by a :class:`SyncBatchNorm` with the same
    configuration, parameters (the same ``Parameter`` objects) and running statistics; returns the module (a
    new one if ``module`` itself is a batch norm), as PyTorch's ``convert_sync_batchnorm``."""
    if isinstance(module, _LOCAL_BATCH_NORMS):
        config = module.get_config()
        sync = SyncBatchNorm(**config, world=world)
        if module.affine:
            sync.weight = module.weight
            sync.bias = module.bias
        if module.track_running_stats:
            sync.running_mean = module.running_mean
            sync.running_var = module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.frozen = module.frozen
        sync.train(module.training)
        return sync
    for name, child in list(module._modules.items()):
        if child is not None:
            converted = convert_sync_batchnorm(child, world)
            if converted is not child:
                module._modules[name] = converted  # in place: the children's order is the model's
    return module
