"""Mini-batches from in-memory arrays or from a dataset, with a seeded generator of their own and resumable state.

The dataset protocol (what :class:`normlab.data.ImageFolder` implements): an object that is not an array, with
``__len__`` (number of samples) and ``__getitem__(indices)`` taking a 1-D int64 index array and returning the batch
``(x, y)``.  A dataset whose batches are random (augmentation) also has ``load_batch(indices, rng)``: the loader then
draws one seed per epoch from its own generator, after the epoch's order, and passes batch ``i`` the generator
``np.random.default_rng([seed, i])``; so the augmentation is fixed by the loader's seed, and a resumed epoch
(``load_state_dict``) sees the same random transforms as the uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import array_api_compat
import numpy as np

_STATE_FORMAT = 1
# what a state dict must agree on with the loader it is loaded into (the batch order depends on all of them)
_CONFIG_KEYS = ("num_samples", "batch_size", "shuffle", "drop_last", "replacement", "num_batches")


def is_dataset(x: Any) -> bool:
    """Whether ``x`` follows the dataset protocol (``__len__`` and ``__getitem__``) rather than being array-like."""
    if isinstance(x, np.ndarray | list | tuple) or hasattr(x, "__array__"):
        return False
    return hasattr(x, "__len__") and hasattr(x, "__getitem__")


def _batch_mover(device: Any) -> Callable[[np.ndarray], Any] | None:
    """How a NumPy batch reaches ``device``: ``None`` (stay NumPy) for ``None`` and ``"cpu"``; CuPy for
    ``"cuda[:N]"``; the ``asarray(..., device=)`` of the array library a device object belongs to (e.g.
    ``array_api_strict.Device("device1")``, ``cupy.cuda.Device(1)``)."""
    if device is None or device == "cpu":
        return None
    if isinstance(device, str):
        # imported here: normlab.nn imports normlab.distributed, which imports this module
        from normlab.nn.module import _device_mover

        try:
            return _device_mover(device)
        except (RuntimeError, ValueError) as err:
            raise type(err)(f"DataLoader: device={device!r}: {err}") from err
    library = sys.modules.get(type(device).__module__.split(".")[0])
    if library is None or not hasattr(library, "asarray"):
        raise TypeError(
            f"DataLoader: device must be 'cpu', 'cuda', 'cuda:N' or a device object of an array library, "
            f"got {device!r}"
        )
    xp = array_api_compat.array_namespace(library.asarray(0.0))

    def move(batch: np.ndarray) -> Any:
        return xp.asarray(batch, device=device)

    return move


class DataLoader:
    """Iterate over mini-batches of ``x`` (N, ...) and, if given, ``y`` (N, ...); or over a dataset ``x``
    (see the module docstring), whose ``x[indices]`` is already the batch ``(xb, yb)``.

    Each pass (``for xb, yb in loader``) is one epoch; every epoch draws a new order from the loader's own
    ``np.random.Generator`` seeded with ``seed``, so the global NumPy RNG is never used or disturbed and two loaders
    with the same seed give the same batches.  ``len(loader)`` is the number of batches per epoch.

    * Without replacement (default) each sample appears exactly once per epoch, in a random order if
      ``shuffle`` else in index order; the last batch is smaller unless ``drop_last`` drops it.
    * ``replacement=True`` draws every batch independently as ``batch_size`` indices sampled with replacement,
      like ``np.random.choice(N, batch_size)`` in *Deep Learning from Scratch*: samples can repeat, within and
      across batches, and ``shuffle`` / ``drop_last`` have no effect.  An epoch is ``num_batches`` batches
      (default ``ceil(N / batch_size)``).

    ``device``: where batches are handed out: ``None``/``"cpu"`` NumPy arrays (default); ``"cuda"``,
    ``"cuda:N"`` CuPy arrays on that GPU; or a device object of an array library (e.g.
    ``array_api_strict.Device("device1")``).  The data are read and indexed on the host either way.

    Batches are copies (fancy indexing), never views into ``x``.  ``state_dict()`` / ``load_state_dict()`` save and
    restore the generator and the position inside an interrupted epoch, so a resumed run sees exactly the batches
    the uninterrupted run would have seen.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        batch_size: int = 32,
        shuffle: bool = True,
        drop_last: bool = False,
        replacement: bool = False,
        num_batches: int | None = None,
        seed: int | None = 0,
        device: Any = None,
    ) -> None:
        move = _batch_mover(device)  # checked first: a bad device builds no loader
        self.is_dataset = is_dataset(x)
        if self.is_dataset and y is not None:
            raise ValueError(
                f"DataLoader: x is a dataset ({type(x).__name__}) that yields (x, y) batches; y must be None"
            )
        self.x = x if self.is_dataset else np.asarray(x)
        self.y = None if y is None else np.asarray(y)
        if not self.is_dataset and self.x.ndim < 1:
            raise ValueError("DataLoader: x must have a sample axis, got a scalar")
        n = len(self.x) if self.is_dataset else self.x.shape[0]
        if self.y is not None and (self.y.ndim < 1 or self.y.shape[0] != n):
            raise ValueError(f"DataLoader: x has {n} samples but y has shape {self.y.shape}")
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int | np.integer)
            or batch_size < 1
        ):
            raise ValueError(
                f"DataLoader: batch_size must be a positive integer, got {batch_size!r}"
            )
        if num_batches is not None:
            if not replacement:
                raise ValueError("DataLoader: num_batches applies only with replacement=True")
            if num_batches < 0:
                raise ValueError(f"DataLoader: num_batches must be non-negative, got {num_batches}")
        if replacement and n == 0:
            raise ValueError("DataLoader: cannot sample with replacement from 0 samples")
        if isinstance(seed, np.random.Generator):
            raise TypeError(
                "DataLoader: seed must be an int or None; the loader keeps a generator of its own"
            )
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.replacement = bool(replacement)
        self._num_batches = num_batches
        self._rng = np.random.default_rng(seed)
        self.device, self._move = device, move
        # Resume bookkeeping: the generator state at the start of the epoch in progress (None between epochs),
        # how many of its batches were handed out, and how many the next epoch skips after load_state_dict.
        self._epoch_start: dict[str, Any] | None = None
        self._position = 0
        self._skip = 0

    @property
    def num_samples(self) -> int:
        return int(len(self.x) if self.is_dataset else self.x.shape[0])

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        if self.replacement:
            return math.ceil(n / b) if self._num_batches is None else int(self._num_batches)
        return n // b if self.drop_last else math.ceil(n / b)

    def _draw_epoch(self) -> list[np.ndarray]:
        """The index arrays of one epoch's batches; consumes the generator."""
        n, b = self.num_samples, self.batch_size
        if self.replacement:
            return list(self._rng.choice(n, size=(len(self), b), replace=True))
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        return [order[i * b : (i + 1) * b] for i in range(len(self))]

    def __iter__(self) -> Iterator[Any]:
        start = self._rng.bit_generator.state
        skip, self._skip = self._skip, 0
        batches = self._draw_epoch()
        random_batches = self.is_dataset and hasattr(self.x, "load_batch")
        # drawn only for datasets with random batches, so the order arrays alone get is unchanged
        augment_seed = int(self._rng.integers(2**63)) if random_batches else 0
        self._epoch_start, self._position = start, skip
        for i in range(skip, len(batches)):
            idx = batches[i]
            # counted before the yield: a state_dict taken while batch i is in use resumes at i + 1
            self._position = i + 1
            if random_batches:
                batch = self.x.load_batch(idx, np.random.default_rng([augment_seed, i]))
            else:
                batch = self.x[idx] if self.y is None else (self.x[idx], self.y[idx])
            if self._move is not None:  # read on the host, handed over on the device
                batch = self._to_device(batch)
            yield batch
        self._epoch_start, self._position = None, 0

    def _to_device(self, batch: Any) -> Any:
        """``batch`` (an array or a tuple of arrays) moved to the loader's device; a failed allocation
        there is an :class:`~normlab.nn.OutOfMemoryError` naming the loader and the batch."""
        # imported here, as in _batch_mover: nn imports the loader
        from normlab.nn.out_of_memory import annotate

        assert self._move is not None
        arrays = tuple(np.asarray(b) for b in batch) if isinstance(batch, tuple) else (batch,)
        try:
            moved = tuple(self._move(a) for a in arrays)
        except MemoryError as err:
            where = f"DataLoader(batch_size={self.batch_size}, device={self.device!r})"
            device = self.device if isinstance(self.device, str) else str(self.device)
            raise annotate(err, where, "the batch's move", arrays, device=device) from err
        return moved if isinstance(batch, tuple) else moved[0]

    def _config(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "replacement": self.replacement,
            "num_batches": len(self),
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable state: the generator, the position in an interrupted epoch, the configuration.

        Mid-epoch, ``rng`` is the state from the start of that epoch and ``batch`` the number of its batches
        already handed out; after ``load_state_dict`` the next pass re-draws that epoch and continues at ``batch``.
        """
        in_epoch = self._epoch_start is not None
        return {
            "format": _STATE_FORMAT,
            "rng": copy.deepcopy(self._epoch_start) if in_epoch else self._rng.bit_generator.state,
            "batch": self._position if in_epoch else self._skip,
            **self._config(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; raises ``ValueError`` and changes nothing if it does not fit this loader."""
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"DataLoader.load_state_dict: expected a state dict of format {_STATE_FORMAT}"
            )
        missing = [k for k in ("rng", "batch", *_CONFIG_KEYS) if k not in state]
        if missing:
            raise ValueError(f"DataLoader.load_state_dict: state lacks {missing}")
        mine = self._config()
        differ = [
            f"{k}: state {state[k]!r}, loader {mine[k]!r}"
            for k in _CONFIG_KEYS
            if state[k] != mine[k]
        ]
        if differ:
            raise ValueError(
                "DataLoader.load_state_dict: saved from a different loader ("
                + "; ".join(differ)
                + ")"
            )
        batch = state["batch"]
        if not isinstance(batch, int) or not 0 <= batch <= len(self):
            raise ValueError(
                f"DataLoader.load_state_dict: batch must be in 0..{len(self)}, got {batch!r}"
            )
        rng = np.random.default_rng()
        try:
            # a fresh generator validates the state before anything in this loader changes
            rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"DataLoader.load_state_dict: invalid generator state ({e})") from e
        self._rng, self._skip = rng, batch
        self._epoch_start, self._position = None, 0

    def __repr__(self) -> str:
        extra = (
            ", replacement=True"
            if self.replacement
            else f", shuffle={self.shuffle}, drop_last={self.drop_last}"
        )
        return f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}{extra}, batches={len(self)})"
