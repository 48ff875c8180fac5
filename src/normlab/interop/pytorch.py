"""PyTorch conversion: ``to_torch(model)`` and ``from_torch(module)``, layer by layer.

Every normlab layer with a PyTorch counterpart converts, both ways: ``Sequential`` (nested too), ``Linear``,
``Conv2d``, ``MaxPool2d``, ``AvgPool2d``, ``Flatten``, ``Dropout``, ``ReLU``, ``Sigmoid``, ``Tanh``, ``GELU``,
``Softmax``, ``BatchNorm1d/2d/3d``, ``InstanceNorm1d/2d/3d``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``.
Constructor options, parameters and buffers (``num_batches_tracked`` included) are copied bit for bit, in
the model's dtype, and each module's train/eval flag is kept.

No counterpart, a clear :class:`~normlab.interop.UnsupportedLayerError` naming the layer:

* any other layer (a custom one, the lab's ``PadBottomRight``, a ``FoldedSequential`` is fine: it is a
  ``Sequential``); on the PyTorch side any module not in the list, or an option normlab lacks (Conv2d
  ``groups``/``padding_mode``/string padding, pooling ``ceil_mode``/``dilation``, ``Softmax(dim=None)``, ...);
* ``running_var="biased"`` (Keras-style running variance): PyTorch always stores the unbiased one, so the
  converted model would train differently (its eval output would agree);
* ``InstanceNorm`` with ``track_running_stats=True`` and ``momentum=None``: PyTorch never updates such
  running statistics (see ``normlab.nn.norm``).

Not carried: a ``Dropout`` layer's own generator (PyTorch draws masks from its global RNG) and
``freeze_batch_norm``'s frozen flag (the layer's current mode is kept; a later ``train()`` in PyTorch puts it
back in training mode).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normlab import nn
from normlab.interop.errors import UnsupportedLayerError
from normlab.interop.fold import FoldedSequential
from normlab.interop.walk import layer_name
from normlab.nn.host import host_copy

_NORMS_WITH_STATS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
_INSTANCE_NORMS = ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
_SIMPLE = ("ReLU", "Sigmoid", "Tanh")


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is in the test extra
        raise ImportError(
            "normlab.interop needs PyTorch for this: pip install 'normlab[torch]'"
        ) from exc
    return torch


# --------------------------------------------------------------------------------------- to torch
def to_torch(model: nn.Module) -> Any:
    """The ``torch.nn.Module`` equivalent to ``model`` (a ``torch.nn.Sequential`` for a ``Sequential``),
    with parameters and buffers copied and every module's train/eval mode kept.  ``model`` is unchanged.

    Args:
        model: a normlab module made of the layers listed in the module docstring, of one float dtype.

    Returns:
        The PyTorch module, in the model's dtype.

    Raises:
        UnsupportedLayerError: a layer without a PyTorch counterpart (named), checked before anything is built.
        ImportError: PyTorch is not installed (``pip install 'normlab[torch]'``).

    Examples:
        >>> import numpy as np
        >>> import torch
        >>> from normlab import interop, nn
        >>> model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.BatchNorm1d(8), nn.ReLU()).eval()
        >>> module = interop.to_torch(model)
        >>> [type(m).__name__ for m in module], module.training
        (['Linear', 'BatchNorm1d', 'ReLU'], False)
        >>> x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
        >>> with torch.no_grad():
        ...     bool(np.allclose(module(torch.from_numpy(x)).numpy(), model(x), atol=1e-6))
        True
        >>> back = interop.from_torch(module)  # and back, bit for bit
        >>> all(np.array_equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
        True
    """
    torch = _torch()
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_torch: expected a normlab Module, got {type(model).__name__}")
    # a model on a device is read through a NumPy copy; the result is on the CPU
    model = host_copy(model)
    for path, module in model.named_modules():  # every layer checked before anything is built
        _check_to_torch(path, module)
    dtype = _dtype(model)
    converted = _build_torch(model, torch)
    if dtype is not None:
        converted = converted.to(getattr(torch, str(dtype)))
    for (path, m), (_, t) in zip(model.named_modules(), _named_torch(converted), strict=True):
        _copy_state_to_torch(m, t, torch, path)
        t.training = m.training
    return converted


def _named_torch(module: Any) -> list[tuple[str, Any]]:
    return list(module.named_modules())


def _dtype(model: nn.Module) -> np.dtype | None:
    dtypes = {p.dtype for p in model.parameters()}
    dtypes |= {b.dtype for b in model.buffers() if b is not None and b.dtype.kind == "f"}
    if len(dtypes) > 1:
        raise UnsupportedLayerError(
            f"to_torch: the model mixes dtypes {sorted(map(str, dtypes))}; cast it with model.to(dtype) first"
        )
    return next(iter(dtypes), None)


def _check_to_torch(path: str, m: nn.Module) -> None:
    kind = type(m).__name__
    known = type(m) in (nn.Sequential, FoldedSequential) or (
        type(m) is getattr(nn, kind, None)
        and kind
        in (
            "Linear",
            "Conv2d",
            "MaxPool2d",
            "AvgPool2d",
            "Flatten",
            "Dropout",
            "GELU",
            "Softmax",
            "LayerNorm",
            "GroupNorm",
            "RMSNorm",
            *_SIMPLE,
            *_NORMS_WITH_STATS,
            *_INSTANCE_NORMS,
        )
    )
    if not known:
        raise UnsupportedLayerError(
            f"to_torch: layer {layer_name(path, m)} has no PyTorch counterpart normlab converts"
        )
    if kind in _NORMS_WITH_STATS + _INSTANCE_NORMS:
        if m.running_var_estimator == "biased":
            raise UnsupportedLayerError(
                f"to_torch: layer {layer_name(path, m)} stores the biased running variance "
                "(running_var='biased'); PyTorch always stores the unbiased one, so the converted layer "
                "would train differently"
            )
        if kind in _INSTANCE_NORMS and m.track_running_stats and m.momentum is None:
            raise UnsupportedLayerError(
                f"to_torch: layer {layer_name(path, m)} has track_running_stats=True with momentum=None; "
                "PyTorch's InstanceNorm never updates running statistics then"
            )


def _build_torch(m: nn.Module, torch: Any) -> Any:
    T = torch.nn
    kind = type(m).__name__
    if isinstance(m, nn.Sequential):
        return T.Sequential(*(_build_torch(child, torch) for child in m))
    if kind == "Linear":
        return T.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if kind == "Conv2d":
        return T.Conv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            bias=m.bias is not None,
        )
    if kind == "MaxPool2d":
        return T.MaxPool2d(m.kernel_size, m.stride, m.padding)
    if kind == "AvgPool2d":
        return T.AvgPool2d(
            m.kernel_size, m.stride, m.padding, count_include_pad=m.count_include_pad
        )
    if kind == "Flatten":
        return T.Flatten(m.start_dim, m.end_dim)
    if kind == "Dropout":
        return T.Dropout(m.p)
    if kind in _SIMPLE:
        return getattr(T, kind)()
    if kind == "GELU":
        return T.GELU(approximate=m.approximate)
    if kind == "Softmax":
        return T.Softmax(dim=m.dim)
    if kind in _NORMS_WITH_STATS + _INSTANCE_NORMS:
        return getattr(T, kind)(
            m.num_features,
            eps=m.eps,
            momentum=m.momentum,
            affine=m.affine,
            track_running_stats=m.track_running_stats,
        )
    if kind == "LayerNorm":
        return T.LayerNorm(
            m.normalized_shape,
            eps=m.eps,
            elementwise_affine=m.elementwise_affine,
            bias=m.bias is not None,
        )
    if kind == "GroupNorm":
        return T.GroupNorm(m.num_groups, m.num_channels, eps=m.eps, affine=m.affine)
    if kind == "RMSNorm":
        return T.RMSNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine)
    raise AssertionError(kind)  # _check_to_torch let through a layer _build_torch does not know


def _copy_state_to_torch(m: nn.Module, t: Any, torch: Any, path: str) -> None:
    names = [n for n, p in m._parameters.items() if p is not None]
    t_params = {n: p for n, p in t.named_parameters(recurse=False)}
    if sorted(names) != sorted(t_params):  # a converter bug, never the user's
        raise AssertionError(f"{path}: parameters {names} vs torch {sorted(t_params)}")
    with torch.no_grad():
        for n in names:
            t_params[n].copy_(torch.from_numpy(np.array(m._parameters[n].data, copy=True)))
        for n, b in m._buffers.items():
            if b is not None:
                setattr(t, n, torch.from_numpy(np.array(b, copy=True)))


# --------------------------------------------------------------------------------------- from torch
def from_torch(module: Any) -> nn.Module:
    """The normlab model equivalent to the PyTorch ``module`` (a ``Sequential`` for a
    ``torch.nn.Sequential``), with parameters and buffers copied and every module's mode kept."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    for path, t in module.named_modules():  # every layer checked before anything is built
        _check_from_torch(path, t, torch)
    tensors = list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]
    dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors}
    if not dtypes <= {"float32", "float64"} or len(dtypes) > 1:
        raise UnsupportedLayerError(
            f"from_torch: normlab models hold one float32 or float64 dtype, the module has {sorted(dtypes)}"
        )
    if any(t.device.type != "cpu" for t in tensors):
        raise UnsupportedLayerError("from_torch: move the module to the CPU first (module.cpu())")
    dtype = np.dtype(dtypes.pop()) if dtypes else np.dtype(np.float32)
    model = _build_normlab(module, dtype)
    for (path, t), (_, m) in zip(module.named_modules(), model.named_modules(), strict=True):
        _copy_state_from_torch(t, m, path)
        m.training = t.training
    return model


def _check_from_torch(path: str, t: Any, torch: Any) -> None:
    T = torch.nn
    kind = type(t).__name__
    where = f"from_torch: module {layer_name(path, t)}"
    if type(t) is not getattr(T, kind, None):
        raise UnsupportedLayerError(f"{where} has no normlab counterpart")
    supported = (
        "Sequential",
        "Linear",
        "Conv2d",
        "MaxPool2d",
        "AvgPool2d",
        "Flatten",
        "Dropout",
        "GELU",
        "Softmax",
        "LayerNorm",
        "GroupNorm",
        "RMSNorm",
        *_SIMPLE,
        *_NORMS_WITH_STATS,
        *_INSTANCE_NORMS,
    )
    if kind not in supported:
        raise UnsupportedLayerError(f"{where} has no normlab counterpart")
    problems = []
    if kind == "Conv2d":
        if t.groups != 1:
            problems.append(f"groups={t.groups} (normlab's Conv2d has no groups)")
        if t.padding_mode != "zeros":
            problems.append(f"padding_mode={t.padding_mode!r} (normlab pads with zeros)")
        if isinstance(t.padding, str):
            problems.append(f"padding={t.padding!r} (normlab takes explicit sizes)")
    if kind in ("MaxPool2d", "AvgPool2d") and t.ceil_mode:
        problems.append("ceil_mode=True")
    if kind == "MaxPool2d" and (t.dilation not in (1, (1, 1)) or t.return_indices):
        problems.append(f"dilation={t.dilation}, return_indices={t.return_indices}")
    if kind == "AvgPool2d" and t.divisor_override is not None:
        problems.append(f"divisor_override={t.divisor_override}")
    if kind == "Softmax" and t.dim is None:
        problems.append("dim=None (give the axis explicitly)")
    if problems:
        raise UnsupportedLayerError(f"{where}: {'; '.join(problems)} has no normlab counterpart")


def _build_normlab(t: Any, dtype: np.dtype) -> nn.Module:
    kind = type(t).__name__
    if kind == "Sequential":
        return nn.Sequential(*(_build_normlab(child, dtype) for child in t))
    if kind == "Linear":
        return nn.Linear(t.in_features, t.out_features, bias=t.bias is not None, rng=0, dtype=dtype)
    if kind == "Conv2d":
        return nn.Conv2d(
            t.in_channels,
            t.out_channels,
            t.kernel_size,
            stride=t.stride,
            padding=t.padding,
            dilation=t.dilation,
            bias=t.bias is not None,
            rng=0,
            dtype=dtype,
        )
    if kind == "MaxPool2d":
        return nn.MaxPool2d(t.kernel_size, t.stride, t.padding)
    if kind == "AvgPool2d":
        return nn.AvgPool2d(t.kernel_size, t.stride, t.padding, t.count_include_pad)
    if kind == "Flatten":
        return nn.Flatten(t.start_dim, t.end_dim)
    if kind == "Dropout":
        return nn.Dropout(t.p)
    if kind in _SIMPLE:
        return getattr(nn, kind)()
    if kind == "GELU":
        return nn.GELU(t.approximate)
    if kind == "Softmax":
        return nn.Softmax(t.dim)
    if kind in _NORMS_WITH_STATS + _INSTANCE_NORMS:
        return getattr(nn, kind)(
            t.num_features,
            eps=t.eps,
            momentum=t.momentum,
            affine=t.affine,
            track_running_stats=t.track_running_stats,
            dtype=dtype,
        )
    if kind == "LayerNorm":
        return nn.LayerNorm(
            t.normalized_shape,
            eps=t.eps,
            elementwise_affine=t.elementwise_affine,
            bias=t.bias is not None,
            dtype=dtype,
        )
    if kind == "GroupNorm":
        return nn.GroupNorm(t.num_groups, t.num_channels, eps=t.eps, affine=t.affine, dtype=dtype)
    if kind == "RMSNorm":
        return nn.RMSNorm(
            t.normalized_shape, eps=t.eps, elementwise_affine=t.elementwise_affine, dtype=dtype
        )
    raise AssertionError(kind)


def _copy_state_from_torch(t: Any, m: nn.Module, path: str) -> None:
    t_params = dict(t.named_parameters(recurse=False))
    names = [n for n, p in m._parameters.items() if p is not None]
    if sorted(names) != sorted(t_params):  # a converter bug, never the user's
        raise AssertionError(f"{path}: parameters {names} vs torch {sorted(t_params)}")
    for n in names:
        m._parameters[n].data = t_params[n].detach().numpy().copy()
    for n, b in t.named_buffers(recurse=False):
        if b is not None:
            setattr(m, n, b.detach().numpy().copy())
