"""MNIST: the bundled sample (the official test split, shipped inside the package) and the full set from the cache.

Every load checks the sha256 of each file's content, so a corrupt or different file (Fashion-MNIST uses the same
file names) is an error, never silently wrong data.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Literal, NamedTuple, overload

import numpy as np

from normlab.data.download import (
    MNIST_SHA256,
    download_mnist,
    find_file,
    mnist_dir,
    read_verified,
    verify_content,
)
from normlab.data.errors import DataError
from normlab.data.idx import PathLike, parse_idx


class Labeled(NamedTuple):
    """Inputs and their labels: ``x`` (N, ...) and ``y`` (N,) int64."""

    x: np.ndarray
    y: np.ndarray


class Splits(NamedTuple):
    """Training, validation and test parts of a data set."""

    train: Labeled
    val: Labeled
    test: Labeled


SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FULL_VAL_SIZE = 10_000  # "full": the last 10,000 training images are the validation part
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


@overload
def load_mnist(
    split: Literal["sample", "full"] = ...,
    root: PathLike | None = ...,
    download: bool = ...,
    *,
    checksums: Mapping[str, str] | None = ...,
) -> Splits: ...
@overload
def load_mnist(
    split: Literal["train", "test"],
    root: PathLike | None = ...,
    download: bool = ...,
    *,
    checksums: Mapping[str, str] | None = ...,
) -> Labeled: ...
def load_mnist(
    split: str = "sample",
    root: PathLike | None = None,
    download: bool = False,
    *,
    checksums: Mapping[str, str] | None = None,
) -> Splits | Labeled:
    """Load MNIST.  Images are uint8 (N, 28, 28) in 0..255, labels int64 (N,) in 0..9.

    ``"sample"`` (offline, bundled): the official 10,000-image test split, divided by index ``i % 5``:
    0, 1, 2 -> train (6,000), 3 -> val (2,000), 4 -> test (2,000), each in file order.  ``root`` and
    ``download`` are not used.

    ``"full"``: train = the first 50,000 images of the training file, val = its last 10,000, test = the official
    test file (10,000), all read from ``mnist_dir(root)``.

    ``"train"`` / ``"test"``: one canonical file pair from ``mnist_dir(root)`` as a :class:`Labeled`.

    The cache directory is ``root/mnist`` (default ``$NORMLAB_DATA/mnist``, else the platform cache dir).  With
    ``download=True`` missing or corrupt files are fetched first (see :func:`download_mnist`); otherwise a missing
    file is a ``DataError`` that says how to get it.  ``checksums`` overrides the expected sha256 per file name.
    """
    if split == "sample":
        return _sample_splits()
    if split not in ("full", "train", "test"):
        raise ValueError(
            f"load_mnist: unknown split {split!r}; expected 'sample', 'full', 'train' or 'test'"
        )
    sums = dict(MNIST_SHA256 if checksums is None else checksums)
    try:
        return _load_cached(split, root, sums)
    except DataError:
        if not download:
            raise
    download_mnist(root, checksums=sums)
    return _load_cached(split, root, sums)


def _load_cached(split: str, root: PathLike | None, sums: Mapping[str, str]) -> Splits | Labeled:
    if split != "full":
        return _read_cached_pair(split, root, sums)
    train = _read_cached_pair("train", root, sums)
    n = len(train.y)
    if n <= FULL_VAL_SIZE:
        raise DataError(
            f"{mnist_dir(root)}: the training file has {n} images; 'full' needs more than {FULL_VAL_SIZE} "
            f"(the last {FULL_VAL_SIZE} are the validation part)"
        )
    cut = n - FULL_VAL_SIZE
    return Splits(
        Labeled(train.x[:cut], train.y[:cut]),
        Labeled(train.x[cut:], train.y[cut:]),
        _read_cached_pair("test", root, sums),
    )


def _read_cached_pair(split: str, root: PathLike | None, sums: Mapping[str, str]) -> Labeled:
    directory = mnist_dir(root)
    raws = []
    for stem in SPLIT_FILES[split]:
        path = find_file(directory, stem)
        if path is None:
            raise DataError(
                f"MNIST {split} split not found: expected {directory / (stem + '.gz')}. Get it with "
                f"`normlab data download mnist` (or download=True); load_mnist('sample') works offline"
            )
        if stem not in sums:
            raise ValueError(f"load_mnist: no checksum given for {stem}")
        raws.append((read_verified(path, sums[stem]), str(path)))
    (images_raw, images_name), (labels_raw, labels_name) = raws
    return _decode_pair(images_raw, images_name, labels_raw, labels_name)


def _sample_splits() -> Splits:
    files = resources.files("normlab.data") / "files"
    raws = []
    for stem in SPLIT_FILES["test"]:
        name = f"normlab/data/files/{stem}.gz"
        try:
            data = (files / f"{stem}.gz").read_bytes()
        except OSError as e:
            raise DataError(
                f"{name}: the bundled MNIST sample is missing from the installation ({e})"
            ) from e
        raws.append((verify_content(data, MNIST_SHA256[stem], name), name))
    (images_raw, images_name), (labels_raw, labels_name) = raws
    test = _decode_pair(images_raw, images_name, labels_raw, labels_name)
    part = np.arange(len(test.y)) % 5
    train, val, test_part = (
        Labeled(test.x[m], test.y[m]) for m in (part <= 2, part == 3, part == 4)
    )
    return Splits(train, val, test_part)


def _decode_pair(
    images_raw: bytes, images_name: str, labels_raw: bytes, labels_name: str
) -> Labeled:
    """Parse an image file and a label file and check they form an MNIST split."""
    images = parse_idx(images_raw, images_name)
    labels = parse_idx(labels_raw, labels_name)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{images_name}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{labels_name}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{labels_name}: has {len(labels)} labels but {images_name} has {len(images)} images; "
            "expected one label per image"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_name}: label {labels.max()} found; expected digits 0..9")
    return Labeled(images, labels.astype(np.int64))


# the same checks serve every MNIST-format data set (Fashion-MNIST)
decode_idx_pair = _decode_pair
