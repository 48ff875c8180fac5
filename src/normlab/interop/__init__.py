"""Models in and out of normlab: batch norm folding for inference, PyTorch conversion, ONNX export.

``fold_batch_norm`` needs only NumPy.  ``to_torch``/``from_torch`` need the ``torch`` extra
(``pip install normlab[torch]``) and ``to_onnx`` the ``onnx`` extra (``onnx``, and ``onnxruntime`` to verify
the file); both import them only when called, so ``import normlab.interop`` works without them.
"""

from normlab.interop.errors import InteropError, UnsupportedLayerError
from normlab.interop.fold import (
    FoldedSequential,
    FoldResult,
    fold_batch_norm,
    fold_batch_norm_report,
)
from normlab.interop.onnx_export import DEFAULT_OPSET, SUPPORTED_OPSETS, OnnxExport, to_onnx
from normlab.interop.pytorch import from_torch, to_torch

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "FoldResult",
    "FoldedSequential",
    "InteropError",
    "OnnxExport",
    "UnsupportedLayerError",
    "fold_batch_norm",
    "fold_batch_norm_report",
    "from_torch",
    "to_onnx",
    "to_torch",
]
