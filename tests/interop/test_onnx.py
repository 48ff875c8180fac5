"""to_onnx, proven in onnxruntime: every exportable layer over the opset sweep and every example/lab network
(folded and not) give normlab's eval output within 1e-5 on random and MNIST inputs, batch sizes 1 and 7
through the same file; the checker passes; bad input is refused before anything is written."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import normlab as nl
from interop.layers import LAYERS
from interop.zoo import NETWORKS, NOT_CONVERTIBLE, inputs, network, randomize_norm_state
from normlab import nn
from normlab.interop import InteropError, UnsupportedLayerError, to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# where the graph changes: 13 (every decomposition, ReduceMean axes as an attribute), 17 (LayerNormalization),
# 18 (ReduceMean axes as an input), 21 (GroupNormalization), 23 (RMSNormalization); Gelu (20) and each
# op against its decomposition one opset below are covered by test_native_op_from_its_opset_decomposition_before
OPSETS = [13, 17, 18, 21, 23]


def _ort(path) -> object:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _normlab_eval(model: nn.Module, x: np.ndarray) -> np.ndarray:
    was = model.training
    model.eval()
    with nl.no_grad():
        y = model(x)
    model.train(was)
    return y


def _assert_matches(session, model: nn.Module, x: np.ndarray, tolerance: float = 1e-5) -> float:
    expected = _normlab_eval(model, x)
    (got,) = session.run(None, {"input": x})
    assert got.shape == expected.shape
    diff = float(np.max(np.abs(got - expected)))
    assert diff <= tolerance * max(1.0, float(np.max(np.abs(expected))))
    return diff


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("opset", OPSETS)
def test_every_layer_in_onnxruntime_over_the_opsets(tmp_path, opset: int) -> None:
    for name, (build, shape) in LAYERS.items():
        model = randomize_norm_state(nn.Sequential(build()), seed=2).eval()
        path = tmp_path / f"{name}.onnx"
        to_onnx(model, path, opset=opset, input_shape=shape)
        session = _ort(path)
        for batch in (1, 7):  # one file, two batch sizes
            if batch == 1 and "nostats" in name:
                continue  # batch statistics of one sample: degenerate in normlab (it raises) and here
            _assert_matches(session, model, inputs(shape, batch=batch, seed=batch))


@pytest.mark.parametrize("opset", [13, 23])  # every decomposition; every native op
@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_every_network_in_onnxruntime(tmp_path, name: str, fold: bool, opset: int, mnist) -> None:
    model, shape = network(name)
    model.eval()
    path = tmp_path / "model.onnx"
    if name in NOT_CONVERTIBLE:
        with pytest.raises(
            UnsupportedLayerError, match=rf"\({NOT_CONVERTIBLE[name]}\) has no ONNX"
        ):
            to_onnx(model, path, opset=opset, fold=fold, input_shape=shape)
        assert not path.exists()
        return
    report = to_onnx(model, path, opset=opset, fold=fold, input_shape=shape)
    assert report.max_abs_diff <= 1e-5 and report.verified_with.startswith("onnxruntime")
    session = _ort(path)
    images = mnist[:7] if shape == (1, 28, 28) else mnist[:7].reshape(7, -1)
    for x in (inputs(shape, batch=7), inputs(shape, batch=1, seed=5), images, images[:1]):
        _assert_matches(session, model, x)
    has_bn = any(type(m).__name__.startswith("BatchNorm") for m in model.modules())
    assert ("BatchNormalization" in _ops(path)) == (has_bn and not fold)


@pytest.fixture(scope="module")
def mnist() -> np.ndarray:
    from normlab.data import load_mnist, scale_01

    return scale_01(load_mnist("sample").test.x[:7])[:, None].astype(np.float32)


def test_graph_passes_the_checker_with_a_dynamic_batch_and_metadata(tmp_path) -> None:
    model, shape = network("lenet-bn")
    path = tmp_path / "lenet.onnx"
    report = to_onnx(
        model.eval(), path, opset=17, fold=True, input_shape=shape, source_hash="ab" * 32
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["normlab_version"] == nl.__version__
    assert props["source_checkpoint_sha256"] == "ab" * 32
    assert props["folded_batch_norm"] == "4" == str(len(report.folded))
    assert proto.opset_import[0].version == 17 and proto.producer_name == "normlab"


@pytest.mark.parametrize(
    ("layer", "shape", "native_from", "op"),
    [
        (lambda: nn.LayerNorm(6), (6,), 17, "LayerNormalization"),
        (lambda: nn.GroupNorm(2, 4), (4, 3, 3), 21, "GroupNormalization"),
        (lambda: nn.RMSNorm(6), (6,), 23, "RMSNormalization"),
        (lambda: nn.GELU(), (6,), 20, "Gelu"),
    ],
)
def test_native_op_from_its_opset_decomposition_before(
    tmp_path, layer, shape, native_from, op
) -> None:
    model = nn.Sequential(layer()).eval()
    for opset in (native_from - 1, native_from):
        path = tmp_path / f"{opset}.onnx"
        to_onnx(model, path, opset=opset, input_shape=shape)
        assert (op in _ops(path)) == (opset >= native_from)
        _assert_matches(_ort(path), model, inputs(shape))


def test_float64_model_exports_in_float64(tmp_path) -> None:
    model = randomize_norm_state(
        nn.Sequential(
            nn.Linear(5, 4, rng=0), nn.BatchNorm1d(4), nn.Tanh(), nn.LayerNorm(4)
        ).double()
    ).eval()
    to_onnx(model, tmp_path / "m.onnx", opset=17)
    # float64 end to end; onnxruntime's double LayerNormalization rounds differently (measured 8e-12)
    _assert_matches(_ort(tmp_path / "m.onnx"), model, inputs((5,), dtype=np.float64), 1e-10)


def test_training_mode_exports_eval_says_so_and_leaves_the_model(tmp_path) -> None:
    model = randomize_norm_state(
        nn.Sequential(nn.Linear(5, 4, rng=0), nn.BatchNorm1d(4), nn.Dropout(0.5))
    )
    state = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="training mode; exporting its eval behaviour"):
        report = to_onnx(model, tmp_path / "m.onnx")
    assert report.notes == ["the model was in training mode: exported its eval behaviour"]
    assert all(m.training for m in model.modules())
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in state.items())
    _assert_matches(_ort(tmp_path / "m.onnx"), model, inputs((5,)))


def _no_temp_files(directory) -> bool:
    return not [f for f in os.listdir(directory) if f.endswith(".tmp")]


def test_bad_input_is_refused_before_anything_is_written(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(3, 2, rng=0)).eval()
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"previous")
    with pytest.raises(InteropError, match="exists; pass force=True"):
        to_onnx(model, existing)
    assert existing.read_bytes() == b"previous"
    to_onnx(model, existing, force=True)
    assert onnx.load(str(existing)).graph.node
    with pytest.raises(InteropError, match="does not exist"):
        to_onnx(model, tmp_path / "missing" / "m.onnx")
    with pytest.raises(InteropError, match="opset must be an int from 13 to 23, got 12"):
        to_onnx(model, tmp_path / "a.onnx", opset=12)
    with pytest.raises(InteropError, match="give input_shape"):
        to_onnx(nn.Sequential(nn.ReLU()), tmp_path / "a.onnx")
    with pytest.raises(InteropError, match=r"'0' \(Linear\) does not accept the probe input"):
        to_onnx(model, tmp_path / "a.onnx", input_shape=(4,))

    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(UnsupportedLayerError, match=r"'1' \(Custom\) has no ONNX export"):
        to_onnx(nn.Sequential(nn.Linear(3, 2, rng=0), Custom()), tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists() and _no_temp_files(tmp_path)


def test_a_graph_that_disagrees_with_normlab_is_not_written(tmp_path, monkeypatch) -> None:
    from normlab.interop import onnx_export

    real_run = onnx_export._run
    monkeypatch.setattr(onnx_export, "_run", lambda data, x: (real_run(data, x)[0] + 1e-2, "test"))
    with warnings.catch_warnings(), pytest.raises(InteropError, match="differs from normlab's"):
        to_onnx(nn.Sequential(nn.Linear(3, 2, rng=0)).eval(), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists() and _no_temp_files(tmp_path)
