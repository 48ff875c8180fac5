"""What ``normlab export`` does: a checkpoint to an ONNX file and/or a PyTorch file, each checked against
normlab's own output on a probe batch before it is written (atomically).

The PyTorch file is ``torch.save`` of a dict, readable with ``torch.load(path, weights_only=True)``:
``state_dict`` (the ``torch.nn.Module``'s, tensors), ``architecture`` (normlab's JSON layer spec, from which
:func:`load_torch` rebuilds the module), ``format``/``format_version``, ``normlab_version`` and
``source_checkpoint_sha256``.  No pickled classes: loading it runs no code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from normlab import nn
from normlab.backend import no_grad
from normlab.interop.errors import InteropError
from normlab.interop.files import atomic_write, check_output_path
from normlab.interop.fold import fold_batch_norm_report
from normlab.interop.onnx_export import DEFAULT_OPSET, to_onnx
from normlab.interop.pytorch import to_torch
from normlab.interop.walk import chain

TORCH_FORMAT, TORCH_FORMAT_VERSION = "normlab.torch-export", 1
MNIST_SIDE = 28


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    onnx_path: str | None = None,
    torch_path: str | None = None,
    fold: bool = False,
    opset: int = DEFAULT_OPSET,
    input_shape: tuple[int, ...] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export the model saved in ``checkpoint``; returns the summary ``normlab export`` prints."""
    import normlab as nl

    if onnx_path is None and torch_path is None:
        raise InteropError("export: give --onnx OUT.onnx and/or --torch OUT.pt")
    outputs = [check_output_path(p, force, "export") for p in (onnx_path, torch_path) if p]
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise InteropError("export: --onnx and --torch name the same file")
    source_hash = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    model = nl.load(
        checkpoint
    )  # CheckpointError for a bad or newer-format file; always in eval mode
    shape, shape_note = _input_shape(model, input_shape)
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "source_sha256": source_hash,
        "input_shape": list(shape),
        "mode": "eval",
        "notes": [n for n in [shape_note] if n],
    }
    probe = np.random.default_rng(0).normal(size=(7, *shape)).astype(_dtype(model))
    if onnx_path:
        report = to_onnx(
            model,
            onnx_path,
            opset=opset,
            fold=fold,
            input_shape=shape,
            force=force,
            source_hash=source_hash,
            probe=probe,
        )
        summary["onnx"] = {
            "path": str(report.path),
            "opset": report.opset,
            "folded": len(report.folded),
            "max_abs_diff": report.max_abs_diff,
            "verified_with": report.verified_with,
        }
    if torch_path:
        summary["torch"] = _export_torch(model, Path(torch_path), fold, probe, source_hash)
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """One line per file written, for the terminal."""
    lines = []
    shape = tuple(summary["input_shape"])
    if "onnx" in summary:
        o = summary["onnx"]
        lines.append(
            f"{o['path']}: ONNX opset {o['opset']}, {o['folded']} batch norm layer(s) folded, eval mode; "
            f"max |{o['verified_with']} - normlab| = {o['max_abs_diff']:.2g} on a probe batch of 7 x {shape}"
        )
    if "torch" in summary:
        t = summary["torch"]
        lines.append(
            f"{t['path']}: PyTorch state dict + architecture, {t['folded']} batch norm layer(s) folded, "
            f"eval mode; max |torch - normlab| = {t['max_abs_diff']:.2g} on a probe batch of 7 x {shape}"
        )
    return lines + [f"note: {n}" for n in summary["notes"]]


def load_torch(path: str | os.PathLike[str]) -> Any:
    """The ``torch.nn.Module`` saved by ``normlab export --torch`` (in eval mode)."""
    import torch

    from normlab.nn.registry import build_module

    saved = torch.load(path, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != TORCH_FORMAT:
        raise InteropError(f"{path}: not a file written by normlab export --torch")
    if saved.get("format_version", 0) > TORCH_FORMAT_VERSION:
        raise InteropError(
            f"{path}: format version {saved['format_version']} is newer than this normlab reads "
            f"({TORCH_FORMAT_VERSION})"
        )
    module = to_torch(build_module(json.loads(saved["architecture"])))
    module.load_state_dict(saved["state_dict"])
    return module.eval()


# --------------------------------------------------------------------------------------- helpers
def _dtype(model: nn.Module) -> np.dtype:
    return next((p.dtype for p in model.parameters()), np.dtype(np.float32))


def _input_shape(model: nn.Module, given: tuple[int, ...] | None) -> tuple[tuple[int, ...], str]:
    """The input shape without the batch axis: given, read off a first Linear, else MNIST images."""
    if given is not None:
        return tuple(given), ""
    links = chain(model)
    first = links[0][1] if links else model
    if isinstance(first, nn.Linear):
        return (first.in_features,), ""
    channels = getattr(first, "in_channels", getattr(first, "num_features", 1))
    return (
        (channels, MNIST_SIDE, MNIST_SIDE),
        f"input shape ({channels}, {MNIST_SIDE}, {MNIST_SIDE}) assumed (MNIST images); set --input-shape",
    )


def _export_torch(
    model: nn.Module, path: Path, fold: bool, probe: np.ndarray, source_hash: str
) -> dict[str, Any]:
    import torch

    from normlab.nn.registry import module_spec
    from normlab.version import __version__

    folded = 0
    if fold:
        result = fold_batch_norm_report(model)
        model, folded = result.model, len(result.folded)
    module = to_torch(model).eval()
    with no_grad():
        expected = model(probe)
    with torch.no_grad():
        got = module(torch.from_numpy(probe)).numpy()
    diff = float(np.max(np.abs(got - expected), initial=0.0))
    bound = 1e-4 * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    if not diff <= bound:
        raise InteropError(
            f"export: the PyTorch module's output differs from normlab's by {diff:.3g} (> {bound:.3g}); "
            "nothing was written"
        )
    payload = {
        "format": TORCH_FORMAT,
        "format_version": TORCH_FORMAT_VERSION,
        "normlab_version": __version__,
        "architecture": json.dumps(module_spec(model)),
        "state_dict": module.state_dict(),
        "source_checkpoint_sha256": source_hash,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getvalue())
    return {"path": str(path), "folded": folded, "max_abs_diff": diff}
