"""IDX reader and writer: the format as specified, round trips, and every kind of malformed file."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from normlab.data import DataError, read_idx, write_idx
from normlab.data import idx as idx_module


def _header(code: int, *dims: int) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def test_writer_produces_the_bytes_the_format_specifies(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", np.array([1, 2, 3], dtype=np.uint8))
    assert (
        tmp_path / "a"
    ).read_bytes() == b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x01\x02\x03"
    write_idx(tmp_path / "b", np.array([[1, -2]], dtype=np.int32))
    expected = b"\x00\x00\x0c\x02" + b"\x00\x00\x00\x01\x00\x00\x00\x02"
    expected += b"\x00\x00\x00\x01" + b"\xff\xff\xff\xfe"  # big-endian int32
    assert (tmp_path / "b").read_bytes() == expected


def test_reader_decodes_hand_written_bytes(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(_header(0x08, 2, 2, 3) + bytes(range(12)))
    x = read_idx(path)
    assert x.dtype == np.uint8 and x.shape == (2, 2, 3)
    assert x[1, 0, 2] == 8
    path.write_bytes(_header(0x0D, 2) + struct.pack(">2f", 1.5, -0.25))
    f = read_idx(path)
    assert f.dtype == np.float32 and f.dtype.isnative
    assert f.tolist() == [1.5, -0.25]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_round_trip(tmp_path: Path, dtype: type, name: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(4, 3, 5)) * 100).astype(dtype)
    back = read_idx(write_idx(tmp_path / name, array))
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_gzip_is_detected_by_content_and_written_deterministically(tmp_path: Path) -> None:
    array = np.arange(20, dtype=np.uint8)
    gz = write_idx(tmp_path / "x.gz", array).read_bytes()
    assert gz[:2] == b"\x1f\x8b"
    assert write_idx(tmp_path / "y.gz", array).read_bytes() == gz  # no timestamp in the header
    raw_named_gz = tmp_path / "raw.gz"
    raw_named_gz.write_bytes(gzip.decompress(gz))
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"", "too short for an IDX header"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad IDX magic number 0x01000801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
        (_header(0x08, 2, 28, 28) + bytes(2 * 784 - 1), "truncated"),
        (_header(0x08, 3) + bytes(4), "trailing bytes"),
        (_header(0x0C, 2) + bytes(5), "which needs 16 bytes, but the file has 13"),
        (b"\x1f\x8b" + b"not really gzip", "not a valid gzip file"),
        (gzip.compress(_header(0x08, 3) + bytes(3))[:-12], "not a valid gzip file"),
    ],
    ids=[
        "empty",
        "bad-magic",
        "bad-type",
        "zero-dims",
        "short-header",
        "truncated",
        "trailing",
        "int32-length",
        "bad-gzip",
        "truncated-gzip",
    ],
)
def test_malformed_files_are_rejected_with_the_file_named(
    tmp_path: Path, content: bytes, phrase: str
) -> None:
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=phrase) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read IDX file") as info:
        read_idx(tmp_path / "nope.gz")
    assert "nope.gz" in str(info.value)


@pytest.mark.parametrize("array", [np.zeros(3, np.int64), np.zeros(3, bool), np.float32(1.0)])
def test_writer_rejects_what_idx_cannot_hold(tmp_path: Path, array: np.ndarray) -> None:
    with pytest.raises(DataError, match="IDX"):
        write_idx(tmp_path / "x", array)
    assert os.listdir(tmp_path) == []


def test_writer_leaves_nothing_behind_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError, match="missing-dir"):
        write_idx(tmp_path / "missing-dir" / "x", np.zeros(3, np.uint8))

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(idx_module.os, "replace", failing_replace)
    with pytest.raises(DataError, match="cannot write IDX file"):
        write_idx(tmp_path / "x.gz", np.zeros(3, np.uint8))
    assert os.listdir(tmp_path) == []  # neither a final file nor a temporary one


def test_writer_replaces_an_existing_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"old")
    write_idx(path, np.arange(4, dtype=np.uint8))
    assert os.listdir(tmp_path) == ["x"]
    np.testing.assert_array_equal(read_idx(path), np.arange(4))
