"""load_mnist: the bundled sample, the full set from a cache directory, and bad files."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from normlab.data import DataError, Labeled, Splits, load_mnist, read_idx, write_idx
from normlab.data.download import MNIST_SHA256

# Label counts of the official MNIST test split, digits 0-9, from the data set's documentation.
DOCUMENTED_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

BUNDLED = resources.files("normlab.data") / "files"


def test_sample_has_the_documented_label_counts() -> None:
    splits = load_mnist("sample")
    labels = np.concatenate([part.y for part in splits])
    assert np.bincount(labels, minlength=10).tolist() == DOCUMENTED_TEST_COUNTS


def test_sample_shapes_dtypes_and_parts() -> None:
    splits = load_mnist("sample")
    assert isinstance(splits, Splits) and isinstance(splits.train, Labeled)
    sizes = {name: len(part.y) for name, part in zip(Splits._fields, splits, strict=True)}
    assert sizes == {"train": 6000, "val": 2000, "test": 2000}
    for part in splits:
        assert part.x.dtype == np.uint8 and part.x.shape == (len(part.y), 28, 28)
        assert part.y.dtype == np.int64 and part.y.ndim == 1
        assert part.x.max() == 255 and part.x.min() == 0


def test_sample_parts_follow_the_documented_index_rule() -> None:
    # reference: the bundled files read directly, then split by i % 5 here
    x = read_idx(Path(str(BUNDLED / "t10k-images-idx3-ubyte.gz")))
    y = read_idx(Path(str(BUNDLED / "t10k-labels-idx1-ubyte.gz")))
    r = np.arange(10_000) % 5
    train, val, test = load_mnist("sample")
    for part, mask in ((train, np.isin(r, [0, 1, 2])), (val, r == 3), (test, r == 4)):
        np.testing.assert_array_equal(part.x, x[mask])
        np.testing.assert_array_equal(part.y, y[mask])
    assert train.y[:6].tolist() == [y[0], y[1], y[2], y[5], y[6], y[7]]


def test_sample_is_deterministic_and_each_call_returns_fresh_arrays() -> None:
    a, b = load_mnist("sample"), load_mnist("sample")
    np.testing.assert_array_equal(a.val.x, b.val.x)
    a.train.x[:] = 0
    assert load_mnist("sample").train.x.any()


def test_bundled_files_are_package_data_with_the_canonical_content() -> None:
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        resource = BUNDLED / f"{stem}.gz"
        assert resource.is_file()
        assert "normlab" in str(resource) and "shared" not in str(resource)
        digest = hashlib.sha256(gzip.decompress(resource.read_bytes())).hexdigest()
        assert digest == MNIST_SHA256[stem]


def _cache(tmp_path: Path, fake_mnist) -> Path:
    """A data root whose mnist/ holds the fake files."""
    shutil.copytree(fake_mnist.directory, tmp_path / "root" / "mnist")
    return tmp_path / "root"


def test_train_and_test_from_the_cache(tmp_path: Path, fake_mnist) -> None:
    root = _cache(tmp_path, fake_mnist)
    for split in ("train", "test"):
        got = load_mnist(split, root=root, checksums=fake_mnist.checksums)
        images, labels = fake_mnist.arrays[split]
        assert isinstance(got, Labeled)
        assert got.y.dtype == np.int64
        np.testing.assert_array_equal(got.x, images)
        np.testing.assert_array_equal(got.y, labels)


def test_full_takes_the_last_10000_training_images_as_validation(
    tmp_path: Path, fake_mnist
) -> None:
    root = _cache(tmp_path, fake_mnist)
    train, val, test = load_mnist("full", root=root, checksums=fake_mnist.checksums)
    images, labels = fake_mnist.arrays["train"]
    n = len(labels)
    assert len(train.y) == n - 10_000 and len(val.y) == 10_000
    np.testing.assert_array_equal(train.x, images[: n - 10_000])
    np.testing.assert_array_equal(val.x, images[n - 10_000 :])
    np.testing.assert_array_equal(val.y, labels[n - 10_000 :])
    np.testing.assert_array_equal(test.x, fake_mnist.arrays["test"][0])


def test_root_defaults_to_normlab_data(
    tmp_path: Path, fake_mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMLAB_DATA", str(_cache(tmp_path, fake_mnist)))
    got = load_mnist("test", checksums=fake_mnist.checksums)
    np.testing.assert_array_equal(got.y, fake_mnist.arrays["test"][1])


def test_decompressed_files_are_accepted(tmp_path: Path, fake_mnist) -> None:
    directory = tmp_path / "mnist"
    directory.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (directory / stem).write_bytes(gzip.decompress(fake_mnist.gz[stem]))
    got = load_mnist("test", root=tmp_path, checksums=fake_mnist.checksums)
    np.testing.assert_array_equal(got.x, fake_mnist.arrays["test"][0])


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_mnist("train", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert "normlab data download mnist" in message


def test_the_real_checksums_reject_other_content(tmp_path: Path, fake_mnist) -> None:
    root = _cache(tmp_path, fake_mnist)
    with pytest.raises(DataError, match="sha256") as info:
        load_mnist("test", root=root)  # default checksums: the canonical MNIST ones
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    assert MNIST_SHA256["t10k-images-idx3-ubyte"] in str(info.value)


def _write_pair(tmp_path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    directory = tmp_path / "mnist"
    directory.mkdir(exist_ok=True)
    sums = {}
    for stem, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        data = write_idx(directory / f"{stem}.gz", array).read_bytes()
        sums[stem] = hashlib.sha256(gzip.decompress(data)).hexdigest()
    return sums


@pytest.mark.parametrize(
    ("images", "labels", "phrase", "culprit"),
    [
        (np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8), "has 4 labels but", "labels"),
        (np.zeros((5, 28, 27), np.uint8), np.zeros(5, np.uint8), r"shape \(N, 28, 28\)", "images"),
        (np.zeros((5, 784), np.uint8), np.zeros(5, np.uint8), r"shape \(N, 28, 28\)", "images"),
        (
            np.zeros((5, 28, 28), np.float32),
            np.zeros(5, np.uint8),
            "expected uint8 images",
            "images",
        ),
        (np.zeros((5, 28, 28), np.uint8), np.zeros((5, 1), np.uint8), "labels of shape", "labels"),
        (np.zeros((2, 28, 28), np.uint8), np.array([3, 10], np.uint8), "label 10", "labels"),
    ],
    ids=["count-mismatch", "wrong-width", "flat", "float", "2d-labels", "label-10"],
)
def test_inconsistent_files_are_rejected(
    tmp_path: Path, images: np.ndarray, labels: np.ndarray, phrase: str, culprit: str
) -> None:
    sums = _write_pair(tmp_path, images, labels)
    with pytest.raises(DataError, match=phrase) as info:
        load_mnist("test", root=tmp_path, checksums=sums)
    assert f"{culprit}-idx" in str(info.value)


def test_full_needs_more_than_the_validation_part(tmp_path: Path, fake_mnist) -> None:
    sums = _write_pair(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8))
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        src = tmp_path / "mnist" / f"{stem.replace('train', 't10k')}.gz"
        shutil.copy(src, tmp_path / "mnist" / f"{stem}.gz")
        sums[stem] = sums[stem.replace("train", "t10k")]
    with pytest.raises(DataError, match="'full' needs more than 10000"):
        load_mnist("full", root=tmp_path, checksums=sums)


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_mnist("validation")
