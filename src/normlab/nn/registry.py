"""Layer classes by name, so that a model's architecture can be saved as JSON and rebuilt.

A layer takes part by having ``get_config()`` (its constructor arguments as JSON values) and being registered
with :func:`register_module`; every layer in ``normlab.nn`` is.  A *spec* is ``{"class": name, "config":
{...}}``; containers such as ``Sequential`` nest the specs of their children in their config.  Rebuilding calls
``cls.from_config(config)`` when the class defines it, else ``cls(**config)``.
"""

from __future__ import annotations

from typing import Any

from normlab.backend import host_dtype
from normlab.nn.module import Module

_REGISTRY: dict[str, type[Module]] = {}


def register_module(cls: type[Module]) -> type[Module]:
    """Class decorator: make ``cls`` rebuildable by name.  Two different classes may not share a name."""
    name = cls.__name__
    known = _REGISTRY.get(name)
    if known is not None and known is not cls:
        raise ValueError(f"register_module: another class named {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def registered_modules() -> dict[str, type[Module]]:
    """A copy of the registry: class name -> class."""
    return dict(_REGISTRY)


def dtype_name(module: Module) -> str | None:
    """Name of the dtype of the module's own floating-point parameters/buffers (``None`` if it has none)."""
    arrays = [p.data for p in module._parameters.values() if p is not None]
    arrays += [b for b in module._buffers.values() if b is not None and host_dtype(b).kind == "f"]
    return str(host_dtype(arrays[0])) if arrays else None


def module_spec(module: Module) -> dict[str, Any]:
    """``{"class": ..., "config": ...}`` for a registered module, or ``TypeError`` saying what is missing."""
    cls = type(module)
    if _REGISTRY.get(cls.__name__) is not cls:
        raise TypeError(
            f"{cls.__name__} is not a registered layer, so its architecture cannot be saved; "
            "decorate it with normlab.nn.register_module and give it get_config()"
        )
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise TypeError(f"{cls.__name__} has no get_config(), so its architecture cannot be saved")
    return {"class": cls.__name__, "config": get_config()}


def build_module(spec: Any) -> Module:
    """Rebuild a module from :func:`module_spec`'s output.  Raises ``ValueError`` for a malformed spec or an
    unknown class (the caller turns it into a file-level error)."""
    if not isinstance(spec, dict) or set(spec) != {"class", "config"}:
        raise ValueError(f"a layer spec must be {{'class': ..., 'config': ...}}, got {spec!r:.200}")
    name, config = spec["class"], spec["config"]
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(
            f"unknown layer class {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        )
    if not isinstance(config, dict):
        raise ValueError(f"the config of {name} must be an object, got {type(config).__name__}")
    try:
        from_config = getattr(cls, "from_config", None)
        return from_config(config) if from_config is not None else cls(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot build {name} from config {config!r:.200}: {exc}") from exc
