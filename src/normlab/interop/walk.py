"""Walking a model as the chain of layers its forward runs, and naming layers in error messages."""

from __future__ import annotations

from normlab import nn


def layer_name(path: str, module: nn.Module) -> str:
    """``'3' (BatchNorm2d)``: a layer's path in the model and its class, for messages."""
    return f"{path or '<model>'!r} ({type(module).__name__})"


def chain(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaf layers of ``model`` in the order its forward runs them, with their paths.

    Only ``Sequential`` (exactly that class, or a subclass marked ``plain_chain = True`` such as
    ``FoldedSequential``) is opened: its forward is known to be the chain of its children.  Any other module
    is one link (its forward may do anything with its children).
    """
    if type(model) is not nn.Sequential and not type(model).__dict__.get("plain_chain", False):
        return [(prefix, model)]
    links: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        links.extend(chain(child, f"{prefix}.{name}" if prefix else name))
    return links
