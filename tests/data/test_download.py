"""download_mnist against a local HTTP server (and file:// URLs) serving files the test made.

Nothing here reaches the network: the autouse fixture in conftest.py points the default mirrors at a closed port.
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from normlab.data import DataError, data_home, download_mnist, load_mnist
from normlab.data.download import MNIST_MIRRORS as REAL_MIRRORS

STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _assert_has_the_files(directory: Path, fake_mnist) -> None:
    assert sorted(os.listdir(directory)) == sorted(f"{s}.gz" for s in STEMS)  # no .part left
    for stem in STEMS:
        got = gzip.decompress((directory / f"{stem}.gz").read_bytes())
        assert got == gzip.decompress(fake_mnist.gz[stem])


def _corrupt(data: bytes) -> bytes:
    """The same file with one byte of content changed: a valid gzip whose content hash differs."""
    raw = bytearray(gzip.decompress(data))
    raw[-1] ^= 0xFF
    return gzip.compress(bytes(raw), compresslevel=1)


def test_the_default_mirrors_and_checksums_are_the_canonical_ones() -> None:
    assert REAL_MIRRORS[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert "http://yann.lecun.com/exdb/mnist/" in REAL_MIRRORS
    assert all(m.endswith("/") for m in REAL_MIRRORS)


def test_skips_an_unreachable_and_a_corrupt_mirror(
    tmp_path: Path, server, closed_port_url: str, fake_mnist
) -> None:
    corrupt = server.serve("corrupt", {s: _corrupt(d) for s, d in fake_mnist.gz.items()})
    good = server.serve("good", fake_mnist.gz)
    lines: list[str] = []
    directory = download_mnist(
        tmp_path,
        mirrors=[closed_port_url, corrupt, good],
        checksums=fake_mnist.checksums,
        log=lines.append,
    )
    assert directory == tmp_path / "mnist"
    _assert_has_the_files(directory, fake_mnist)
    # each file was tried on the corrupt mirror, then fetched from the good one
    assert [p for p, _ in server.requests] == [
        f"/{prefix}/{stem}.gz" for stem in STEMS for prefix in ("corrupt", "good")
    ]
    # the refused mirror was tried once, then skipped for the other files
    assert sum(closed_port_url in line for line in lines) == 1


def test_every_mirror_failing_says_what_to_download_and_where(
    tmp_path: Path, server, closed_port_url: str, fake_mnist
) -> None:
    corrupt = server.serve("corrupt", {s: _corrupt(d) for s, d in fake_mnist.gz.items()})
    empty = server.url("empty")  # answers 404
    with pytest.raises(DataError) as info:
        download_mnist(
            tmp_path, mirrors=[closed_port_url, corrupt, empty], checksums=fake_mnist.checksums
        )
    message = str(info.value)
    assert "\n" not in message
    for stem in STEMS:
        assert f"{stem}.gz" in message
    for mirror in (closed_port_url, corrupt, empty):
        assert mirror in message
    assert "HTTP 404" in message and "sha256" in message and "refused" in message.lower()
    assert f"put them in {tmp_path / 'mnist'}" in message
    assert os.listdir(tmp_path / "mnist") == []  # nothing at a final path, no .part either


def test_files_already_present_are_verified_not_fetched(tmp_path: Path, server, fake_mnist) -> None:
    good = server.serve("good", fake_mnist.gz)
    download_mnist(tmp_path, mirrors=[good], checksums=fake_mnist.checksums)
    server.requests.clear()
    download_mnist(tmp_path, mirrors=[good], checksums=fake_mnist.checksums)
    assert server.requests == []


def test_a_corrupt_file_in_the_cache_is_downloaded_again(
    tmp_path: Path, server, fake_mnist
) -> None:
    good = server.serve("good", fake_mnist.gz)
    directory = tmp_path / "mnist"
    directory.mkdir()
    for stem in STEMS:
        (directory / f"{stem}.gz").write_bytes(fake_mnist.gz[stem])
    bad = directory / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(fake_mnist.gz["train-labels-idx1-ubyte"][:-20])  # truncated
    download_mnist(tmp_path, mirrors=[good], checksums=fake_mnist.checksums)
    assert server.requests == [("/good/train-labels-idx1-ubyte.gz", None)]
    _assert_has_the_files(directory, fake_mnist)


def test_an_interrupted_download_is_resumed(tmp_path: Path, server, fake_mnist) -> None:
    good = server.serve("good", fake_mnist.gz)
    path = "/good/train-images-idx3-ubyte.gz"
    size = len(fake_mnist.gz["train-images-idx3-ubyte"])
    server.cut_once[path] = size // 3  # the connection drops after a third of the file
    with pytest.raises(DataError, match=f"connection closed after {size // 3} of {size} bytes"):
        download_mnist(tmp_path, mirrors=[good], checksums=fake_mnist.checksums)
    directory = tmp_path / "mnist"
    assert not (directory / "train-images-idx3-ubyte.gz").exists()
    assert (directory / "train-images-idx3-ubyte.gz.part").stat().st_size == size // 3

    server.requests.clear()
    download_mnist(tmp_path, mirrors=[good], checksums=fake_mnist.checksums)
    assert server.requests[0] == (path, f"bytes={size // 3}-")
    _assert_has_the_files(directory, fake_mnist)


def test_resume_without_range_support_downloads_the_whole_file(
    tmp_path: Path, server, fake_mnist
) -> None:
    server.ranges = False
    good = server.serve("good", fake_mnist.gz)
    directory = tmp_path / "mnist"
    directory.mkdir()
    part = directory / "t10k-images-idx3-ubyte.gz.part"
    part.write_bytes(fake_mnist.gz["t10k-images-idx3-ubyte"][:100])
    download_mnist(tmp_path, mirrors=[good], checksums=fake_mnist.checksums)
    _assert_has_the_files(directory, fake_mnist)


def test_a_stale_corrupt_part_is_discarded_and_fetched_from_zero(
    tmp_path: Path, server, fake_mnist
) -> None:
    good = server.serve("good", {"t10k-labels-idx1-ubyte": fake_mnist.gz["t10k-labels-idx1-ubyte"]})
    directory = tmp_path / "mnist"
    directory.mkdir()
    (directory / "t10k-labels-idx1-ubyte.gz.part").write_bytes(b"\x1f\x8b garbage from elsewhere")
    sums = {"t10k-labels-idx1-ubyte": fake_mnist.checksums["t10k-labels-idx1-ubyte"]}
    download_mnist(tmp_path, mirrors=[good], checksums=sums)
    path = "/good/t10k-labels-idx1-ubyte.gz"
    assert server.requests == [(path, "bytes=25-"), (path, None)]
    assert os.listdir(directory) == ["t10k-labels-idx1-ubyte.gz"]


def test_file_urls_work_as_mirrors(tmp_path: Path, fake_mnist) -> None:
    mirror = fake_mnist.directory.as_uri() + "/"
    directory = download_mnist(tmp_path / "root", mirrors=[mirror], checksums=fake_mnist.checksums)
    _assert_has_the_files(directory, fake_mnist)


def test_a_root_that_cannot_be_written_is_a_clear_error(tmp_path: Path, fake_mnist) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match="cannot write the MNIST cache directory") as info:
        download_mnist(blocker, mirrors=[fake_mnist.directory.as_uri()])
    assert str(blocker / "mnist") in str(info.value)


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_a_read_only_root_is_a_clear_error(tmp_path: Path, fake_mnist) -> None:
    root = tmp_path / "ro"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist").chmod(0o500)
    try:
        with pytest.raises(DataError, match="cannot write the MNIST cache directory"):
            download_mnist(root, mirrors=[fake_mnist.directory.as_uri()])
    finally:
        (root / "mnist").chmod(0o700)


def test_load_mnist_download_true_fetches_missing_files(
    tmp_path: Path, server, fake_mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normlab.data import download

    monkeypatch.setattr(download, "MNIST_MIRRORS", (server.serve("good", fake_mnist.gz),))
    with pytest.raises(DataError, match="not found"):
        load_mnist("test", root=tmp_path, checksums=fake_mnist.checksums)
    assert server.requests == []  # download=False never touches the network
    got = load_mnist("test", root=tmp_path, download=True, checksums=fake_mnist.checksums)
    np.testing.assert_array_equal(got.y, fake_mnist.arrays["test"][1])


def test_data_home_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path / "env"))
    assert data_home() == tmp_path / "env"
    assert data_home(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("NORMLAB_DATA")
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert data_home() == tmp_path / "xdg" / "normlab"
        monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec: ignored
        assert data_home() == Path.home() / ".cache" / "normlab"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert data_home() == Path.home() / ".cache" / "normlab"
