"""Where data is cached, and the verified MNIST downloader.

Nothing here touches the network unless :func:`download_mnist` is called.  Layout of the cache::

    data_home()                    $NORMLAB_DATA, else the platform cache dir (~/.cache/normlab on Linux)
      mnist/
        train-images-idx3-ubyte.gz   (the decompressed file, without .gz, is accepted too)
        train-labels-idx1-ubyte.gz
        t10k-images-idx3-ubyte.gz
        t10k-labels-idx1-ubyte.gz
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from normlab.data.errors import DataError
from normlab.data.idx import PathLike, gunzip_if_needed, is_gzip

# Tried in this order.  The first two are the copies torchvision and TensorFlow use; the original site is last
# because it has been intermittently unavailable.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# sha256 of each file's DECOMPRESSED content (the .gz bytes differ between mirrors' gzip headers; the content does
# not).  The two t10k values were computed from the files bundled in normlab/data/files/, which hold the official
# test split.  The two train values are the widely published ones (the same digests appear in many independent
# public MNIST loaders and checksum lists); a downloaded file that does not match is rejected.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

_CHUNK = 1 << 20


def data_home(root: PathLike | None = None) -> Path:
    """The directory normlab caches data sets in: ``root`` if given, else ``$NORMLAB_DATA``, else the platform
    cache directory (``$XDG_CACHE_HOME/normlab`` or ``~/.cache/normlab`` on Linux, ``~/Library/Caches/normlab`` on
    macOS, ``%LOCALAPPDATA%\\normlab`` on Windows).  It is not created here."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("NORMLAB_DATA")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        # the XDG spec says a relative path is invalid and must be ignored
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "normlab"


def mnist_dir(root: PathLike | None = None) -> Path:
    """The directory holding the four MNIST files: ``data_home(root) / "mnist"``."""
    return data_home(root) / "mnist"


def find_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem.gz`` if it exists, else ``directory/stem`` if it exists, else None."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def verify_content(data: bytes, sha256: str, name: str) -> bytes:
    """The content of ``data`` (gunzipped if it is gzip) after checking its sha256; ``DataError`` if it differs."""
    raw = gunzip_if_needed(data, name)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256.lower():
        what = "decompressed content" if is_gzip(data) else "content"
        raise DataError(
            f"{name}: sha256 of the {what} is {digest}, expected {sha256.lower()} (a corrupt or different file)"
        )
    return raw


def read_verified(path: Path, sha256: str) -> bytes:
    """The (decompressed) content of the file at ``path``, checked against ``sha256``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e.strerror or e})") from e
    return verify_content(data, sha256, str(path))


def download_mnist(
    root: PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    *,
    checksums: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download the four canonical MNIST files into ``mnist_dir(root)`` and return that directory.

    Each file is fetched as ``<mirror><name>.gz`` from ``mirrors`` in order (default :data:`MNIST_MIRRORS`) and its
    decompressed sha256 checked against ``checksums`` (``{name: sha256}``, default :data:`MNIST_SHA256`; its keys
    are the files to get).  Files already present with the right checksum are kept; a corrupt one is downloaded
    again.  Bytes arrive in ``<name>.gz.part`` and are renamed to the final name only once verified, so the final
    path never holds a partial or corrupt download; an interrupted ``.part`` is resumed (HTTP Range) next time.

    Raises ``DataError`` if the directory is not writable, or if a file could not be obtained from any mirror; the
    message says which files to download from where, and into which directory.  ``log`` receives one line per
    step (the CLI prints them).
    """
    checksums = dict(MNIST_SHA256 if checksums is None else checksums)
    return download_files(
        mnist_dir(root),
        {f"{stem}.gz": sha for stem, sha in checksums.items()},
        tuple(MNIST_MIRRORS if mirrors is None else mirrors),
        what="MNIST",
        hashed="content",
        timeout=timeout,
        log=log,
    )


def download_files(
    directory: Path,
    checksums: Mapping[str, str],
    mirrors: Sequence[str],
    *,
    what: str,
    hashed: str = "file",
    timeout: float = 30.0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download each file ``name`` of ``checksums`` (``{name: sha256}``) as ``<mirror><name>`` into ``directory``.

    The machinery of :func:`download_mnist` for any data set ``what`` (named in messages): mirrors in order,
    verified files kept, ``.part`` files resumed with HTTP Range, an atomic rename once verified, and an offline
    error that says what to put where.  ``hashed="content"``: the sha256 is of the gunzipped content (and an
    already decompressed copy without ``.gz`` is accepted); ``"file"``: of the bytes as served.
    """
    if hashed not in ("content", "file"):
        raise ValueError(f"download_files: hashed must be 'content' or 'file', got {hashed!r}")
    mirrors = tuple(mirrors)
    if not mirrors:
        raise ValueError(f"download_files: no mirrors given for {what}")
    say = log or (lambda _line: None)
    _ensure_writable(directory, what)

    # mirrors that could not be connected to are not tried again for the remaining files
    dead: set[str] = set()
    failed: dict[str, list[str]] = {}
    for name, sha in checksums.items():
        if _present(directory, name, sha, hashed, say):
            continue
        reasons = _download_one(directory, name, sha, hashed, mirrors, dead, timeout, say)
        if reasons:
            failed[name] = reasons
    if failed:
        first, *rest = failed
        more = f" (and {len(rest)} more file(s) failed)" if rest else ""
        names = ", ".join(failed)
        others = f" (or {', '.join(mirrors[1:])})" if len(mirrors) > 1 else ""
        raise DataError(
            f"could not download {what} into {directory}: {first}: {'; '.join(failed[first])}{more}. "
            f"Without network: download {names} from {mirrors[0]}{others} and put them in {directory}"
        )
    return directory


def verify_file(path: Path, sha256: str) -> None:
    """Check the sha256 of the file's bytes as they are (read in chunks); ``DataError`` naming it if it differs."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e.strerror or e})") from e
    if digest.hexdigest() != sha256.lower():
        raise DataError(
            f"{path}: sha256 of the file is {digest.hexdigest()}, expected {sha256.lower()} "
            "(a corrupt, truncated or different file)"
        )


def _ensure_writable(directory: Path, what: str = "MNIST") -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise DataError(
            f"{directory}: cannot write the {what} cache directory ({type(e).__name__}: {e.strerror or e}); "
            "choose a writable one with root=... (CLI: --root DIR) or the NORMLAB_DATA environment variable"
        ) from e


def _check(path: Path, sha: str, hashed: str, name: str | None = None) -> None:
    if hashed == "content":
        verify_content(path.read_bytes(), sha, name or str(path))
    else:
        verify_file(path, sha)


def _present(directory: Path, name: str, sha: str, hashed: str, say: Callable[[str], None]) -> bool:
    """Whether the copy of ``name`` that the loader would read is in ``directory`` and intact."""
    if hashed == "content":
        path = find_file(directory, name.removesuffix(".gz"))
    else:
        path = directory / name if (directory / name).is_file() else None
    if path is None:
        return False
    try:
        if hashed == "content":
            read_verified(path, sha)
        else:
            verify_file(path, sha)
    except DataError as e:
        say(f"{e}; downloading it again")
        return False
    say(f"{path.name}: already present, checksum ok")
    return True


def _download_one(
    directory: Path,
    name: str,
    sha: str,
    hashed: str,
    mirrors: Sequence[str],
    dead: set[str],
    timeout: float,
    say: Callable[[str], None],
) -> list[str]:
    """Fetch ``name`` from the first mirror that serves it intact; the reasons each mirror failed (empty: done)."""
    part = directory / f"{name}.part"
    reasons: list[str] = []
    for mirror in mirrors:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += name
        if mirror in dead:
            reasons.append(f"{url}: skipped, the mirror was unreachable")
            continue
        for attempt in ("continue", "from zero"):
            if attempt == "from zero":
                part.unlink(missing_ok=True)
            say(f"{name}: downloading {url}")
            try:
                resumed = _fetch(url, part, timeout)
            # URLError and socket errors are OSErrors, a malformed URL is a ValueError
            except (OSError, ValueError, http.client.HTTPException) as e:
                reasons.append(f"{url}: {_describe(e)}")
                # Only a failure to connect marks a mirror dead (a 404 or a broken transfer may be one file's
                # problem); file:// mirrors are never dead, a missing local file is just missing.
                connect_failed = isinstance(e, URLError) and not isinstance(e, HTTPError)
                if connect_failed and not url.startswith("file:"):
                    dead.add(mirror)
                break  # a partial .part is kept: the next mirror (or the next run) continues it
            try:
                _check(part, sha, hashed, url)
            except DataError as e:
                reasons.append(str(e) if hashed == "content" else f"{url}: {e}")
                part.unlink(missing_ok=True)
                if resumed and attempt == "continue":
                    continue  # the kept bytes may be what was bad: once more from zero, same mirror
                break
            # atomic: the final name appears only with verified content (and takes precedence over a
            # decompressed copy, which find_file looks at only when there is no .gz)
            final = directory / name
            os.replace(part, final)
            say(f"{final.name}: ok, sha256 verified")
            return []
    return reasons


def _fetch(url: str, part: Path, timeout: float) -> bool:
    """Download ``url`` into ``part``, continuing an existing ``part`` with an HTTP Range request when the server
    supports it.  Returns whether it continued (True) or wrote the whole file (False)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "normlab"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        # 416: the server cannot continue from the kept part's length; start over
        if offset and e.code == 416:
            part.unlink()
            return _fetch(url, part, timeout)
        raise
    with response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        content_range = str(response.headers.get("Content-Range", ""))
        if resumed and not content_range.startswith(f"bytes {offset}-"):
            raise OSError(f"asked for bytes {offset}-, the server sent {content_range!r}")
        length = response.headers.get("Content-Length")
        received = 0
        with open(part, "ab" if resumed else "wb") as f:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                received += len(chunk)
    if length is not None and received != int(length):
        raise OSError(f"connection closed after {received} of {length} bytes")
    return resumed


def _describe(e: BaseException) -> str:
    if isinstance(e, HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, URLError):
        return str(e.reason)
    return f"{type(e).__name__}: {e}"
