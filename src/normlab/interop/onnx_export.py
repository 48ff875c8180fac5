"""ONNX export: ``to_onnx(model, path, opset=..., fold=...)``, written with the ``onnx`` package's helpers,
checked by ``onnx.checker`` and verified against normlab's own eval output before the file is written.

**Layers and ops** (opsets 13 to 23; "else" is the decomposition into elementary ops used below that opset):

==================  =========================================================================================
normlab             ONNX
==================  =========================================================================================
Linear              ``Gemm`` (2-D input), else ``MatMul`` + ``Add``
Conv2d              ``Conv`` (pads, strides, dilations)
MaxPool2d           ``MaxPool``;  AvgPool2d: ``AveragePool`` (``count_include_pad``)
Flatten             ``Flatten`` for (1, -1), else ``Reshape``
Dropout             ``Identity`` (eval)
ReLU/Sigmoid/Tanh   ``Relu``/``Sigmoid``/``Tanh``;  Softmax: ``Softmax(axis)``
GELU                ``Gelu`` (opset >= 20), else ``Erf`` (exact) or ``Tanh`` (approximate) formula
BatchNorm1d/2d/3d   ``BatchNormalization`` with the running statistics; ``track_running_stats=False``:
                    the batch-statistics formula (``ReduceMean`` over N and the spatial axes)
InstanceNorm1d/2/3  ``InstanceNormalization``; with running statistics tracked (eval uses them):
                    ``BatchNormalization``
LayerNorm           ``LayerNormalization`` (opset >= 17), else the formula
GroupNorm           ``GroupNormalization`` (opset >= 21: per-channel scale and bias; opset 18's version
                    had per-group ones and is not used), else ``Reshape`` to (N, G, -1) and the formula
RMSNorm             ``RMSNormalization`` (opset >= 23), else ``x / sqrt(mean(x^2) + eps) * weight``
==================  =========================================================================================

The graph has one input ``input`` with a dynamic batch dimension ``batch`` and one output ``output``;
``input_shape`` gives the other dimensions (inferred for a model whose first layer is ``Linear``).  The
exported model is the eval-mode model (a model in training mode is exported as it evaluates, with a
warning).  Metadata: the normlab version, the source checkpoint's SHA-256 when given, the opset, and the
batch norm layers folded.  Any layer not in the table raises :class:`~normlab.interop.UnsupportedLayerError`
naming it.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from normlab import nn
from normlab.backend import no_grad
from normlab.interop.errors import InteropError, UnsupportedLayerError
from normlab.interop.files import atomic_write, check_output_path
from normlab.interop.fold import fold_batch_norm_report
from normlab.interop.walk import chain, layer_name
from normlab.nn.host import host_copy

SUPPORTED_OPSETS = range(13, 24)
DEFAULT_OPSET = 17
INPUT, OUTPUT = "input", "output"

_EXPORTABLE = {
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "Flatten",
    "Dropout",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "GELU",
    "Softmax",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
}


@dataclass
class OnnxExport:
    """What :func:`to_onnx` wrote and measured."""

    path: Path
    opset: int
    input_shape: tuple[int, ...]
    folded: list[str] = field(default_factory=list)
    max_abs_diff: float = math.nan  # onnx runtime vs normlab on the probe batch
    verified_with: str = ""  # "onnxruntime 1.32.0" or "onnx.reference"
    notes: list[str] = field(default_factory=list)


def to_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    fold: bool = False,
    input_shape: tuple[int, ...] | None = None,
    force: bool = False,
    source_hash: str | None = None,
    probe: np.ndarray | None = None,
    tolerance: float = 1e-4,
) -> OnnxExport:
    """Export ``model``'s eval behaviour to an ONNX file at ``path`` and return what was done.

    ``fold`` folds batch norm first (:func:`~normlab.interop.fold_batch_norm`).  ``input_shape`` is the input
    without the batch axis (e.g. ``(1, 28, 28)``).  Before writing, the graph passes
    ``onnx.checker.check_model`` and runs (in onnxruntime, else ``onnx.reference``) on ``probe`` (default:
    7 seeded normal samples); its output must match normlab's within ``tolerance * max(1, |output|)``.
    The file is written atomically; an existing file is refused unless ``force``.  ``model`` is unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_onnx: expected a normlab Module, got {type(model).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise InteropError(
            f"to_onnx: opset must be an int from {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}, "
            f"got {opset!r}"
        )
    target = check_output_path(path, force, "to_onnx")
    onnx = _onnx()
    # a model on a device is exported from a NumPy copy (the graph's initializers are host data anyway)
    host = host_copy(model)
    work = (host if host is not model else copy.deepcopy(model)).eval()
    folded: list[str] = []
    if fold:
        result = fold_batch_norm_report(work)
        work, folded = result.model, result.folded
    links = chain(work)
    for link_path, layer in links:
        _check_exportable(link_path, layer)
    dtype = _model_dtype(work)
    shape = _input_shape(links, input_shape)
    x = _probe(probe, shape, dtype)
    shapes, expected = _shapes(links, x)
    notes = []
    if model.training:  # said once the export is known to go ahead
        warnings.warn(
            "to_onnx: the model is in training mode; exporting its eval behaviour (running statistics, "
            "no dropout)",
            UserWarning,
            stacklevel=2,
        )
        notes.append("the model was in training mode: exported its eval behaviour")

    graph = _Graph(onnx, opset, dtype)
    name = INPUT
    for (link_path, layer), in_shape in zip(links, shapes, strict=True):
        name = graph.layer(link_path, layer, name, in_shape)
    graph.add("Identity", [name], [OUTPUT])
    proto = graph.model(shape, expected.shape[1:], metadata=_metadata(source_hash, folded, opset))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # the checker's own error types vary between versions
        raise InteropError(f"to_onnx: the exported graph fails onnx.checker: {exc}") from exc
    data = proto.SerializeToString()
    outputs, verified_with = _run(data, x)
    diff = float(np.max(np.abs(outputs - expected), initial=0.0))
    bound = tolerance * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    if not diff <= bound:
        raise InteropError(
            f"to_onnx: the exported graph's output differs from normlab's by {diff:.3g} (> {bound:.3g}) on "
            "the probe batch; nothing was written"
        )
    atomic_write(target, data)
    return OnnxExport(target, opset, shape, folded, diff, verified_with, notes)


# --------------------------------------------------------------------------------------- checks
def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - onnx is in the test extra
        raise ImportError(
            "ONNX export needs the onnx package: pip install 'normlab[onnx]'"
        ) from exc
    return onnx


def _check_exportable(path: str, layer: nn.Module) -> None:
    kind = type(layer).__name__
    if kind not in _EXPORTABLE or type(layer) is not getattr(nn, kind):
        raise UnsupportedLayerError(
            f"to_onnx: layer {layer_name(path, layer)} has no ONNX export (exportable: "
            f"{', '.join(sorted(_EXPORTABLE))})"
        )


def _model_dtype(model: nn.Module) -> np.dtype:
    dtypes = {p.dtype for p in model.parameters()}
    dtypes |= {b.dtype for b in model.buffers() if b is not None and b.dtype.kind == "f"}
    if len(dtypes) > 1:
        raise InteropError(f"to_onnx: the model mixes dtypes {sorted(map(str, dtypes))}")
    return next(iter(dtypes), np.dtype(np.float32))


def _input_shape(links: list[tuple[str, nn.Module]], given: Any) -> tuple[int, ...]:
    if given is not None:
        shape = tuple(int(n) for n in given)
        if not shape or any(n < 1 for n in shape):
            raise InteropError(f"to_onnx: input_shape must be positive sizes, got {given!r}")
        return shape
    first = links[0][1] if links else None
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise InteropError(
        "to_onnx: give input_shape (the input without the batch axis, e.g. (1, 28, 28)): it can only be "
        "inferred when the first layer is Linear"
    )


def _probe(probe: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if probe is None:
        return np.random.default_rng(0).normal(size=(7, *shape)).astype(dtype)
    probe = np.asarray(probe, dtype=dtype)
    if probe.shape[1:] != shape:
        raise InteropError(
            f"to_onnx: probe batch of shape {probe.shape} does not match input {shape}"
        )
    return probe


def _shapes(
    links: list[tuple[str, nn.Module]], x: np.ndarray
) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """The input shape each link sees for ``x``, and the model's output (normlab, eval)."""
    shapes = []
    with no_grad():
        for link_path, layer in links:
            shapes.append(x.shape)
            try:
                x = layer(x)
            except ValueError as exc:
                raise InteropError(
                    f"to_onnx: layer {layer_name(link_path, layer)} does not accept the probe input of "
                    f"shape {x.shape}: {exc}"
                ) from exc
    return shapes, x


def _metadata(source_hash: str | None, folded: list[str], opset: int) -> dict[str, str]:
    from normlab.version import __version__

    meta = {
        "normlab_version": __version__,
        "opset": str(opset),
        "folded_batch_norm": str(len(folded)),
    }
    if source_hash:
        meta["source_checkpoint_sha256"] = source_hash
    return meta


def _run(data: bytes, x: np.ndarray) -> tuple[np.ndarray, str]:
    """The exported graph's output for ``x``, from onnxruntime when installed, else onnx.reference."""
    try:
        import onnxruntime as ort
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(data).run(None, {INPUT: x})[0], "onnx.reference"
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT: x})[0], f"onnxruntime {ort.__version__}"


# --------------------------------------------------------------------------------------- graph
class _Graph:
    """Nodes and initializers of the graph being built; one method per normlab layer."""

    def __init__(self, onnx: Any, opset: int, dtype: np.dtype) -> None:
        self.onnx, self.opset, self.dtype = onnx, opset, dtype
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    # ----------------------------------------------------------------------------- plumbing
    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value: Any, hint: str, dtype: Any = None) -> str:
        name = self.fresh(hint)
        array = np.asarray(value, dtype=dtype or self.dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def add(
        self, op: str, inputs: list[str], outputs: list[str] | None = None, **attrs: Any
    ) -> str:
        outputs = outputs or [self.fresh(op.lower())]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0]

    def reduce_mean(self, x: str, axes: list[int]) -> str:
        if self.opset >= 18:  # axes became an input
            return self.add("ReduceMean", [x, self.const(axes, "axes", np.int64)], keepdims=1)
        return self.add("ReduceMean", [x], axes=axes, keepdims=1)

    def normalize(self, x: str, axes: list[int], eps: float, center: bool = True) -> str:
        """``(x - mean) / sqrt(var + eps)`` over ``axes`` (biased variance); without ``center``,
        ``x / sqrt(mean(x^2) + eps)`` (RMS)."""
        if center:
            x = self.add("Sub", [x, self.reduce_mean(x, axes)])
        square = self.add("Mul", [x, x])
        denom = self.add(
            "Sqrt", [self.add("Add", [self.reduce_mean(square, axes), self.const(eps, "eps")])]
        )
        return self.add("Div", [x, denom])

    def affine(self, x: str, weight: Any, bias: Any, shape: tuple[int, ...]) -> str:
        if weight is not None:
            x = self.add("Mul", [x, self.const(weight.data.reshape(shape), "weight")])
        if bias is not None:
            x = self.add("Add", [x, self.const(bias.data.reshape(shape), "bias")])
        return x

    def model(
        self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], metadata: dict[str, str]
    ) -> Any:
        helper = self.onnx.helper
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        graph = helper.make_graph(
            self.nodes,
            "normlab",
            [helper.make_tensor_value_info(INPUT, elem, ["batch", *in_shape])],
            [helper.make_tensor_value_info(OUTPUT, elem, ["batch", *out_shape])],
            self.initializers,
        )
        opsets = [helper.make_opsetid("", self.opset)]
        proto = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name="normlab",
            producer_version=metadata["normlab_version"],
            ir_version=helper.find_min_ir_version_for(opsets),
        )
        helper.set_model_props(proto, metadata)
        return proto

    # ----------------------------------------------------------------------------- layers
    def layer(self, path: str, m: nn.Module, x: str, shape: tuple[int, ...]) -> str:
        kind = type(m).__name__
        rank = len(shape)
        if kind == "Linear":
            w = m.weight.data
            if rank == 2:
                inputs = [x, self.const(w, "weight")]
                if m.bias is not None:
                    inputs.append(self.const(m.bias.data, "bias"))
                return self.add("Gemm", inputs, transB=1)
            y = self.add("MatMul", [x, self.const(np.ascontiguousarray(w.T), "weight_t")])
            return self.affine(y, None, m.bias, (m.out_features,))
        if kind == "Conv2d":
            inputs = [x, self.const(m.weight.data, "weight")]
            if m.bias is not None:
                inputs.append(self.const(m.bias.data, "bias"))
            return self.add(
                "Conv",
                inputs,
                kernel_shape=list(m.kernel_size),
                strides=list(m.stride),
                pads=[*m.padding, *m.padding],
                dilations=list(m.dilation),
            )
        if kind in ("MaxPool2d", "AvgPool2d"):
            attrs: dict[str, Any] = {
                "kernel_shape": list(m.kernel_size),
                "strides": list(m.stride),
                "pads": [*m.padding, *m.padding],
            }
            if kind == "AvgPool2d":
                return self.add(
                    "AveragePool", [x], count_include_pad=int(m.count_include_pad), **attrs
                )
            return self.add("MaxPool", [x], **attrs)
        if kind == "Flatten":
            start, end = m.start_dim % rank, m.end_dim % rank
            if (start, end) == (1, rank - 1):
                return self.add("Flatten", [x], axis=1)
            target = (
                [0] * start + [-1] + list(shape[end + 1 :])
            )  # 0: keep that dimension (the batch)
            return self.add("Reshape", [x, self.const(target, "shape", np.int64)])
        if kind == "Dropout":
            return self.add("Identity", [x])
        if kind in ("ReLU", "Sigmoid", "Tanh"):
            return self.add({"ReLU": "Relu"}.get(kind, kind), [x])
        if kind == "Softmax":
            return self.add("Softmax", [x], axis=m.dim)
        if kind == "GELU":
            return self.gelu(x, m.approximate)
        if kind.startswith("BatchNorm"):
            return self.batch_norm(m, x, rank)
        if kind.startswith("InstanceNorm"):
            return self.instance_norm(m, x, shape)
        if kind == "LayerNorm":
            return self.layer_norm(m, x, rank)
        if kind == "GroupNorm":
            return self.group_norm(m, x, shape)
        if kind == "RMSNorm":
            return self.rms_norm(m, x, rank)
        raise AssertionError(
            kind
        )  # _check_exportable let through a layer this method does not know

    def gelu(self, x: str, approximate: str) -> str:
        if self.opset >= 20:
            return self.add("Gelu", [x], approximate=approximate)
        half_x = self.add("Mul", [x, self.const(0.5, "half")])
        if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = self.add("Mul", [self.add("Mul", [x, x]), x])
            inner = self.add("Add", [x, self.add("Mul", [cube, self.const(0.044715, "c")])])
            core = self.add(
                "Tanh", [self.add("Mul", [inner, self.const(math.sqrt(2 / math.pi), "k")])]
            )
        else:  # 0.5 x (1 + erf(x / sqrt(2)))
            core = self.add("Erf", [self.add("Mul", [x, self.const(1 / math.sqrt(2), "k")])])
        return self.add("Mul", [half_x, self.add("Add", [core, self.const(1.0, "one")])])

    def _ones(self, m: Any, count: int) -> tuple[str, str]:
        weight = np.ones(count, self.dtype) if m.weight is None else m.weight.data
        bias = np.zeros(count, self.dtype) if m.bias is None else m.bias.data
        return self.const(weight, "scale"), self.const(bias, "bias")

    def _running_stats_norm(self, m: Any, x: str) -> str:
        scale, bias = self._ones(m, m.num_features)
        mean, var = self.const(m.running_mean, "mean"), self.const(m.running_var, "var")
        return self.add("BatchNormalization", [x, scale, bias, mean, var], epsilon=m.eps)

    def batch_norm(self, m: Any, x: str, rank: int) -> str:
        if m.track_running_stats:
            return self._running_stats_norm(m, x)
        # no running statistics: eval normalizes with the batch's own, over N and the spatial axes
        y = self.normalize(x, [0, *range(2, rank)], m.eps)
        return self.affine(y, m.weight, m.bias, (m.num_features,) + (1,) * (rank - 2))

    def instance_norm(self, m: Any, x: str, shape: tuple[int, ...]) -> str:
        if m.track_running_stats:  # eval uses the running statistics: a batch norm
            return self._running_stats_norm(m, x)
        scale, bias = self._ones(m, m.num_features)
        return self.add("InstanceNormalization", [x, scale, bias], epsilon=m.eps)

    def layer_norm(self, m: Any, x: str, rank: int) -> str:
        k = len(m.normalized_shape)
        if self.opset >= 17:
            weight = (
                m.weight.data if m.weight is not None else np.ones(m.normalized_shape, self.dtype)
            )
            inputs = [x, self.const(weight, "scale")]
            if m.bias is not None:
                inputs.append(self.const(m.bias.data, "bias"))
            return self.add("LayerNormalization", inputs, axis=-k, epsilon=m.eps)
        y = self.normalize(x, list(range(rank - k, rank)), m.eps)
        return self.affine(y, m.weight, m.bias, m.normalized_shape)

    def group_norm(self, m: Any, x: str, shape: tuple[int, ...]) -> str:
        rank = len(shape)
        if self.opset >= 21 and rank >= 3:
            scale, bias = self._ones(m, m.num_channels)
            return self.add(
                "GroupNormalization", [x, scale, bias], num_groups=m.num_groups, epsilon=m.eps
            )
        grouped = self.add("Reshape", [x, self.const([0, m.num_groups, -1], "groups", np.int64)])
        y = self.normalize(grouped, [2], m.eps)
        y = self.add("Reshape", [y, self.add("Shape", [x])])
        return self.affine(y, m.weight, m.bias, (m.num_channels,) + (1,) * (rank - 2))

    def rms_norm(self, m: Any, x: str, rank: int) -> str:
        k = len(m.normalized_shape)
        eps = float(np.finfo(self.dtype).eps) if m.eps is None else m.eps
        if self.opset >= 23:
            weight = (
                m.weight.data if m.weight is not None else np.ones(m.normalized_shape, self.dtype)
            )
            return self.add(
                "RMSNormalization", [x, self.const(weight, "scale")], axis=-k, epsilon=eps
            )
        y = self.normalize(x, list(range(rank - k, rank)), eps, center=False)
        return self.affine(y, m.weight, None, m.normalized_shape)
