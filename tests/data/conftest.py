"""Fixtures for the data tests: a fake MNIST made by the test, a local HTTP server, and an offline guard."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from normlab.data import color_datasets, download, write_idx

N_TRAIN = 10_012  # more than the 10,000 validation images "full" takes from the end
N_TEST = 24


@dataclass
class FakeMnist:
    """Four MNIST-format files written by ``write_idx`` into ``directory``, their gzip bytes and checksums."""

    directory: Path
    gz: dict[str, bytes]  # stem -> .gz file bytes
    checksums: dict[
        str, str
    ]  # stem -> sha256 of the decompressed bytes, computed here with hashlib
    arrays: dict[
        str, tuple[np.ndarray, np.ndarray]
    ]  # "train"/"test" -> (images uint8, labels uint8)


def _images(n: int, rng: np.random.Generator) -> np.ndarray:
    # mostly zeros so gzip is fast; two pixels hold the image's index, a few random strokes the rest
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    x[:, 0, 0] = np.arange(n) % 256
    x[:, 0, 1] = np.arange(n) // 256
    x[:, 10:12, 5:20] = rng.integers(0, 256, size=(n, 2, 15), dtype=np.uint8)
    return x


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> FakeMnist:
    directory = tmp_path_factory.mktemp("fake_mnist")
    rng = np.random.default_rng(1234)
    arrays = {
        "train": (_images(N_TRAIN, rng), rng.integers(0, 10, N_TRAIN, dtype=np.uint8)),
        "test": (_images(N_TEST, rng), rng.integers(0, 10, N_TEST, dtype=np.uint8)),
    }
    stems = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    gz, checksums = {}, {}
    for split, (images, labels) in arrays.items():
        for stem, array in zip(stems[split], (images, labels), strict=True):
            data = write_idx(directory / f"{stem}.gz", array).read_bytes()
            gz[stem] = data
            checksums[stem] = hashlib.sha256(gzip.decompress(data)).hexdigest()
    return FakeMnist(directory, gz, checksums, arrays)


@dataclass
class Server:
    """A local HTTP server; ``files`` maps URL paths (``/good/x.gz``) to the bytes served there."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    ranges: bool = True  # honour Range requests with 206
    cut_once: dict[str, int] = field(
        default_factory=dict
    )  # path -> bytes sent before hanging up, once

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix.strip('/')}/"

    def serve(self, prefix: str, files: dict[str, bytes]) -> str:
        """Serve ``{stem}.gz`` for each stem under ``/prefix/``; returns that mirror's URL."""
        for stem, data in files.items():
            self.files[f"/{prefix}/{stem}.gz"] = data
        return self.url(prefix)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state: Server = self.server.state  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header and state.ranges:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut = state.cut_once.pop(self.path, None)
        self.wfile.write(payload if cut is None else payload[:cut])

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server():
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state  # type: ignore[attr-defined]
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """A mirror URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, closed_port_url: str) -> None:
    """No test reaches the real mirrors or the user's cache: defaults point at a closed local port and tmp."""
    monkeypatch.setattr(download, "MNIST_MIRRORS", (closed_port_url,))
    for key, remote in color_datasets.REMOTES.items():
        monkeypatch.setitem(
            color_datasets.REMOTES, key, dataclasses.replace(remote, mirrors=(closed_port_url,))
        )
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path / "normlab_data"))
