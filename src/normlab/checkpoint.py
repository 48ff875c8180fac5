"""Saving and loading models and training state: safetensors tensors plus JSON metadata, in one file.

**Format.**  One ``.safetensors`` file.  Every array goes into the tensor section: the model's parameters
*and* buffers (running statistics) under ``model/<state-dict key>``, optimizer/scheduler/loader/extra arrays
under their own prefixes.  Everything else is one JSON document stored in the safetensors header's
``__metadata__`` (key ``"normlab"``): format name and version, normlab version, the model's architecture
(so :func:`load` can rebuild it), optimizer and LR-schedule state (arrays replaced by references to tensors),
the epoch, the dropout generators' states, the data loader's state, user extras, and a SHA-256 over all of it
(metadata and tensor bytes).

Why the header and not a sidecar JSON file: one file is replaced by one atomic rename, so tensors and
metadata can never come from two different saves; the header is read and validated before any tensor; and
any safetensors reader (PyTorch, the HF tools) still opens the file.  safetensors parses no code, so loading
can never execute anything (unlike pickle, which normlab refuses to read).

**Atomic writes.**  The file is written to a temporary file in the same directory, flushed and fsynced, then
renamed over the target with ``os.replace`` (atomic on POSIX and Windows) and the directory is fsynced.  A save
interrupted at any point leaves the previous file intact.

**Validated loads.**  The whole file is read and checked first: safetensors structure, format and version,
checksum, then every key, shape and dtype against the model, optimizer, scheduler and generators.  Only then
is anything changed; if a late step still fails (a data loader refusing its state), everything already
restored is rolled back.  Every failure raises :class:`CheckpointError` saying what is wrong.

**Hostile files.**  A file is untrusted input: the header is bounded in size (:data:`MAX_HEADER_BYTES`) and in
JSON nesting (:data:`MAX_NESTING`, checked before parsing, so crafted nesting cannot exhaust the stack), and
an architecture is rebuilt only if the sizes it asks for are in proportion to the values the file holds
(:func:`_check_rebuild_size`), so a checksum-consistent config cannot request terabytes.

**Crashed saves.**  Temporary files are named ``.<target>.<host>.<pid>.<random>.tmp``; a save first removes
the temporary files of the same target left by writers on this host that no longer run (a live writer's file
is never touched) and warns about leftovers it cannot attribute (other hosts, older normlab versions).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import socket
import struct
import sys
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from normlab.backend import host_dtype, to_host
from normlab.nn.layers import dropout_generators
from normlab.nn.module import Module, _is_array
from normlab.nn.registry import build_module, module_spec
from normlab.optim.lr_scheduler import LRScheduler
from normlab.optim.optimizer import Optimizer

FORMAT = "normlab.checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "normlab"
PathLike = str | os.PathLike[str]
# the safetensors header (tensor table + JSON metadata) is at most this long; real ones are kilobytes
MAX_HEADER_BYTES = 64 * 2**20
MAX_NESTING = 64  # deepest JSON nesting of the header and of the normlab metadata, save and load
# A rebuilt architecture may ask for at most max(_REBUILD_FLOOR, _REBUILD_FACTOR * values in the file)
# elements (see _requested_elements): generous for real models, far below what would exhaust memory.
_REBUILD_FLOOR = 2**24
_REBUILD_FACTOR = 16


class CheckpointError(ValueError):
    """A file that cannot be loaded (corrupt, truncated, not safetensors, pickle, or not matching the objects
    it is loaded into).  Nothing in memory was changed."""


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns besides restoring the objects passed to it."""

    epoch: int
    extra: Any
    loader_state: Any
    metadata: dict[str, Any]


# --------------------------------------------------------------------------------------- public API
def save(model: Module, path: PathLike) -> Path:
    """Save ``model``'s parameters, buffers and architecture to ``path`` (atomically); returns the path.

    Models built from registered layers (everything in ``normlab.nn``, ``Sequential`` included) can be rebuilt
    by :func:`load` alone; other models are saved too, and load into a model you build (``load(path, model)``).
    """
    return _write(path, model, kind="model")


def load(path: PathLike, model: Module | None = None) -> Module:
    """The model saved at ``path``: rebuilt from its architecture and returned in eval mode, ready for
    inference; or, with ``model`` given, loaded into it (its mode is left as it was)."""
    tensors, meta = _read(path)
    if model is None:
        model_meta = meta.get("model")
        spec = model_meta.get("config") if isinstance(model_meta, dict) else None
        if spec is None:
            raise CheckpointError(
                f"{path}: the file holds no architecture (the model was not built from registered layers); "
                "build the model and call load(path, model)"
            )
        _check_rebuild_size(path, spec, tensors)
        try:
            model = build_module(spec)
        except Exception as exc:  # whatever a constructor raises on a crafted config is a bad file
            raise CheckpointError(
                f"{path}: cannot rebuild the model from its architecture: {exc}"
            ) from exc
        model.eval()
    _restore(path, tensors, meta, model)
    return model


def save_checkpoint(
    path: PathLike,
    model: Module,
    optimizer: Optimizer | None = None,
    *,
    epoch: int = 0,
    scheduler: LRScheduler | None = None,
    loader: Any = None,
    extra: Any = None,
) -> Path:
    """Save everything needed to resume training (atomically); returns the path.

    Stores the model (parameters, buffers, architecture), ``optimizer.state_dict()``, ``scheduler``'s state,
    ``epoch``, the state of every dropout generator in the model, ``loader.state_dict()`` if a loader is
    given, and ``extra`` (JSON values and NumPy arrays, nested in dicts/lists).
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"save_checkpoint: epoch must be an int >= 0, got {epoch!r}")
    return _write(
        path,
        model,
        kind="training",
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=epoch,
        loader_state=None if loader is None else loader.state_dict(),
        extra=extra,
    )


def load_checkpoint(
    path: PathLike,
    model: Module,
    optimizer: Optimizer | None = None,
    *,
    scheduler: LRScheduler | None = None,
    loader: Any = None,
) -> Checkpoint:
    """Restore ``model`` (and ``optimizer``, ``scheduler``, ``loader``, the dropout generators) from ``path``.

    All-or-nothing: on any problem a :class:`CheckpointError` is raised and every object is left exactly as
    it was.  Returns the epoch, the extras and the saved metadata.
    """
    tensors, meta = _read(path)
    plan = _restore(path, tensors, meta, model, optimizer, scheduler, loader)
    return Checkpoint(
        epoch=plan.epoch, extra=plan.extra, loader_state=plan.loader_state, metadata=meta
    )


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The validated JSON metadata of a checkpoint (format, versions, architecture, epoch, ...)."""
    return _read(path)[1]


# --------------------------------------------------------------------------------------- encoding
def _contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` in C order, keeping 0-d arrays 0-d (``np.ascontiguousarray`` would make them 1-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _encode(value: Any, name: str, tensors: dict[str, np.ndarray], depth: int = 0) -> Any:
    """``value`` as JSON, with arrays moved into ``tensors`` (referenced as ``{"__tensor__": name}``)."""
    if depth > MAX_NESTING:
        raise ValueError(
            f"cannot store values nested more than {MAX_NESTING} levels deep in a checkpoint (at '{name}')"
        )
    if _is_array(value) and not isinstance(value, np.ndarray):
        value = to_host(value)  # state on a device (optimizer buffers): written from host memory
    if isinstance(value, np.ndarray):
        key = name
        while key in tensors:  # keys are readable paths; make them unique if two paths coincide
            key += "_"
        tensors[key] = _contiguous(value)
        return {"__tensor__": key}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {
            "__tuple__": [
                _encode(v, f"{name}/{i}", tensors, depth + 1) for i, v in enumerate(value)
            ]
        }
    if isinstance(value, list):
        return [_encode(v, f"{name}/{i}", tensors, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{name}/{k}", tensors, depth + 1) for k, v in value.items()}
        # keys that JSON would turn into strings (optimizer state is keyed by parameter index)
        return {
            "__items__": [
                [k, _encode(v, f"{name}/{k}", tensors, depth + 1)] for k, v in value.items()
            ]
        }
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint (at '{name}')")


def _decode(value: Any, tensors: Mapping[str, np.ndarray], where: str = "") -> Any:
    """Inverse of :func:`_encode`; referenced tensors are copied.  ``ValueError`` (naming the place) for
    anything :func:`_encode` cannot have written."""
    if isinstance(value, list):
        return [_decode(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value or "__tuple__" in value or "__items__" in value:
        (marker,) = value if len(value) == 1 else (None,)
        content = value.get(marker)
        if marker == "__tensor__" and isinstance(content, str):
            if content not in tensors:
                raise ValueError(
                    f"'{where}' refers to tensor '{content}', which the file does not hold"
                )
            return np.array(tensors[content], copy=True)
        if marker == "__tuple__" and isinstance(content, list):
            return tuple(_decode(v, tensors, f"{where}/{i}") for i, v in enumerate(content))
        if marker == "__items__" and isinstance(content, list):
            items = {}
            for item in content:
                if not (isinstance(item, list) and len(item) == 2):
                    raise ValueError(f"'{where}': an __items__ entry must be a [key, value] pair")
                key, v = item
                if isinstance(key, (list, dict)):
                    raise ValueError(f"'{where}': a mapping key must be a scalar, got {key!r:.80}")
                items[key] = _decode(v, tensors, f"{where}/{key}")
            return items
        raise ValueError(f"'{where}': malformed encoded value {value!r:.120}")
    return {k: _decode(v, tensors, f"{where}/{k}") for k, v in value.items()}


def _json_depth(text: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text, without parsing it (so crafted nesting cannot
    exhaust the parser's stack): brackets inside strings are dropped, then the running bracket count."""
    outside_strings = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", text)
    codes = np.frombuffer(outside_strings, dtype=np.uint8)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int64)
    steps -= np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _content_digest(tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> str:
    """SHA-256 over the metadata (canonical JSON, without the digest itself) and every tensor's name, dtype,
    shape and bytes: detects corrupted values, which safetensors alone cannot (it checks structure only)."""
    digest = hashlib.sha256()
    described = {k: v for k, v in meta.items() if k != "sha256"}
    digest.update(json.dumps(described, sort_keys=True).encode())
    for key in sorted(tensors):
        arr = _contiguous(tensors[key])
        digest.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _rng_states(model: Module) -> dict[str, Any]:
    return {name: m.generator.bit_generator.state for name, m in dropout_generators(model)}


# --------------------------------------------------------------------------------------- writing
def _write(
    path: PathLike,
    model: Module,
    *,
    kind: str,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    epoch: int | None = None,
    loader_state: Any = None,
    extra: Any = None,
) -> Path:
    import safetensors.numpy

    from normlab.version import __version__

    if not isinstance(model, Module):
        raise TypeError(f"expected a normlab Module, got {type(model).__name__}")
    path = Path(path)
    tensors: dict[str, np.ndarray] = {
        f"model/{k}": _contiguous(to_host(v)) for k, v in model.state_dict().items()
    }
    try:
        config = module_spec(model)
    except TypeError:
        config = None
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "normlab_version": __version__,
        "kind": kind,
        "model": {"config": config, "state_keys": list(model.state_dict())},
        "epoch": epoch,
        "optimizer": None,
        "scheduler": None,
        "rng": {"dropout": _rng_states(model)},
        "loader": _encode(loader_state, "loader", tensors),
        "extra": _encode(extra, "extra", tensors),
    }
    if optimizer is not None:
        meta["optimizer"] = {
            "class": type(optimizer).__name__,
            "state": _encode(optimizer.state_dict(), "optimizer", tensors),
        }
    if scheduler is not None:
        meta["scheduler"] = {
            "class": type(scheduler).__name__,
            "state": _encode(scheduler.state_dict(), "scheduler", tensors),
        }
    meta["sha256"] = _content_digest(tensors, meta)
    text = json.dumps(meta)
    if len(text) > MAX_HEADER_BYTES // 2 or _json_depth(text.encode()) > MAX_NESTING:
        # what load would refuse is refused here, before anything is written
        raise ValueError(
            f"the checkpoint metadata is too large ({len(text)} characters, at most "
            f"{MAX_HEADER_BYTES // 2}) or nested more than {MAX_NESTING} levels deep: "
            "store large values as NumPy arrays in extra"
        )
    header = {"format": FORMAT, METADATA_KEY: text}
    _atomic_write(path, safetensors.numpy.save(tensors, metadata=header))
    return path


def _write_bytes(file: Any, data: bytes) -> None:
    """Write ``data`` to an open binary file (its own function so tests can interrupt it midway)."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        view = view[written:]


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see either the old file or the new one, never a mix."""
    directory = path.parent if str(path.parent) else Path(".")
    _remove_stale_temporaries(directory, path.name)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as file:
            _write_bytes(file, data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


# this host's name as it appears in temporary file names (no dots, so names split unambiguously)
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (True when unsure, which keeps its files)."""
    if sys.platform == "win32":  # os.kill would terminate it; never guess there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else (EPERM), or cannot tell
        return True
    return True


def _remove_stale_temporaries(directory: Path, name: str) -> None:
    """Delete the temporary files of ``name`` that saves killed midway left (this host, writer gone); warn
    about ones whose writer cannot be known.  A live writer's file is never touched: its pid is alive."""
    prefix = f".{name}."
    unknown = []
    try:
        candidates = [
            e.name
            for e in os.scandir(directory)
            if e.name.startswith(prefix) and e.name.endswith(".tmp")
        ]
    except OSError:
        return
    for entry in candidates:
        parts = entry[len(prefix) : -len(".tmp")].split(".")
        if len(parts) == 3 and parts[1].isdigit():
            host, pid = parts[0], int(parts[1])
            if host == _HOST and pid != os.getpid() and not _process_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / entry)
                continue
            if host == _HOST:
                continue  # a save in progress (or our own)
        unknown.append(entry)
    if unknown:
        warnings.warn(
            f"{directory}: temporary file(s) {', '.join(sorted(unknown)[:5])} may be left by an "
            "interrupted save of another host or an older normlab; delete them if no save is running",
            stacklevel=4,
        )


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------- reading
_FOREIGN_SIGNATURES = [
    (b"PK\x03\x04", "a zip archive (e.g. a PyTorch .pt/.pth file written by torch.save)"),
    (b"\x93NUMPY", "a NumPy .npy file"),
]


def _read(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and validate a whole checkpoint file; returns (tensors, metadata) or raises CheckpointError."""
    import safetensors.numpy

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such file") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the file ({exc})") from exc

    def fail(problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: {problem}")

    for signature, what in _FOREIGN_SIGNATURES:
        if data.startswith(signature):
            raise fail(f"this is {what}, not a normlab checkpoint (normlab reads safetensors only)")
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise fail("this is a pickle file; normlab never unpickles (it could run arbitrary code)")
    if len(data) < 8:
        raise fail(f"truncated or not a safetensors file ({len(data)} bytes)")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > len(data) - 8:
        raise fail(
            f"truncated or not a safetensors file: the header claims {header_size} bytes, "
            f"the file has {len(data) - 8} after the size field"
        )
    if header_size > MAX_HEADER_BYTES:
        raise fail(f"the header is {header_size} bytes; normlab reads at most {MAX_HEADER_BYTES}")
    raw_header = data[8 : 8 + header_size]
    if _json_depth(raw_header) > MAX_NESTING:
        raise fail(f"corrupt header: JSON nested more than {MAX_NESTING} levels deep")
    try:
        header = json.loads(raw_header)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer literal too long to convert
        raise fail(f"corrupt or not a safetensors file: the header is not JSON ({exc})") from exc
    try:
        tensors = safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own error type for every structural problem
        raise fail(f"corrupt or truncated safetensors data: {exc}") from exc

    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise fail(
            "a safetensors file without normlab metadata (not saved by normlab.save/save_checkpoint)"
        )
    text = metadata[METADATA_KEY]
    if not isinstance(text, str):
        raise fail("corrupt normlab metadata (not a string)")
    if _json_depth(text.encode("utf-8", "replace")) > MAX_NESTING:
        raise fail(f"corrupt normlab metadata: JSON nested more than {MAX_NESTING} levels deep")
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise fail(f"corrupt normlab metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise fail("the metadata does not describe a normlab checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise fail(f"invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise fail(
            f"written by a newer normlab ({meta.get('normlab_version')}, format version {version}); "
            f"this version reads format versions up to {FORMAT_VERSION}"
        )
    # (a future format version 2 would migrate version-1 metadata here)
    if meta.get("sha256") != _content_digest(tensors, meta):
        raise fail("the contents do not match their SHA-256 checksum: the file is corrupt")
    return tensors, meta


# --------------------------------------------------------------------------------------- restoring
@dataclass
class _Plan:
    """Everything a load will install or return, decoded and validated against the live objects before any
    of them changes."""

    model: Module
    model_state: dict[str, np.ndarray]
    epoch: int = 0
    extra: Any = None
    loader_state: Any = None
    optimizer: Optimizer | None = None
    optimizer_state: Any = None  # (groups, state) from Optimizer._prepare_load
    scheduler: LRScheduler | None = None
    scheduler_state: Any = None
    generators: list[tuple[Module, dict[str, Any]]] | None = None
    loader: Any = None


def _restore(
    path: PathLike,
    tensors: Mapping[str, np.ndarray],
    meta: dict[str, Any],
    model: Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    loader: Any = None,
) -> _Plan:
    """Decode and check everything against the objects, then apply; roll back if applying still fails."""

    def fail(problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: {problem} (nothing was changed)")

    try:
        plan = _plan(tensors, meta, model, optimizer, scheduler, loader, fail)
    except CheckpointError:
        raise
    except Exception as exc:  # metadata of an unexpected shape, refused by a validator
        raise fail(f"malformed checkpoint metadata ({type(exc).__name__}: {exc})") from exc
    _apply(plan, fail)
    return plan


def _saved_epoch(meta: Mapping[str, Any], fail: Any) -> int:
    """The epoch a training checkpoint records (0 for a model saved by :func:`save`), checked as
    :func:`save_checkpoint` checks it."""
    epoch = meta.get("epoch")
    if epoch is None and meta.get("kind") == "model":
        return 0
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise fail(f"the epoch must be an int >= 0, got {epoch!r:.80}")
    return epoch


def _plan(
    tensors: Mapping[str, np.ndarray],
    meta: dict[str, Any],
    model: Module,
    optimizer: Optimizer | None,
    scheduler: LRScheduler | None,
    loader: Any,
    fail: Any,
) -> _Plan:
    if meta.get("kind") not in ("model", "training"):
        raise fail(f"unknown checkpoint kind {meta.get('kind')!r:.80}")
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    _check_model_state(model, model_state, fail)
    plan = _Plan(model, model_state, epoch=_saved_epoch(meta, fail))
    for part in ("extra", "loader"):
        try:
            decoded = _decode(meta.get(part), tensors, part)
        except ValueError as exc:
            raise fail(f"malformed '{part}': {exc}") from exc
        if part == "extra":
            plan.extra = decoded
        else:
            plan.loader_state = decoded

    if optimizer is not None:
        saved = meta.get("optimizer")
        if not saved:
            raise fail(
                "the file holds no optimizer state (saved with normlab.save, or without an optimizer)"
            )
        if saved["class"] != type(optimizer).__name__:
            saved_class = saved["class"] if isinstance(saved["class"], str) else "unnamed"
            raise fail(
                f"the file holds {saved_class:.80} state, not {type(optimizer).__name__} state"
            )
        try:
            plan.optimizer_state = optimizer._prepare_load(
                _decode(saved["state"], tensors, "optimizer")
            )
        except ValueError as exc:
            reason = str(exc).removesuffix(" (nothing was changed)")
            raise fail(f"the optimizer state does not fit: {reason}") from exc
        plan.optimizer = optimizer

    if scheduler is not None:
        saved = meta.get("scheduler")
        if not saved:
            raise fail("the file holds no LR scheduler state")
        if saved["class"] != type(scheduler).__name__:
            saved_class = saved["class"] if isinstance(saved["class"], str) else "unnamed"
            raise fail(
                f"the file holds {saved_class:.80} state, not {type(scheduler).__name__} state"
            )
        plan.scheduler_state = _decode(saved["state"], tensors, "scheduler")
        try:
            scheduler._check_state(plan.scheduler_state)
        except ValueError as exc:
            raise fail(str(exc)) from exc
        plan.scheduler = scheduler

    plan.generators = _check_generator_states(model, meta["rng"]["dropout"], fail)
    if loader is not None:
        if plan.loader_state is None:
            raise fail("the file holds no data loader state")
        plan.loader = loader
    return plan


def _apply(plan: _Plan, fail: Any) -> None:
    """Install a validated plan, the model last.  Only a foreign object (the loader) can still refuse; then
    undo it all."""
    undo_model = plan.model.state_dict()
    undo_optimizer = None if plan.optimizer is None else plan.optimizer.state_dict()
    undo_scheduler = None if plan.scheduler is None else plan.scheduler.state_dict()
    undo_generators = [(m, m.generator.bit_generator.state) for m, _ in plan.generators or []]
    try:
        if plan.optimizer is not None:
            plan.optimizer._apply_load(*plan.optimizer_state)
        if plan.scheduler is not None:
            plan.scheduler.load_state_dict(plan.scheduler_state)
        for m, state in plan.generators or []:
            m.generator.bit_generator.state = state
        if plan.loader is not None:
            plan.loader.load_state_dict(plan.loader_state)
        plan.model.load_state_dict(plan.model_state)
    except Exception as exc:
        plan.model.load_state_dict(undo_model)
        if plan.optimizer is not None:
            plan.optimizer.load_state_dict(undo_optimizer)
        if plan.scheduler is not None:
            plan.scheduler.load_state_dict(undo_scheduler)
        for m, state in undo_generators:
            m.generator.bit_generator.state = state
        raise fail(f"restoring failed ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class _Spec:
    shape: tuple[int, ...]
    dtype: np.dtype


def _check_model_state(model: Module, state: Mapping[str, np.ndarray], fail: Any) -> None:
    """Every key of the model present with the right shape and kind of dtype, no others, and values each
    layer accepts (e.g. no negative running variance), as ``load_state_dict`` would check them."""
    # shape and NumPy dtype of every array of the model, on whichever device it lives
    expected = {k: _Spec(tuple(v.shape), host_dtype(v)) for k, v in model.state_dict().items()}
    given = dict(state)
    for prefix, m in model.named_modules():
        m._upgrade_state_dict(given, f"{prefix}." if prefix else "")
    missing = [k for k in expected if k not in given]
    unexpected = sorted(k for k in given if k not in expected)
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    for key in expected.keys() & given.keys():
        want, got = expected[key], np.asarray(given[key])
        if want.shape != got.shape:
            problems.append(f"'{key}' has shape {got.shape}, the model's {want.shape}")
        elif (want.dtype.kind == "f") != (got.dtype.kind == "f"):
            problems.append(f"'{key}' has dtype {got.dtype}, the model's {want.dtype}")
    if not problems:
        for prefix, m in model.named_modules():  # values as load_state_dict would cast them
            p = f"{prefix}." if prefix else ""
            with np.errstate(over="ignore"):  # an overflow to inf is reported below
                own = {
                    key[len(p) :]: np.asarray(given[key]).astype(expected[key].dtype)
                    for key, _ in m._state_items(p)
                }
            for name, problem in m._state_value_problems(own):
                problems.append(f"'{p}{name}': {problem}")
    if problems:
        raise fail(f"the saved model does not match this model's state: {'; '.join(problems)}")


_SATURATED = (
    2**80
)  # more than any budget: sums and products stop growing there (cheap on huge configs)


def _requested_elements(spec: Any, depth: int = 0) -> int:
    """An upper bound on the array elements rebuilding ``spec`` allocates, computed from the config alone:
    per layer, the product of the numbers in its config (lists flattened, booleans skipped, numbers below 1
    counted as 1); nested specs (a container's children) are layers of their own.  For normlab's layers the
    product bounds the state (Linear: in*out, Conv2d: in*out*k*k, a norm: its channels) up to a small factor
    (buffers, biases).  Saturates at :data:`_SATURATED`."""
    if depth > MAX_NESTING:
        raise ValueError("the architecture is nested too deeply")
    total, product = 0, 1

    def visit(value: Any) -> None:
        nonlocal total, product
        if isinstance(value, dict) and set(value) == {"class", "config"}:
            total = min(total + _requested_elements(value, depth + 1), _SATURATED)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            size = abs(value)
            if size > 1:  # NaN compares False: skipped
                factor = math.ceil(min(size, _SATURATED))
                product = min(product * factor, _SATURATED)

    visit(spec.get("config") if isinstance(spec, dict) else None)
    return min(total + product, _SATURATED)


def _check_rebuild_size(path: PathLike, spec: Any, tensors: Mapping[str, np.ndarray]) -> None:
    """Refuse an architecture that asks for far more memory than the file's values could fill, before
    building it (a crafted config could otherwise ask for ``Linear(10**13, 1)``)."""
    stored = sum(int(t.size) for k, t in tensors.items() if k.startswith("model/"))
    budget = max(_REBUILD_FLOOR, _REBUILD_FACTOR * stored)
    try:
        requested = _requested_elements(spec)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from exc
    if requested > budget:
        raise CheckpointError(
            f"{path}: the architecture asks for about {requested:.3g} array elements, the file holds "
            f"{stored} values (at most {budget} are allowed when rebuilding); refusing to build it. "
            "If the file is yours, build the model and call load(path, model)"
        )


def _check_generator_states(
    model: Module, saved: Any, fail: Any
) -> list[tuple[Module, dict[str, Any]]]:
    """Pair each dropout module of ``model`` with its saved generator state, checking the state on a scratch
    generator of the same kind first."""
    modules = dict(dropout_generators(model))
    if not isinstance(saved, dict) or set(saved) != set(modules):
        names = sorted(saved) if isinstance(saved, dict) else saved
        raise fail(
            f"the file holds generator states for {names}, the model has dropout at {sorted(modules)}"
        )
    pairs = []
    for name, m in modules.items():
        scratch = type(m.generator.bit_generator)()
        try:
            scratch.state = saved[name]
        except (TypeError, ValueError, KeyError) as exc:
            raise fail(f"invalid generator state for '{name}': {exc}") from exc
        pairs.append((m, saved[name]))
    return pairs
