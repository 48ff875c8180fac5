"""The IDX file format of MNIST: read, validate, write.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the data in C order, big-endian::

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions (1 for labels, 3 for images)
    4 * ndim    the size of each dimension
    ...         prod(sizes) * itemsize bytes of data, and nothing after them

MNIST's files are usually gzip-compressed; both forms are read (gzip is recognised by its own magic bytes, not by
the file name).
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from normlab.data.errors import DataError

PathLike = str | os.PathLike[str]

_CODE_TO_DTYPE = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_CODE = {(dt.kind, dt.itemsize): code for code, dt in _CODE_TO_DTYPE.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(data: bytes) -> bool:
    return data[:2] == _GZIP_MAGIC


def gunzip_if_needed(data: bytes, name: str) -> bytes:
    """``data`` decompressed if it is gzip, else unchanged; ``DataError`` naming ``name`` if the gzip is broken."""
    if not is_gzip(data):
        return data
    try:
        return gzip.decompress(data)
    # BadGzipFile is an OSError, a truncated stream an EOFError, corrupt deflate data a zlib.error
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: not a valid gzip file ({type(e).__name__}: {e})") from e


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """Decode uncompressed IDX bytes into a native-byte-order array of the stored dtype and shape.

    ``name`` (usually the file path) is used in error messages.  The returned array owns its memory and is writable.
    """
    if len(raw) < 4:
        raise DataError(
            f"{name}: {len(raw)} bytes is too short for an IDX header (at least 4 bytes expected)"
        )
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{name}: bad IDX magic number 0x{raw[:4].hex()}: expected two zero bytes, a type code and the number "
            "of dimensions (0x00000801 for MNIST labels, 0x00000803 for images)"
        )
    if code not in _CODE_TO_DTYPE:
        known = ", ".join(f"0x{c:02X}" for c in _CODE_TO_DTYPE)
        raise DataError(f"{name}: unknown IDX type code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions; expected at least 1")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"{name}: truncated IDX header: {ndim} dimensions need {header_len} header bytes, "
            f"the file has {len(raw)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _CODE_TO_DTYPE[code]
    # Python ints: no overflow however large the declared dimensions are
    expected_len = header_len + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(raw) != expected_len:
        what = "truncated" if len(raw) < expected_len else "has trailing bytes"
        raise DataError(
            f"{name}: IDX file {what}: header declares shape {shape} of {dtype.name}, which needs "
            f"{expected_len} bytes, but the file has {len(raw)}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into an array of its stored dtype and shape.

    MNIST images come back as uint8 of shape (N, 28, 28), labels as uint8 of shape (N,).
    Raises ``DataError`` naming the file if it is missing, not gzip when it claims to be, has a bad magic number,
    or its length does not match its header.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"{path}: cannot read IDX file ({type(e).__name__}: {e.strerror or e})"
        ) from e
    return parse_idx(gunzip_if_needed(data, str(path)), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes (uncompressed) of ``array``; its dtype must be one IDX can store."""
    array = np.asarray(array)
    code = _KIND_TO_CODE.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise DataError(
            f"IDX cannot store dtype {array.dtype}; expected uint8, int8, int16, int32, float32 or float64"
        )
    if not 1 <= array.ndim <= 255:
        raise DataError(f"IDX stores 1 to 255 dimensions; got an array with {array.ndim}")
    if any(d >= 2**32 for d in array.shape):
        raise DataError(f"IDX dimensions are uint32; shape {array.shape} does not fit")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()


def write_idx(path: PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``; returns the path.

    The file is written to a temporary name in the same directory and renamed into place, so ``path`` never holds
    a half-written file.  The gzip header carries no timestamp, so the same array always gives the same bytes.
    """
    path = Path(path)
    data = encode_idx(array)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise DataError(
            f"{path}: cannot write IDX file ({type(e).__name__}: {e.strerror or e})"
        ) from e
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
