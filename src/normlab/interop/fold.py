"""Folding batch norm into the neighbouring Linear/Conv2d for inference: ``fold_batch_norm(model)``.

In eval mode a batch norm layer with running statistics is a fixed per-channel affine map
``y = scale * x + shift`` with ``scale = weight / sqrt(running_var + eps)`` and
``shift = bias - running_mean * scale``.  Composed with an adjacent affine layer it is one affine layer with
adjusted weight and bias, so the layer disappears at inference.  The arithmetic is done in float64 and the
result cast back to the layer's dtype.

**Folded** (``W``: the weight, ``b``: the bias of the Linear/Conv2d):

* *backward*, into the layer before: ``Conv2d -> BatchNorm2d`` and ``Linear -> BatchNorm1d``:
  ``W' = W * scale`` (per output channel), ``b' = b * scale + shift``;
* *forward*, into the layer after: ``BatchNorm1d -> Linear`` (2-D input, ``in_features == C``),
  ``BatchNorm1d/2d/3d -> Flatten() -> Linear`` (channel-major flattening: each channel's scale repeated over
  its ``in_features / C`` positions), and ``BatchNorm2d -> Conv2d`` **only when the conv has no padding**:
  ``W' = W * scale`` (per input channel), ``b' = b + W · shift``.

**Not folded, kept as a batch norm layer in eval mode** (the result stays exact): a batch norm with no
Linear/Conv2d next to it (e.g. ``Conv -> ReLU -> BN``), and ``BatchNorm2d -> Conv2d`` with padding: the conv
zero-pads the *normalized* input, and a zero there is ``-shift/scale`` before the batch norm, so no weight and
bias of the conv reproduce the border outputs.  Batch norm inside a module other than ``Sequential`` is kept
too (its forward may do anything).  ``Linear``/``BatchNorm1d`` are assumed to see 2-D ``(N, features)``
input, the only way normlab's models use them.

**Refused** with :class:`~normlab.interop.InteropError`, before anything is built: a batch norm with
``track_running_stats=False`` (it normalizes with each batch's statistics even in eval: no fixed affine map),
and any normalization layer the folder does not know (a subclass of a batch norm class, or a norm layer
added later such as Batch Renorm or Ghost BN): folding it as plain batch norm could be silently wrong.

**Warned** (``RuntimeWarning`` naming the layer): a batch norm whose running statistics were never updated
(``num_batches_tracked == 0``); it is folded as it evaluates, with mean 0 and variance 1.

A model in training mode is folded as it evaluates (running statistics, dropout off).  The original model is
never changed (not its arrays, not its mode); the result is a new :class:`FoldedSequential` in eval mode whose
``train(True)`` raises: with batch norm gone, training it would train a different model.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normlab import nn
from normlab.interop.errors import InteropError, UnsupportedLayerError
from normlab.interop.walk import chain, layer_name
from normlab.nn.host import device_target, host_copy
from normlab.nn.norm import _Normalization
from normlab.nn.registry import register_module

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# normalization layers the folder knows: batch norm is folded, the others are kept as they are
KNOWN_NORMS = (
    *BATCH_NORMS,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.RMSNorm,
)


@register_module
class FoldedSequential(nn.Sequential):
    """A ``Sequential`` for inference only, built by :func:`fold_batch_norm`: always in eval mode."""

    plain_chain = True  # forward is Sequential's: the exporters may open it

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.eval()

    def train(self, mode: bool = True) -> nn.Module:
        if mode:
            raise InteropError(
                "FoldedSequential: this model has batch norm folded into its weights and is for inference "
                "only; train the original model instead"
            )
        return super().train(False)


@dataclass
class FoldResult:
    """What :func:`fold_batch_norm_report` did: the new model, and a line per batch norm layer."""

    model: FoldedSequential
    folded: list[str] = field(default_factory=list)  # "'1' (BatchNorm2d) into '0' (Conv2d)"
    kept: list[str] = field(default_factory=list)  # "'4' (BatchNorm2d): why it was not folded"


def fold_batch_norm(model: nn.Module) -> FoldedSequential:
    """A new eval-only model computing ``model``'s eval output with batch norm folded into the adjacent
    Linear/Conv2d layers (see the module docstring for which pairs fold).  ``model`` is not changed.

    In eval mode a batch norm is a fixed affine map per channel, ``y = s * x + t`` with
    ``s = weight / sqrt(running_var + eps)`` and ``t = bias - s * running_mean``, so it merges into the
    weights and bias of the layer before it: one layer, the same outputs, fewer passes over memory.

    Args:
        model: a ``Sequential`` (nested ones included) or a single layer.

    Returns:
        A :class:`FoldedSequential` in eval mode.  :func:`fold_batch_norm_report` also says which
            layers folded and which were kept, and why.

    Examples:
        >>> import numpy as np
        >>> import normlab as nl
        >>> from normlab import nn
        >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        >>> model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3, rng=1))
        >>> _ = model(x)  # a training-mode forward moves the running statistics
        >>> folded = nl.fold_batch_norm(model)
        >>> [type(layer).__name__ for layer in folded]
        ['Linear', 'ReLU', 'Linear']
        >>> bool(np.allclose(folded(x), model.eval()(x), atol=1e-5))
        True
    """
    return fold_batch_norm_report(model).model


def fold_batch_norm_report(model: nn.Module) -> FoldResult:
    """:func:`fold_batch_norm`, also saying which batch norm layers were folded and which kept, and why."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batch_norm: expected a normlab Module, got {type(model).__name__}")
    # a model on a device folds as a NumPy copy; the folded model is then moved to where the model lives
    device, model = device_target(model), host_copy(model)
    _check_foldable(model)
    links = chain(model)
    result_layers: list[tuple[str, nn.Module]] = []
    folded: list[str] = []
    kept: list[str] = []
    i = 0
    while i < len(links):
        path, layer = links[i]
        if type(layer) not in BATCH_NORMS:
            result_layers.append((path, _eval_copy(layer)))
            if any(type(m) in BATCH_NORMS for m in layer.modules()):
                kept.append(f"{layer_name(path, layer)}: batch norm inside a custom module is kept")
            i += 1
            continue
        scale, shift = _affine(layer)
        following = [m for _, m in links[i + 1 : i + 3]]
        previous = result_layers[-1][1] if result_layers else None
        if _folds_backward(previous, layer):
            prev_path, prev = result_layers[-1]
            result_layers[-1] = (prev_path, _fold_into_output(prev, scale, shift))
            folded.append(f"{layer_name(path, layer)} into {layer_name(prev_path, prev)}")
            i += 1
            continue
        span, reason = _forward_span(layer, following)
        if span:
            target_path, target = links[i + span]
            for between_path, between in links[i + 1 : i + span]:  # a Flatten, kept
                result_layers.append((between_path, _eval_copy(between)))
            result_layers.append((target_path, _fold_into_input(target, scale, shift)))
            folded.append(f"{layer_name(path, layer)} into {layer_name(target_path, target)}")
            i += span + 1
            continue
        result_layers.append((path, _eval_copy(layer)))
        kept.append(f"{layer_name(path, layer)}: {reason}")
        i += 1
    result = FoldedSequential(*(m for _, m in result_layers))
    if device != "cpu":
        result.to(device)
    return FoldResult(result, folded, kept)


# --------------------------------------------------------------------------------------- checks
def _check_foldable(model: nn.Module) -> None:
    """Refuse unknown normalization layers and batch norm without running statistics; warn about
    running statistics never updated.  Nothing is built before these pass."""
    for path, module in model.named_modules():
        kind = type(module)
        is_norm = (
            isinstance(module, _Normalization)
            or "running_mean" in module._buffers
            or "Norm" in kind.__name__
        )
        if is_norm and kind not in KNOWN_NORMS:
            raise UnsupportedLayerError(
                f"fold_batch_norm: layer {layer_name(path, module)} is a normalization layer the folder "
                f"does not know (it folds exactly {', '.join(c.__name__ for c in BATCH_NORMS)}); folding it "
                "as plain batch norm could be silently wrong"
            )
        if kind in BATCH_NORMS and not module.track_running_stats:
            raise InteropError(
                f"fold_batch_norm: layer {layer_name(path, module)} has track_running_stats=False: it "
                "normalizes with each batch's own statistics even in eval, which is no fixed affine map "
                "to fold"
            )
        if kind in BATCH_NORMS and int(module.num_batches_tracked) == 0:
            warnings.warn(
                f"fold_batch_norm: layer {layer_name(path, module)} has never updated its running "
                "statistics (num_batches_tracked == 0): folded with mean 0 and variance 1, as it evaluates",
                RuntimeWarning,
                stacklevel=3,
            )


def _folds_backward(previous: nn.Module | None, bn: nn.Module) -> bool:
    if type(bn) is nn.BatchNorm1d and type(previous) is nn.Linear:
        return previous.out_features == bn.num_features
    if type(bn) is nn.BatchNorm2d and type(previous) is nn.Conv2d:
        return previous.out_channels == bn.num_features
    return False


def _forward_span(bn: nn.Module, following: list[nn.Module]) -> tuple[int, str]:
    """(k, "") when ``bn`` folds into the layer k links after it; (0, why not) otherwise."""
    channels = bn.num_features
    nxt = following[0] if following else None
    if type(bn) is nn.BatchNorm1d and type(nxt) is nn.Linear and nxt.in_features == channels:
        return 1, ""
    if (
        type(nxt) is nn.Flatten
        and (nxt.start_dim, nxt.end_dim) == (1, -1)
        and len(following) > 1
        and type(following[1]) is nn.Linear
        and following[1].in_features % channels == 0
    ):
        return 2, ""
    if type(bn) is nn.BatchNorm2d and type(nxt) is nn.Conv2d and nxt.in_channels == channels:
        if nxt.padding == (0, 0):
            return 1, ""
        return 0, (
            f"the next Conv2d zero-pads (padding={nxt.padding}) the normalized input, which no conv weight "
            "and bias can reproduce from the raw input at the border; kept as a layer"
        )
    return 0, "no Linear/Conv2d directly before or after it to fold into; kept as a layer"


# --------------------------------------------------------------------------------------- arithmetic
def _affine(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) in float64: the batch norm's eval output is ``scale * x + shift`` per channel."""
    mean = bn.running_mean.astype(np.float64)
    var = bn.running_var.astype(np.float64)
    gamma = np.ones_like(mean) if bn.weight is None else bn.weight.data.astype(np.float64)
    beta = np.zeros_like(mean) if bn.bias is None else bn.bias.data.astype(np.float64)
    scale = gamma / np.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _with_bias(layer: nn.Module) -> nn.Module:
    """An eval copy of a Linear/Conv2d that has a bias (zeros if the original had none)."""
    if layer.bias is not None:
        return _eval_copy(layer)
    config = layer.get_config() | {"bias": True}
    fresh = type(layer)(**config, rng=0)
    fresh.weight.data = layer.weight.data.copy()
    fresh.bias.data = np.zeros_like(fresh.bias.data)
    return fresh.eval()


def _fold_into_output(layer: nn.Module, scale: np.ndarray, shift: np.ndarray) -> nn.Module:
    """``bn(layer(x))`` as one layer: each output channel scaled and shifted."""
    out = _with_bias(layer)
    w, b = out.weight.data.astype(np.float64), out.bias.data.astype(np.float64)
    per_row = scale.reshape(-1, *([1] * (w.ndim - 1)))
    out.weight.data = (w * per_row).astype(out.weight.dtype)
    out.bias.data = (b * scale + shift).astype(out.bias.dtype)
    return out


def _fold_into_input(layer: nn.Module, scale: np.ndarray, shift: np.ndarray) -> nn.Module:
    """``layer(bn(x))`` as one layer (for a Linear after a Flatten, the per-channel values are repeated
    over each channel's positions)."""
    out = _with_bias(layer)
    w, b = out.weight.data.astype(np.float64), out.bias.data.astype(np.float64)
    if isinstance(out, nn.Linear):
        repeat = out.in_features // scale.size
        scale, shift = np.repeat(scale, repeat), np.repeat(shift, repeat)
        out.weight.data = (w * scale[None, :]).astype(out.weight.dtype)
        out.bias.data = (b + w @ shift).astype(out.bias.dtype)
    else:  # Conv2d without padding: every input value passes through the batch norm
        out.weight.data = (w * scale[None, :, None, None]).astype(out.weight.dtype)
        out.bias.data = (b + np.einsum("oikl,i->o", w, shift)).astype(out.bias.dtype)
    return out


def _eval_copy(layer: nn.Module) -> nn.Module:
    fresh = copy.deepcopy(layer)
    for m in fresh.modules():  # drop any cache of a last forward: the copy starts clean
        if "_cache" in m.__dict__:
            m._cache = None
    return fresh.eval()
