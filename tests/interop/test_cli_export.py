"""`normlab export`: ONNX and PyTorch files verified against normlab, the summary line and JSON, exit codes,
and bad input refused with nothing written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import normlab as nl
from interop.zoo import inputs, network
from normlab import checkpoint as checkpoint_module
from normlab.cli import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


@pytest.fixture
def lenet_checkpoint(tmp_path):
    model, _ = network("lenet-bn")
    path = tmp_path / "lenet.safetensors"
    nl.save(model, path)
    return path


def _files(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_export_onnx_folded_with_summary_and_verified_file(
    tmp_path, lenet_checkpoint, capsys
) -> None:
    out = tmp_path / "lenet.onnx"
    assert (
        main(["export", str(lenet_checkpoint), "--onnx", str(out), "--fold", "--opset", "21"]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(
        f"{out}: ONNX opset 21, 4 batch norm layer(s) folded, eval mode; max |"
    )
    assert "note: input shape (1, 28, 28) assumed (MNIST images)" in lines[1]
    model = nl.load(lenet_checkpoint)
    x = inputs((1, 28, 28), batch=3, seed=9)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with nl.no_grad():
        assert np.max(np.abs(session.run(None, {"input": x})[0] - model(x))) <= 1e-5
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert len(props["source_checkpoint_sha256"]) == 64


def test_export_torch_json_and_reload(tmp_path, lenet_checkpoint, capsys) -> None:
    from normlab.interop.command import load_torch

    out = tmp_path / "lenet.pt"
    assert main(["export", str(lenet_checkpoint), "--torch", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["torch"]["folded"] == 0 and summary["torch"]["max_abs_diff"] <= 1e-5
    assert summary["mode"] == "eval" and summary["input_shape"] == [1, 28, 28]
    saved = torch.load(out, weights_only=True)  # no pickled code
    assert saved["format"] == "normlab.torch-export"
    module = load_torch(out)
    x = inputs((1, 28, 28), batch=3, seed=9)
    with nl.no_grad(), torch.no_grad():
        diff = np.abs(module(torch.from_numpy(x)).numpy() - nl.load(lenet_checkpoint)(x)).max()
    assert diff <= 1e-6


def test_mlp_input_shape_is_read_off_the_first_linear(tmp_path, capsys) -> None:
    model, _ = network("bn-vs-plain:bn")
    nl.save(model, tmp_path / "mlp.safetensors")
    args = [
        "export",
        str(tmp_path / "mlp.safetensors"),
        "--onnx",
        str(tmp_path / "m.onnx"),
        "--json",
    ]
    assert main([*args, "--torch", str(tmp_path / "m.pt"), "--fold"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_shape"] == [784] and summary["notes"] == []
    assert summary["onnx"]["folded"] == summary["torch"]["folded"] == 2


def test_existing_output_is_refused_unless_force(tmp_path, lenet_checkpoint, capsys) -> None:
    out = tmp_path / "lenet.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", str(lenet_checkpoint), "--onnx", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; pass force=True (--force)" in err
    assert out.read_bytes() == b"keep me"
    assert main(["export", str(lenet_checkpoint), "--onnx", str(out), "--force"]) == 0
    assert onnx.load(str(out)).graph.node


def test_bad_input_exits_1_with_one_line_and_writes_nothing(
    tmp_path, lenet_checkpoint, capsys
) -> None:
    before = _files(tmp_path)
    cases = [
        (["--onnx", str(tmp_path / "missing" / "m.onnx")], "does not exist"),
        (
            ["--onnx", str(tmp_path / "m.onnx"), "--opset", "9"],
            "opset must be an int from 13 to 23",
        ),
        (
            ["--onnx", str(tmp_path / "m.onnx"), "--input-shape", "3,5"],
            "does not accept the probe input",
        ),
    ]
    for extra, message in cases:
        assert main(["export", str(lenet_checkpoint), *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert (
        main(["export", str(tmp_path / "none.safetensors"), "--onnx", str(tmp_path / "m.onnx")])
        == 1
    )
    assert "no such checkpoint file" in capsys.readouterr().err
    assert _files(tmp_path) == before


def test_unsupported_layer_is_named(tmp_path, capsys) -> None:
    model, _ = network("cnn-trio:deep+bn")
    path = tmp_path / "deep.safetensors"
    nl.save(model, path)  # PadBottomRight is not registered: the checkpoint holds no architecture
    assert main(["export", str(path), "--onnx", str(tmp_path / "m.onnx")]) == 1
    assert "holds no architecture" in capsys.readouterr().err
    nl.nn.register_module(type(model[1]))  # registered, it rebuilds; then the export names it
    nl.save(model, path)
    assert main(["export", str(path), "--onnx", str(tmp_path / "m.onnx")]) == 1
    assert "layer '1' (PadBottomRight) has no ONNX export" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_newer_checkpoint_format_is_refused(tmp_path, monkeypatch, capsys) -> None:
    model, _ = network("bn-vs-plain:bn")
    monkeypatch.setattr(checkpoint_module, "FORMAT_VERSION", checkpoint_module.FORMAT_VERSION + 1)
    nl.save(model, tmp_path / "new.safetensors")
    monkeypatch.undo()
    assert (
        main(["export", str(tmp_path / "new.safetensors"), "--onnx", str(tmp_path / "m.onnx")]) == 1
    )
    assert "format version" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_usage_errors_exit_2(tmp_path, lenet_checkpoint, capsys) -> None:
    assert main(["export", str(lenet_checkpoint)]) == 2
    assert "give --onnx OUT.onnx and/or --torch OUT.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(lenet_checkpoint), "--onnx", "m.onnx", "--input-shape", "a,b"])
    assert exit_info.value.code == 2
