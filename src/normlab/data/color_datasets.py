"""CIFAR-10 and Fashion-MNIST: downloaded on request (``normlab data download cifar10|fashion-mnist``), verified
by pinned sha256, then loaded from the cache.  Nothing here touches the network unless asked to.

Cache layout (``data_home()`` as for MNIST)::

    cifar10/cifar-10-python.tar.gz          read in place (the tarball is never extracted)
    fashion-mnist/train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, ...

Where the pinned hashes come from (each is the sha256 of the file exactly as served):

* CIFAR-10: Keras's own loader, keras-team/keras ``keras/src/datasets/cifar10.py`` (``file_hash`` passed to
  ``get_file`` for ``cifar-10-python.tar.gz``); the same value is pinned in Britefury/batchup
  ``batchup/datasets/cifar10.py``.
* Fashion-MNIST: Keras's loader (keras-team/keras ``keras/src/datasets/fashion_mnist.py``) downloads without a
  hash, so these come from Britefury/batchup ``batchup/datasets/fashion_mnist.py`` (commit 06e1261, the
  ``_SHA256_*`` constants for the files of the official Zalando mirror); several independent public checksum
  lists give the same four values.

The CIFAR-10 batches are Python pickles.  They are read with an unpickler that can build only NumPy arrays and
plain Python containers: any other global (``os.system``, ...) in the file is refused, so a tampered file that
somehow matched the hash still could not run code.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normlab.data.download import data_home, download_files, verify_file
from normlab.data.errors import DataError
from normlab.data.idx import PathLike
from normlab.data.mnist import FULL_VAL_SIZE, Labeled, Splits, decode_idx_pair


@dataclass(frozen=True)
class Remote:
    """A data set's files on the web: the cache subfolder, mirrors (tried in order), ``{file name: sha256}`` of
    each file as served, and the class names."""

    name: str
    subdir: str
    mirrors: tuple[str, ...]
    files: Mapping[str, str]
    class_names: tuple[str, ...] = field(default=())

    def directory(self, root: PathLike | None = None) -> Path:
        return data_home(root) / self.subdir


CIFAR10 = Remote(
    name="CIFAR-10",
    subdir="cifar10",
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    files={
        # keras-team/keras keras/src/datasets/cifar10.py (file_hash); also Britefury/batchup cifar10.py
        "cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    },
    class_names=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
)

FASHION_MNIST = Remote(
    name="Fashion-MNIST",
    subdir="fashion-mnist",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's own
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras's copy
    ),
    files={
        # Britefury/batchup batchup/datasets/fashion_mnist.py (commit 06e1261), _SHA256_* constants
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
)

REMOTES: dict[str, Remote] = {"cifar10": CIFAR10, "fashion-mnist": FASHION_MNIST}


def download_remote(
    remote: Remote,
    root: PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    *,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download and verify ``remote``'s files into ``remote.directory(root)`` (see :func:`download_files`).
    ``mirrors`` and ``checksums`` (``{file name: sha256}``) override the pinned ones (tests pass their own)."""
    return download_files(
        remote.directory(root),
        dict(remote.files if checksums is None else checksums),
        tuple(remote.mirrors if mirrors is None else mirrors),
        what=remote.name,
        hashed="file",
        timeout=timeout,
        log=log,
    )


def _verified_path(
    remote: Remote, name: str, root: PathLike | None, sums: Mapping[str, str]
) -> Path:
    path = remote.directory(root) / name
    if not path.is_file():
        key = next(k for k, v in REMOTES.items() if v.name == remote.name)
        raise DataError(
            f"{remote.name} not found: expected {path}. Get it with `normlab data download {key}` "
            "(or download=True)"
        )
    if name not in sums:
        raise ValueError(f"{remote.name}: no checksum given for {name}")
    verify_file(path, sums[name])
    return path


def _load(
    remote: Remote,
    split: str,
    root: PathLike | None,
    download: bool,
    checksums: Mapping[str, str] | None,
    read: Callable[[str, PathLike | None, Mapping[str, str]], Labeled],
) -> Splits | Labeled:
    if split not in ("full", "train", "test"):
        raise ValueError(
            f"load {remote.name}: unknown split {split!r}; expected 'full', 'train' or 'test'"
        )
    sums = dict(remote.files if checksums is None else checksums)

    def from_cache() -> Splits | Labeled:
        if split != "full":
            return read(split, root, sums)
        train = read("train", root, sums)
        if len(train.y) <= FULL_VAL_SIZE:
            raise DataError(
                f"{remote.directory(root)}: {len(train.y)} training images; 'full' needs more than "
                f"{FULL_VAL_SIZE} (the last {FULL_VAL_SIZE} are the validation part)"
            )
        cut = len(train.y) - FULL_VAL_SIZE
        return Splits(
            Labeled(train.x[:cut], train.y[:cut]),
            Labeled(train.x[cut:], train.y[cut:]),
            read("test", root, sums),
        )

    try:
        return from_cache()
    except DataError:
        if not download:
            raise
    download_remote(remote, root, checksums=sums)
    return from_cache()


# ------------------------------------------------------------------------------------------- Fashion-MNIST
def load_fashion_mnist(
    split: str = "full",
    root: PathLike | None = None,
    download: bool = False,
    *,
    checksums: Mapping[str, str] | None = None,
) -> Splits | Labeled:
    """Fashion-MNIST, uint8 (N, 28, 28) images and int64 labels 0..9 (:data:`FASHION_MNIST` ``.class_names``).

    ``"full"``: train = the first 50,000 training images, val = the last 10,000, test = the test file;
    ``"train"`` / ``"test"``: one file pair.  Read from ``data_home(root)/fashion-mnist``, each file checked
    against its sha256 (``checksums`` overrides); ``download=True`` fetches what is missing or corrupt.
    """
    # looked up at call time, so tests can point the mirrors at a local server
    return _load(REMOTES["fashion-mnist"], split, root, download, checksums, _read_fashion_pair)


def _read_fashion_pair(split: str, root: PathLike | None, sums: Mapping[str, str]) -> Labeled:
    prefix = "train" if split == "train" else "t10k"
    raws = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte.gz"
        path = _verified_path(FASHION_MNIST, name, root, sums)
        try:
            raws.append((gzip.decompress(path.read_bytes()), str(path)))
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a valid gzip file ({e})") from None
    (images, images_name), (labels, labels_name) = raws
    return decode_idx_pair(images, images_name, labels, labels_name)


# ------------------------------------------------------------------------------------------- CIFAR-10
CIFAR_MEMBERS = {
    "train": tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    "test": ("cifar-10-batches-py/test_batch",),
}


def load_cifar10(
    split: str = "full",
    root: PathLike | None = None,
    download: bool = False,
    *,
    checksums: Mapping[str, str] | None = None,
) -> Splits | Labeled:
    """CIFAR-10, uint8 (N, 3, 32, 32) RGB images (NCHW) and int64 labels 0..9 (:data:`CIFAR10` ``.class_names``).

    ``"full"``: train = the first 40,000 of the 50,000 training images, val = the last 10,000, test = the test
    batch; ``"train"`` / ``"test"``: one part.  Read from ``data_home(root)/cifar10/cifar-10-python.tar.gz``
    after checking its sha256; ``download=True`` fetches it first if it is missing or corrupt.
    """
    return _load(REMOTES["cifar10"], split, root, download, checksums, _read_cifar_part)


def _read_cifar_part(split: str, root: PathLike | None, sums: Mapping[str, str]) -> Labeled:
    path = _verified_path(CIFAR10, "cifar-10-python.tar.gz", root, sums)
    xs, ys = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in CIFAR_MEMBERS[split]:
                try:
                    handle = tar.extractfile(member)
                except KeyError:
                    handle = None
                if handle is None:
                    raise DataError(f"{path}: the archive has no file {member}")
                x, y = parse_cifar_batch(handle.read(), f"{path}:{member}")
                xs.append(x)
                ys.append(y)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable tar.gz archive ({e})") from None
    return Labeled(np.concatenate(xs), np.concatenate(ys))


class _ArraysOnly(pickle.Unpickler):
    """Builds NumPy arrays and plain containers; refuses every other global a pickle asks for."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return np.ndarray.__reduce__(np.empty(0))[
                0
            ]  # numpy's own _reconstruct, wherever it lives
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes in protocol 2
            return codecs.encode
        raise pickle.UnpicklingError(f"refused to load the global {module}.{name}")


def parse_cifar_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (a pickled dict with ``data`` (N, 3072) uint8 and ``labels``) as
    ``(uint8 (N, 3, 32, 32), int64 (N,))``; ``DataError`` naming it if it is anything else."""
    try:
        batch = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{name}: not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{name}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    pixels, labels = batch.get("data"), batch.get("labels")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
        raise DataError(f"{name}: 'data' must be a uint8 array (N, 3072)")
    if pixels.shape[1] != 3 * 32 * 32:
        raise DataError(f"{name}: 'data' has rows of {pixels.shape[1]} bytes, expected 3072")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(pixels),):
        raise DataError(
            f"{name}: {labels.size} labels for {len(pixels)} images; expected one label per image"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{name}: labels must be 0..9, found {labels.min()}..{labels.max()}")
    # each row: 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    return pixels.reshape(-1, 3, 32, 32), labels


# ------------------------------------------------------------------------------------------- by name
def load_named(name: str, split: str = "full", root: PathLike | None = None) -> Splits | Labeled:
    """``load_cifar10`` / ``load_fashion_mnist`` by the CLI's name."""
    loaders = {"cifar10": load_cifar10, "fashion-mnist": load_fashion_mnist}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(loaders)}")
    return loaders[name](split, root)
