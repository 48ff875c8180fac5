"""Rewriting a checkpoint's metadata the way a hostile user would: edit the JSON, then recompute the SHA-256
exactly as ``save`` does, so the edit gets past the checksum and reaches the decoder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

import normlab.checkpoint as ckpt


def read_parts(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, normlab metadata) of a valid checkpoint's bytes."""
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    return safetensors.numpy.load(data), json.loads(header["__metadata__"]["normlab"])


def write_parts(
    tensors: dict[str, np.ndarray], meta: dict[str, Any], *, reseal: bool = True
) -> bytes:
    """A checkpoint file's bytes from tensors and metadata; ``reseal`` recomputes the checksum."""
    meta = dict(meta)
    if reseal:
        meta["sha256"] = ckpt._content_digest(tensors, meta)
    header = {"format": ckpt.FORMAT, "normlab": json.dumps(meta)}
    return safetensors.numpy.save(tensors, metadata=header)


def rewrite(
    data: bytes, edit: Callable[[dict[str, np.ndarray], dict[str, Any]], None], path: Path
) -> Path:
    """Apply ``edit(tensors, meta)`` (in place) to the checkpoint ``data`` and write the resealed file."""
    tensors, meta = read_parts(data)
    tensors = dict(tensors)
    edit(tensors, meta)
    path.write_bytes(write_parts(tensors, meta))
    return path


def raw_file(header_json: bytes, body: bytes = b"") -> bytes:
    """A safetensors-shaped file with an arbitrary header text (for headers json.dumps cannot write)."""
    return len(header_json).to_bytes(8, "little") + header_json + body
