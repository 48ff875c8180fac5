"""The ``[data]`` table of a ``normlab train`` config that names an image folder, and the data it builds::

    [data]
    folder = "shapes"              # class subfolders; relative paths are relative to the config file
    size = [32, 32]                # (H, W) every image is resized to
    color = "rgb"                  # rgb | grayscale
    val_split = 0.2                # stratified, seeded by training.seed
    test_split = 0.0               # > 0: a test part split off the same way; 0: the test metrics are the val part's
    workers = 0                    # decoding threads
    cache = true                   # keep decoded images (uint8, N*C*H*W bytes) after the first epoch; default false
    augment = ["flip", {name = "crop", padding = 2}, "normalize"]

``augment`` entries, applied in order to the training batches: ``"flip"`` (horizontal, p = 0.5),
``{name = "crop", padding = P}`` (random crop of the full size after padding), ``{name = "resized_crop",
scale = [lo, hi]}``, ``{name = "jitter", brightness = B, contrast = C}``, and ``"normalize"`` (per-channel mean/std
of the training part, :func:`compute_mean_std`; applied to the validation and test parts too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from normlab.data.augment import (
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    compute_mean_std,
)
from normlab.data.images import COLORS, ImageFolder
from normlab.data.loader import DataLoader
from normlab.data.mnist import Labeled

KEYS = {"folder", "size", "color", "val_split", "test_split", "workers", "cache", "augment"}
AUGMENTS = {"flip", "crop", "resized_crop", "jitter", "normalize"}


@dataclass
class FolderData:
    """``train``: ``Labeled(DataLoader, None)`` (a batch source, streamed); ``val``, ``test``: decoded arrays."""

    train: Labeled
    val: Labeled
    test: Labeled
    n_inputs: int
    n_classes: int
    class_names: list[str]


def check_folder_table(table: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """The ``[data]`` table with defaults filled in and ``folder`` made absolute (relative to ``base``);
    ``ValueError`` naming the key for anything wrong.  Reads no image."""
    unknown = set(table) - KEYS
    if unknown:
        raise ValueError(
            f"data: unknown key(s) {sorted(unknown)} for an image folder; expected {sorted(KEYS)}"
        )
    folder = table.get("folder")
    if not isinstance(folder, str) or not folder:
        raise ValueError(f"data.folder: expected a path, got {folder!r}")
    path = Path(folder).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(os.path.abspath(base / path))
    size = table.get("size", [32, 32])
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"data.size: expected [height, width] of positive integers, got {size!r}")
    color = table.get("color", "rgb")
    if color not in COLORS:
        raise ValueError(f"data.color: expected one of {sorted(COLORS)}, got {color!r}")
    splits = {}
    for key, default in (("val_split", 0.2), ("test_split", 0.0)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ValueError(f"data.{key}: expected a fraction in [0, 1), got {value!r}")
        splits[key] = float(value)
    if splits["val_split"] == 0:
        raise ValueError("data.val_split: must be > 0 (the validation part)")
    workers = table.get("workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"data.workers: expected an integer >= 0, got {workers!r}")
    cache = table.get("cache", False)
    if not isinstance(cache, bool):
        raise ValueError(f"data.cache: expected true or false, got {cache!r}")
    augment = table.get("augment", [])
    if not isinstance(augment, list):
        raise ValueError(f"data.augment: expected a list, got {augment!r}")
    for i, entry in enumerate(augment):
        _augment_entry(entry, i)
    return {
        "folder": str(path),
        "size": list(size),
        "color": color,
        **splits,
        "workers": workers,
        "cache": cache,
        "augment": augment,
    }


def _augment_entry(entry: Any, i: int) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        name, options = entry, {}
    elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
        name, options = entry["name"], {k: v for k, v in entry.items() if k != "name"}
    else:
        raise ValueError(
            f"data.augment[{i}]: expected a name or a table with a name, got {entry!r}"
        )
    if name not in AUGMENTS:
        raise ValueError(
            f"data.augment[{i}]: unknown augmentation {name!r}; expected one of {sorted(AUGMENTS)}"
        )
    return name, options


def _build(entry: Any, i: int, size: tuple[int, int]) -> Any:
    name, options = _augment_entry(entry, i)
    try:
        if name == "flip":
            return RandomHorizontalFlip(**options)
        if name == "crop":
            return RandomCrop(size, **options)
        if name == "resized_crop":
            return RandomResizedCrop(size, **{k: tuple(v) for k, v in options.items()})
        return ColorJitter(**options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"data.augment[{i}] ({name}): {e}") from None


def folder_data(
    table: dict[str, Any], seed: int = 0, batch_size: int = 32, base: Path | None = None
) -> FolderData:
    """Build the training loader and the decoded validation/test parts the ``[data]`` table describes."""
    spec = check_folder_table(table, base)
    size = (spec["size"][0], spec["size"][1])
    images = ImageFolder(
        spec["folder"], size=size, color=spec["color"], workers=spec["workers"], cache=spec["cache"]
    )
    rest, test = (images, None)
    if spec["test_split"]:
        rest, test = images.split(spec["test_split"], seed=seed + 1)
    train, val = rest.split(spec["val_split"], seed=seed)
    if test is None:
        test = val
    random = [
        _build(e, i, size)
        for i, e in enumerate(spec["augment"])
        if _augment_entry(e, i)[0] != "normalize"
    ]
    normalize = None
    if any(_augment_entry(e, i)[0] == "normalize" for i, e in enumerate(spec["augment"])):
        normalize = Normalize(*compute_mean_std(train))
    train.transform = (
        Compose(random + ([normalize] if normalize else [])) if (random or normalize) else None
    )

    def decoded(part: ImageFolder) -> Labeled:
        x, y = part.arrays()
        return Labeled(x if normalize is None else normalize(x), y)

    loader = DataLoader(train, batch_size=batch_size, shuffle=True, seed=seed)
    val_part = decoded(val)
    return FolderData(
        Labeled(loader, None),  # type: ignore[arg-type]
        val_part,
        val_part if test is val else decoded(test),
        int(np.prod(images.sample_shape)),
        images.num_classes,
        images.class_names,
    )
