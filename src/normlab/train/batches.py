"""Cutting the data of ``fit``/``evaluate``/``predict`` into mini-batches.

Arrays are batched by the one loader of the library, :class:`normlab.data.DataLoader`; anything else must be
a re-iterable batch source with a ``len`` (a list of ``(xb, yb)`` pairs, a ``DataLoader``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from normlab.backend import is_numpy, like, namespace
from normlab.data import DataLoader
from normlab.nn.module import Module, _is_array


class EpochBatches:
    """Mini-batches of arrays ``x`` (N, ...) and ``y`` (N, ...), one :class:`DataLoader` per epoch.

    With ``shuffle``, the order of epoch ``e`` (set by :meth:`set_epoch`) is the permutation that a
    generator seeded with ``(seed, e)`` draws, so every epoch's order can be reproduced on its own (a resumed
    run repeats the uninterrupted one).  Re-iterable, with ``len``.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        where: str = "fit",
    ) -> None:
        n = len(x)
        if n == 0:
            raise ValueError(f"{where}: the data is empty (0 samples, x has shape {np.shape(x)})")
        if y is not None and len(y) != n:
            raise ValueError(
                f"{where}: x and y hold different numbers of samples: {n} and {len(y)}"
            )
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        loader = DataLoader(
            self.x,
            self.y,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            seed=[self.seed, self.epoch, 0],  # type: ignore[arg-type]  (a seed sequence entropy list)
        )
        return iter(loader)


def check_batch_size(batch_size: Any, where: str) -> int:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"{where}: batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def batch_source(
    x: Any, y: Any, batch_size: int, shuffle: bool, seed: int, where: str
) -> Iterable[Any]:
    """Arrays become :class:`EpochBatches`; anything else must be a re-iterable batch source with a len."""
    if isinstance(x, np.ndarray) or y is not None:
        if y is None and where == "fit":
            raise ValueError(f"{where}: got an array x but no labels y")
        x = np.asarray(x)
        return EpochBatches(
            x, None if y is None else np.asarray(y), batch_size, shuffle, seed, where
        )
    if hasattr(x, "__next__"):
        raise TypeError(
            f"{where}: got a one-shot iterator ({type(x).__name__}); pass something that can be iterated "
            "once per epoch (a list of batches or a DataLoader)"
        )
    if not hasattr(x, "__iter__") or not hasattr(x, "__len__"):
        raise TypeError(
            f"{where}: expected arrays (x, y) or a re-iterable source of (x, y) batches with a len, "
            f"got {type(x).__name__}"
        )
    if len(x) == 0:
        raise ValueError(f"{where}: the batch source is empty (len 0)")
    return x


def model_array(model: Module) -> Any:
    """An array of ``model`` (its first parameter, else buffer) that says where its inputs must live, or
    ``None`` for a model of NumPy arrays (or none at all): the common case, batches then stay NumPy."""
    for p in model.parameters():
        return None if isinstance(p.data, np.ndarray) else p.data
    for b in model.buffers():
        return None if isinstance(b, np.ndarray) else b
    return None


def on_device(value: Any, reference: Any) -> Any:
    """A batch array (NumPy or array-like) as an array on ``reference``'s device (``None``: NumPy).  Arrays
    already of another namespace are left as they are: the first layer then checks their device and names
    both devices if they differ (``Module.__call__``)."""
    if reference is None:
        return np.asarray(value)
    if _is_array(value) and not isinstance(value, np.ndarray):
        return value
    return like(np.asarray(value), reference)


def split_batch(batch: Any, where: str, reference: Any = None) -> tuple[Any, Any]:
    """A batch ``(x, y)`` checked, both parts on ``reference``'s device (NumPy without one)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{where}: each batch must be a pair (x, y), got {type(batch).__name__}")
    return on_device(batch[0], reference), on_device(batch[1], reference)


def concat(arrays: list[Any]) -> Any:
    """``arrays`` joined along the first axis, in their own namespace."""
    xp = namespace(*arrays)
    return np.concatenate(arrays) if is_numpy(xp) else xp.concat(arrays, axis=0)


def as_xy(data: Any) -> tuple[Any, Any]:
    """``validation_data`` as ``(x, y)`` arrays, or ``(source, None)`` for a batch source."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        return data
    return data, None
