"""CIFAR-10 and Fashion-MNIST: downloaded from a local HTTP server serving files the test made, verified by the
sha256 the test computed, loaded; the restricted unpickler; the pinned manifests."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from normlab.data import (
    CIFAR10,
    FASHION_MNIST,
    DataError,
    download_remote,
    load_cifar10,
    load_fashion_mnist,
)
from normlab.data.color_datasets import parse_cifar_batch

TARBALL = "cifar-10-python.tar.gz"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    # as the original files: a protocol-2 pickle of a dict with bytes keys, rows of 3072 bytes, labels a list
    batch = {
        b"batch_label": b"fake",
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [b"x.png"] * len(images),
    }
    return pickle.dumps(batch, protocol=2)


def _tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fake_cifar() -> tuple[bytes, dict[str, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(0)
    parts = {}
    members = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, 4)
        parts[name] = (images, labels)
        members[name] = _batch_bytes(images, labels)
    return _tarball(members), parts


def test_cifar10_downloads_verifies_and_loads(
    tmp_path: Path, server, closed_port_url, fake_cifar
) -> None:
    tarball, parts = fake_cifar
    server.files[f"/bad/{TARBALL}"] = tarball[:-1] + bytes([tarball[-1] ^ 1])
    server.files[f"/good/{TARBALL}"] = tarball
    sums = {TARBALL: _sha(tarball)}
    lines: list[str] = []
    directory = download_remote(
        CIFAR10,
        tmp_path,
        mirrors=[closed_port_url, server.url("bad"), server.url("good")],
        checksums=sums,
        log=lines.append,
    )
    assert directory == tmp_path / "cifar10" and os.listdir(directory) == [TARBALL]
    assert any("sha256" in line for line in lines) or len(server.requests) == 2
    train = load_cifar10("train", tmp_path, checksums=sums)
    test = load_cifar10("test", tmp_path, checksums=sums)
    expected_x = np.concatenate([parts[f"data_batch_{i}"][0] for i in range(1, 6)])
    expected_y = np.concatenate([parts[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(train.x, expected_x)
    np.testing.assert_array_equal(train.y, expected_y)
    assert train.x.shape == (20, 3, 32, 32) and train.y.dtype == np.int64
    np.testing.assert_array_equal(test.x, parts["test_batch"][0])
    # present and intact: a second download asks the server for nothing
    server.requests.clear()
    download_remote(CIFAR10, tmp_path, mirrors=[server.url("good")], checksums=sums)
    assert server.requests == []


def test_cifar_rows_are_red_then_green_then_blue_planes() -> None:
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, :1024] = 200  # the red plane
    row[0, 1024 + 5] = 7  # green, row 0, column 5
    x, _ = parse_cifar_batch(pickle.dumps({b"data": row, b"labels": [3]}, protocol=2), "one")
    assert x.shape == (1, 3, 32, 32)
    assert (x[0, 0] == 200).all() and x[0, 1, 0, 5] == 7 and x[0, 2].sum() == 0


def test_cifar_resumes_an_interrupted_download(tmp_path: Path, server, fake_cifar) -> None:
    tarball, _ = fake_cifar
    server.files[f"/m/{TARBALL}"] = tarball
    server.cut_once[f"/m/{TARBALL}"] = 1000
    sums = {TARBALL: _sha(tarball)}
    with pytest.raises(DataError, match="could not download CIFAR-10"):
        download_remote(CIFAR10, tmp_path, mirrors=[server.url("m")], checksums=sums)
    assert (tmp_path / "cifar10" / f"{TARBALL}.part").stat().st_size == 1000
    download_remote(CIFAR10, tmp_path, mirrors=[server.url("m")], checksums=sums)
    assert server.requests[-1] == (f"/m/{TARBALL}", "bytes=1000-")
    assert (tmp_path / "cifar10" / TARBALL).read_bytes() == tarball


def test_cifar_offline_and_corrupt_cache_errors_say_what_to_do(tmp_path: Path, fake_cifar) -> None:
    with pytest.raises(DataError, match="normlab data download cifar10"):
        load_cifar10("train", tmp_path)
    with pytest.raises(DataError, match="could not download CIFAR-10") as info:
        load_cifar10("train", tmp_path, download=True)  # the default mirrors: a closed local port
    assert f"put them in {tmp_path / 'cifar10'}" in str(info.value)
    (tmp_path / "cifar10" / TARBALL).write_bytes(fake_cifar[0][:-10])
    with pytest.raises(DataError, match=rf"{TARBALL}: sha256 of the file is"):
        load_cifar10("train", tmp_path, checksums={TARBALL: _sha(fake_cifar[0])})


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Payload(marker), b"labels": []}, protocol=2)
    with pytest.raises(DataError, match=r"evil: not a CIFAR-10 batch .*refused to load the global"):
        parse_cifar_batch(evil, "evil")
    assert not marker.exists()
    with pytest.raises(DataError, match="rows of 100 bytes"):
        parse_cifar_batch(pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}), "short")
    with pytest.raises(DataError, match="2 labels for 1 images"):
        parse_cifar_batch(
            pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1, 2]}), "mismatch"
        )


def test_fashion_mnist_downloads_and_loads_full(tmp_path: Path, server, fake_mnist) -> None:
    # Fashion-MNIST has MNIST's format and file names: the fake MNIST files stand in for it
    url = server.serve("fashion", fake_mnist.gz)
    sums = {f"{stem}.gz": _sha(data) for stem, data in fake_mnist.gz.items()}
    download_remote(FASHION_MNIST, tmp_path, mirrors=[url], checksums=sums)
    splits = load_fashion_mnist("full", tmp_path, checksums=sums)
    train_x, train_y = fake_mnist.arrays["train"]
    np.testing.assert_array_equal(splits.train.x, train_x[:-10_000])
    np.testing.assert_array_equal(splits.val.y, train_y[-10_000:])
    np.testing.assert_array_equal(splits.test.x, fake_mnist.arrays["test"][0])
    with pytest.raises(DataError, match="normlab data download fashion-mnist"):
        load_fashion_mnist("test", tmp_path / "elsewhere")


def test_the_pinned_manifests() -> None:
    for remote in (CIFAR10, FASHION_MNIST):
        assert all(re.fullmatch(r"[0-9a-f]{64}", sha) for sha in remote.files.values())
        assert all(m.endswith("/") for m in remote.mirrors) and len(remote.class_names) == 10
    assert CIFAR10.files[TARBALL].startswith("6d958be0")
    assert sorted(FASHION_MNIST.files) == sorted(
        f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
    )
