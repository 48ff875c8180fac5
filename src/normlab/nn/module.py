"""``Module`` and ``Parameter``: the state holders every layer is built on.

A layer keeps two kinds of arrays:

* **parameters** (:class:`Parameter`) are learned: they carry a ``.grad`` that ``backward`` fills and that
  optimizers read;
* **buffers** are state that is not learned, such as batch norm's running statistics: they are saved in
  ``state_dict()`` but no optimizer ever sees them.

There is no autograd graph.  ``forward`` keeps what its ``backward`` needs; ``backward(dy)`` returns the
gradient with respect to the input and *accumulates* parameter gradients into ``param.grad``, as PyTorch does.

Devices.  The arrays are NumPy arrays by default; ``model.to("cuda")`` makes them CuPy arrays on a GPU,
``model.to("cpu")`` NumPy again, and a device object of the arrays' own Array API namespace moves them within
it.  Calling a module with an input on another device than its parameters is refused with an error that
names the module and both devices.
"""

from __future__ import annotations

import importlib
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from normlab.backend import (
    FLOAT_DTYPES,
    copy_array,
    device_of,
    host_dtype,
    is_float_dtype,
    like,
    namespace,
    to_host,
)
from normlab.nn.out_of_memory import annotate, reports_out_of_memory


def _is_array(value: Any) -> bool:
    """Whether ``value`` is an array of an Array API namespace (NumPy, CuPy, array-api-strict, ...)."""
    return isinstance(value, np.ndarray) or (
        array_api_compat.is_array_api_obj(value) and not isinstance(value, np.generic)
    )


def _where(a: Any) -> str:
    """The library and device of array ``a``, for messages: ``a numpy array on cpu``."""
    return f"a {type(a).__module__.split('.')[0]} array on {device_of(a)}"


class Parameter:
    """A learned array (``.data``) with the gradient of the loss with respect to it (``.grad``).

    ``requires_grad=False`` freezes it: ``backward`` then leaves ``.grad`` untouched and optimizers skip it.
    """

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data: np.ndarray, requires_grad: bool = True) -> None:
        if not _is_array(data):
            data = np.asarray(data)
        if not is_float_dtype(data.dtype, namespace(data)):
            raise TypeError(f"Parameter: expected a floating-point array, got dtype {data.dtype}")
        self.data: np.ndarray = data
        self.grad: np.ndarray | None = None
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def accumulate_grad(self, grad: np.ndarray) -> None:
        """Add ``grad`` to ``.grad`` (allocating it on first use); no-op when ``requires_grad`` is off."""
        if not self.requires_grad:
            return
        if grad.shape != self.data.shape:
            raise ValueError(
                f"gradient of shape {grad.shape} does not match parameter of shape {self.data.shape}"
            )
        if self.grad is None:
            self.grad = namespace(grad).astype(grad, self.data.dtype, copy=True)
        else:
            self.grad += grad

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.data if dtype is None else self.data.astype(dtype)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def _dtype_caster(dtype: Any) -> Callable[[Any], Any]:
    """Cast a floating-point array to ``dtype`` (the namespace's dtype of that name); others stay."""
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(
            f"Module.to: expected a floating-point dtype or a device ('cpu', 'cuda'), got {dtype!r}"
        ) from err
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"Module.to: expected a floating-point dtype, got {dt}")

    def cast(a: Any) -> Any:
        xp = namespace(a)
        if not is_float_dtype(a.dtype, xp):
            return a
        return xp.astype(a, dt if isinstance(a, np.ndarray) else getattr(xp, dt.name))

    return cast


def _device_mover(device: str) -> Callable[[Any], Any]:
    """Move an array to ``"cpu"`` (a NumPy array) or ``"cuda[:N]"`` (a CuPy array on GPU N)."""
    if device == "cpu":
        return _to_numpy
    kind, _, index = device.partition(":")
    if kind != "cuda" or device.count(":") > 1 or (":" in device and not index.isdigit()):
        raise ValueError(f"Module.to: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    cupy = _cupy_for(device)
    gpu = int(index or 0)

    def move(a: Any) -> Any:
        with cupy.cuda.Device(gpu):
            return cupy.asarray(a)

    return move


def check_device(device: str) -> None:
    """Raise what ``Module.to(device)`` would raise for a device string that cannot be used here (malformed:
    ``ValueError``; CUDA without CuPy or a GPU: ``RuntimeError`` naming the extra), moving nothing."""
    if device != "cpu":
        _device_mover(device)


def _cupy_for(device: str) -> Any:
    """CuPy, once it is known to import and to see the GPU ``device`` names; else a ``RuntimeError``."""
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(
            f"Module.to({device!r}): CUDA arrays need CuPy, which is not installed here; install the GPU "
            "extra, pip install 'normlab[gpu]' (CUDA 12) or 'normlab[gpu-cu13]' (CUDA 13)"
        ) from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CuPy without a driver or a GPU raises its own runtime errors
        raise RuntimeError(
            f"Module.to({device!r}): CuPy sees no usable CUDA device ({err})"
        ) from err
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise RuntimeError(f"Module.to({device!r}): there are {count} CUDA device(s) here")
    return cupy


def _to_numpy(a: Any) -> np.ndarray:
    """``a`` as a NumPy array in host memory (CuPy arrays are copied from the GPU)."""
    if isinstance(a, np.ndarray):
        return a
    if array_api_compat.is_cupy_array(a):
        return a.get()
    try:
        return np.asarray(a)
    except (TypeError, RuntimeError, ValueError) as err:
        raise RuntimeError(f"Module.to('cpu'): cannot copy {_where(a)} to NumPy ({err})") from err


def _namespace_mover(device: Any) -> Callable[[Any], Any]:
    """Move an array to ``device``, a device of the array's own namespace."""

    def move(a: Any) -> Any:
        try:
            if isinstance(a, np.ndarray) and not isinstance(device, str):
                # from the host onto another library's device (e.g. array-api-strict's): that library's
                # own asarray, which takes the device as the standard says
                library = importlib.import_module(type(device).__module__.partition(".")[0])
                if library is not np and hasattr(library, "asarray"):
                    return library.asarray(a, device=device)
            return array_api_compat.to_device(a, device)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Module.to: cannot move {_where(a)} to {device!r} ({err})") from err

    return move


def _moved(move: Callable[[Any], Any], a: Any, target: Any, key: str) -> Any:
    """``move(a)``, with a failed allocation reported as an :class:`OutOfMemoryError` naming ``key``."""
    try:
        return move(a)
    except MemoryError as err:
        where = f"Module.to({target!r}) moving '{key}'"
        device = target if isinstance(target, str) else str(target)
        if device == "cuda":
            device = "cuda:0"
        raise annotate(err, where, "the move", (a,), device=device) from err


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class StateDictError(ValueError):
    """A state dict that cannot be loaded; the module was left unchanged."""


def to_numpy(value: Any) -> np.ndarray:
    """An ndarray from a NumPy array, a scalar, or a (CPU) PyTorch tensor, without importing torch."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class Module:
    """Base class of every layer and model.

    Subclasses assign :class:`Parameter` and :class:`Module` attributes in ``__init__`` (they are registered
    automatically), register buffers with :meth:`register_buffer`, and implement ``forward`` and ``backward``.
    """

    training: bool
    # whether backward must return dL/d(input); see requires_input_grad_ (a class default, set per instance)
    requires_input_grad: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # every forward and backward reports a failed allocation as an OutOfMemoryError naming the layer
        super().__init_subclass__(**kwargs)
        for phase in ("forward", "backward"):
            method = cls.__dict__.get(phase)  # plain functions only: a staticmethod has no self
            if inspect.isfunction(method) and not getattr(method, "_reports_out_of_memory", False):
                setattr(cls, phase, reports_out_of_memory(method, phase))

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ----------------------------------------------------------------------------------- registration
    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("call Module.__init__() before assigning attributes")
        if isinstance(value, Parameter):
            self._forget(name)
            params[name] = value
        elif isinstance(value, Module):
            self._forget(name)
            self._modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter '{name}'")
            params[name] = None
        elif name in self._buffers:
            if value is not None and not _is_array(value):
                raise TypeError(f"buffer '{name}' must be a numpy array or None")
            self._buffers[name] = value
        elif name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to submodule '{name}'")
            self._modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        self._non_persistent.discard(name)
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails
        for table in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(table)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        if name in self._parameters or name in self._buffers or name in self._modules:
            self._forget(name)
        else:
            object.__delattr__(self, name)

    def register_buffer(self, name: str, value: np.ndarray | None, persistent: bool = True) -> None:
        """Register state that is saved in ``state_dict`` (unless ``persistent=False``) but never learned."""
        if value is not None and not _is_array(value):
            raise TypeError(f"buffer '{name}' must be a numpy array or None")
        self._forget(name)
        self._buffers[name] = value
        if not persistent:
            self._non_persistent.add(name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        self._forget(name)
        self._parameters[name] = param

    def add_module(self, name: str, module: Module | None) -> None:
        self._forget(name)
        self._modules[name] = module

    # ----------------------------------------------------------------------------------- computation
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            self._check_input_device(args[0])
        return self.forward(*args, **kwargs)

    def _own_array(self) -> Any:
        """This module's first parameter, else its first floating-point buffer, else ``None``: where its
        inputs must live."""
        for p in self._parameters.values():
            if p is not None:
                return p.data
        for b in self._buffers.values():
            if b is not None and is_float_dtype(b.dtype, namespace(b)):
                return b
        return None

    def _check_input_device(self, x: Any) -> None:
        """Refuse an input that lives on another device (or in another array library) than this module's
        parameters, naming the module and both; containers check nothing themselves, their layers do."""
        own = self._own_array()
        if own is None or (type(x) is np.ndarray and type(own) is np.ndarray) or not _is_array(x):
            return
        if type(x) is not type(own) or device_of(x) != device_of(own):
            raise ValueError(
                f"{type(self).__name__}({self.extra_repr()}): the input is {_where(x)}, but the "
                f"layer's parameters are {_where(own)}; move the input there, or the model with "
                f"model.to(...)"
            )

    # ----------------------------------------------------------------------------------- traversal
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, m in self.named_children():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        seen: set[int] = set()
        for mod_prefix, m in modules:
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, np.ndarray]]:
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mod_prefix, m in modules:
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn: Callable[[Module], None]) -> Module:
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ----------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> Module:
        """Set training mode on this module and every descendant; returns ``self``."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode): mode must be a bool, got {type(mode).__name__}")
        self.training = mode
        for m in self.children():
            m.train(mode)
        return self

    def eval(self) -> Module:
        """Evaluation mode (``train(False)``): batch norm uses its running statistics, dropout is off."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def requires_input_grad_(self, requires: bool = True) -> Module:
        """Say whether ``backward`` must return the gradient with respect to this module's input.

        ``False`` is for a model whose input is data (nobody reads dL/dx): a first layer that can skip that
        product (``Linear``, ``Conv2d``, whose input gradient is the largest matrix product of its backward)
        then returns ``None`` from ``backward``; parameter gradients are unaffected, and layers that cannot
        skip anything return dL/dx anyway.  ``Sequential`` passes the setting to its first layer.  The
        training loops (``fit``, the lab) set it for the duration of training.  Returns ``self``.
        """
        self.requires_input_grad = bool(requires)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear parameter gradients (``None`` by default, as in PyTorch; zeros if ``set_to_none=False``)."""
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def to(self, target: Any) -> Module:
        """Cast to a dtype or move to a device, in place; returns ``self`` (as PyTorch's ``Module.to``).

        ``target`` is a floating-point dtype (``np.float64``, ``"float32"``...): every parameter, gradient and
        floating-point buffer is cast to it; or a device: ``"cpu"`` (NumPy arrays), ``"cuda"`` or
        ``"cuda:N"`` (CuPy arrays on GPU N; ``pip install 'normlab[gpu]'``), or a device object of the
        namespace the arrays are in (e.g. ``array_api_strict.Device("device1")``): every parameter,
        gradient and buffer moves there.  The target is checked before anything moves.
        """
        if isinstance(target, str) and target.split(":")[0] in ("cpu", "cuda"):
            move = _device_mover(target)
        elif isinstance(target, (str, type, np.dtype)):
            move = _dtype_caster(target)
        else:
            move = _namespace_mover(target)
        moved: list[
            tuple[Any, str, Any]
        ] = []  # all arrays first: a failure leaves everything in place
        for prefix, m in self.named_modules():
            key = f"{prefix}." if prefix else ""
            for name, p in m._parameters.items():
                if p is not None:
                    moved.append((p, "data", _moved(move, p.data, target, key + name)))
                    if p.grad is not None:
                        grad = _moved(move, p.grad, target, key + name + ".grad")
                        moved.append((p, "grad", grad))
            for name, b in m._buffers.items():
                if b is not None:
                    moved.append((m._buffers, name, _moved(move, b, target, key + name)))
        for holder, key, value in moved:
            if isinstance(holder, dict):
                holder[key] = value
            else:
                setattr(holder, key, value)
        return self

    def float(self) -> Module:
        return self.to(np.float32)

    def double(self) -> Module:
        return self.to(np.float64)

    # ----------------------------------------------------------------------------------- state
    def _state_items(self, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
        """This module's own saved arrays (not its children's), keys prefixed."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p.data
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                yield prefix + name, b

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of every parameter and persistent buffer, keyed as PyTorch keys them (``0.weight``...)."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for mod_prefix, m in self.named_modules():
            for key, arr in m._state_items(f"{mod_prefix}." if mod_prefix else ""):
                out[key] = copy_array(arr)  # on the array's own device
        return out

    def _upgrade_state_dict(self, state: dict[str, Any], prefix: str) -> None:
        """Hook: fill in keys that older saved states lack (overridden by batch norm)."""

    def _state_value_problems(self, values: Mapping[str, np.ndarray]) -> list[tuple[str, str]]:
        """Hook: ``(name, problem)`` for each of this module's own arrays about to be loaded (``values``: name
        without prefix -> array already cast to the current dtype) that the module cannot accept; overridden
        by batch/instance norm, which refuse a non-finite or negative running variance."""
        return []

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True
    ) -> IncompatibleKeys:
        """Copy arrays from ``state_dict`` into this module's parameters and buffers.

        All-or-nothing: every key, shape and dtype is checked first, and on any error a
        :class:`StateDictError` is raised with the module left exactly as it was.  With ``strict=True``
        missing or unexpected keys are errors; with ``strict=False`` they are returned.  Values are cast to
        the dtype of the array they replace; shapes must match exactly.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping, got {type(state_dict).__name__}")
        given: dict[str, Any] = dict(state_dict)
        targets: dict[str, tuple[Module, str, np.ndarray]] = {}
        prefixes: dict[int, str] = {}
        for mod_prefix, m in self.named_modules():
            p = f"{mod_prefix}." if mod_prefix else ""
            prefixes[id(m)] = p
            m._upgrade_state_dict(given, p)
            for key, arr in m._state_items(p):
                targets[key] = (m, key[len(p) :], arr)

        missing = [k for k in targets if k not in given]
        unexpected = [k for k in given if k not in targets]
        errors: list[str] = []
        if strict and missing:
            errors.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            errors.append(f"unexpected keys: {', '.join(unexpected)}")

        staged: list[tuple[Module, str, np.ndarray]] = []
        for key, (m, name, current) in targets.items():
            if key not in given:
                continue
            try:
                raw = given[key]
                # arrays saved from a device come to the host for the checks; they land on this
                # model's device at the end, whichever device they were saved from
                value = to_host(raw) if _is_array(raw) else to_numpy(raw)
            except Exception as exc:  # e.g. an object that is not array-like
                errors.append(
                    f"'{key}': cannot convert {type(given[key]).__name__} to an array ({exc})"
                )
                continue
            current_dtype = host_dtype(current)
            if value.shape != tuple(current.shape):
                errors.append(f"'{key}': expected shape {tuple(current.shape)}, got {value.shape}")
                continue
            if current_dtype.kind == "f" and value.dtype.kind not in "fiu":
                errors.append(f"'{key}': expected a floating-point array, got dtype {value.dtype}")
                continue
            if current_dtype.kind in "iu" and value.dtype.kind not in "iu":
                errors.append(f"'{key}': expected an integer array, got dtype {value.dtype}")
                continue
            staged.append((m, name, value.astype(current_dtype, copy=True)))

        by_module: dict[int, tuple[Module, dict[str, np.ndarray]]] = {}
        for m, name, value in staged:
            by_module.setdefault(id(m), (m, {}))[1][name] = value
        for m, values in by_module.values():
            for name, problem in m._state_value_problems(values):
                errors.append(f"'{prefixes[id(m)]}{name}': {problem}")

        if errors:
            raise StateDictError(
                f"error(s) loading state dict into {type(self).__name__} (nothing was changed): "
                + "; ".join(errors)
            )
        moved = []  # every copy to the device made before anything is replaced
        for m, name, value in staged:
            param = m._parameters.get(name)
            current = param.data if param is not None else m._buffers[name]
            moved.append((m, name, param, like(value, current)))
        for m, name, param, value in moved:
            if param is not None:
                param.data = value
            else:
                m._buffers[name] = value
        return IncompatibleKeys(missing, unexpected)

    # ----------------------------------------------------------------------------------- display
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"
