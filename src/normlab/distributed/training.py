"""What ``fit`` does differently under ``mpiexec``: one object, created by :meth:`FitSync.begin`, that fit calls
at four points (the lines are marked ``# distributed`` in ``normlab.train``).

1. start: the model is checked to be the same on every rank and rank 0's weights are copied to all; the
   seed of rank 0 is used everywhere (every rank must shuffle alike);
2. data: every global batch of ``batch_size`` samples is split across the ranks (:class:`ShardedBatches`), so
   ``batch_size`` means the same thing whatever the number of ranks;
3. step: the gradient of the loss is scaled so that, after :func:`average_gradients`, each parameter's gradient
   is that of the loss over the *global* batch (exact also when the chunks differ by one sample);
4. logs: loss and metrics are averaged over the global batch, so every rank logs, prints, stops early and
   checkpoints on the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from normlab.distributed.parallel import average_gradients, broadcast_state, check_same_model
from normlab.distributed.sharding import ShardedBatches
from normlab.distributed.world import World, get_world

if TYPE_CHECKING:
    from normlab.nn.module import Module


class FitSync:
    """The distributed side of one ``fit`` call; ``begin`` returns ``None`` in a single process."""

    def __init__(self, world: World, model: Module, seed: int) -> None:
        self.world, self.model = world, model
        check_same_model(model, world)
        broadcast_state(model, world)
        self.seed = world.broadcast_int(seed, "fit seed")
        self.batches: ShardedBatches | None = None

    @classmethod
    def begin(cls, model: Module, seed: int, world: World | None = None) -> FitSync | None:
        world = get_world() if world is None else world
        return None if world.size == 1 else cls(world, model, seed)

    def shard(self, batches: Any) -> ShardedBatches:
        self.batches = ShardedBatches(batches, self.world)
        return self.batches

    def scale_output_grad(self, grad: np.ndarray, criterion: Any) -> np.ndarray:
        """``dL/dout`` of the local loss -> K times that of the global loss (then averaged over K ranks)."""
        assert self.batches is not None
        if getattr(criterion, "reduction", "mean") == "sum":
            factor = float(self.world.size)
        else:
            factor = self.world.size * self.batches.local_count / self.batches.global_count
        # a Python float takes the gradient's dtype (NumPy 2 and the Array API alike), on its device
        return grad if factor == 1.0 else grad * factor

    def average_gradients(self) -> None:
        average_gradients(self.model.parameters(), self.world)

    def reduce_logs(self, logs: dict[str, float], n: int, keys: list[str]) -> dict[str, float]:
        """``logs[k]`` for ``k`` in ``keys``: sample-weighted means over the global batch; adds ``_n``."""
        local = np.array([n, *(logs[k] * n for k in keys)], dtype=np.float64)
        total = self.world.sum(local, "fit logs")
        reduced = dict(logs)
        reduced.update({k: float(total[i + 1] / total[0]) for i, k in enumerate(keys)})
        reduced["_n"] = int(total[0])
        return reduced
