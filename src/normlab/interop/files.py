"""Writing an output file atomically, after checking the path (the export functions and the CLI share it)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from normlab.interop.errors import InteropError


def check_output_path(path: str | os.PathLike[str], force: bool, where: str) -> Path:
    """``path`` as a Path, or :class:`InteropError` if its directory is missing or it exists (without
    ``force``).  Called before any work, so a refused export costs nothing."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise InteropError(
            f"{where}: the directory {str(directory)!r} of {str(path)!r} does not exist"
        )
    if path.is_dir():
        raise InteropError(f"{where}: {str(path)!r} is a directory")
    if path.exists() and not force:
        raise InteropError(
            f"{where}: {str(path)!r} exists; pass force=True (--force) to replace it"
        )
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: a temporary file in the same directory, fsynced, renamed over it.
    Readers see the old file or the new one, never a part; a failure leaves no temporary file behind."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where directories can be opened
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
