"""The errors of ``normlab.interop``: all are ``ValueError`` subclasses, so the CLI reports them as failures
(exit 1) on one line."""

from __future__ import annotations


class InteropError(ValueError):
    """A model that cannot be folded, converted or exported as asked; nothing was changed or written."""


class UnsupportedLayerError(InteropError):
    """A layer with no counterpart in the target (PyTorch, ONNX) or unknown to the BN folder; the message
    names the layer (its path in the model and its class)."""
