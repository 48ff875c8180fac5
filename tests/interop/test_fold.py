"""fold_batch_norm: folded eval output equals the original's on every example/lab network, the original is
untouched, and each documented case (what folds, what is kept, what is refused, what warns) holds."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import normlab as nl
from interop.zoo import NETWORKS, inputs, network, randomize_norm_state
from normlab import nn
from normlab.interop import (
    FoldedSequential,
    InteropError,
    UnsupportedLayerError,
    fold_batch_norm_report,
)

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


def _eval_output(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with nl.no_grad():
        return model(x)


def _snapshot(model: nn.Module) -> tuple[dict, list]:
    state = {k: v.copy() for k, v in model.state_dict().items()}
    modes = [(name, m.training) for name, m in model.named_modules()]
    return state, modes


def _assert_same(before: tuple[dict, list], after: tuple[dict, list]) -> None:
    (state_a, modes_a), (state_b, modes_b) = before, after
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype
        assert np.array_equal(state_a[key], state_b[key]), key
    assert modes_a == modes_b


def _batch_norms(model: nn.Module) -> int:
    return sum(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) for m in model.modules())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_folded_equals_unfolded_and_original_untouched(name: str, dtype: type) -> None:
    model, shape = network(name, dtype)
    model.train()  # folding a model in training mode folds its eval behaviour and leaves its mode alone
    before = _snapshot(model)
    result = fold_batch_norm_report(model)
    _assert_same(before, _snapshot(model))
    folded = result.model
    assert isinstance(folded, FoldedSequential) and not folded.training
    assert len(result.folded) + _batch_norms(folded) == _batch_norms(model)
    assert len(result.kept) == _batch_norms(folded)
    x = inputs(shape, dtype=dtype)
    with nl.no_grad():
        y_folded = folded(x)
    y = _eval_output(model, x)
    assert y_folded.dtype == y.dtype
    assert np.max(np.abs(y_folded - y)) <= TOLERANCE[dtype] * max(1.0, np.max(np.abs(y)))


def test_which_networks_fold_completely() -> None:
    """Every batch norm of the lab's networks folds, except the input BN of cnn-trio's deep model (a
    padding layer stands between it and the conv) and none is left behind silently."""
    for name in NETWORKS:
        model, _ = network(name)
        result = fold_batch_norm_report(model)
        if name == "cnn-trio:deep+bn":
            assert _batch_norms(result.model) == 1 and "no Linear/Conv2d" in result.kept[0]
        else:
            assert _batch_norms(result.model) == 0, (name, result.kept)
    lenet = fold_batch_norm_report(network("lenet-bn")[0])
    assert len(lenet.folded) == 4 and len(lenet.model) == 16 - 4


def _chain(*layers: nn.Module, dtype=np.float64) -> nn.Sequential:
    return randomize_norm_state(nn.Sequential(*layers).to(dtype), seed=3)


@pytest.mark.parametrize(
    ("layers", "shape", "bn_left"),
    [
        # backward into a Linear without bias: a bias is added
        (lambda: [nn.Linear(6, 5, bias=False, rng=0), nn.BatchNorm1d(5)], (6,), 0),
        # backward into a Conv2d without bias, with stride and dilation
        (
            lambda: [
                nn.Conv2d(2, 3, 3, stride=2, dilation=2, bias=False, rng=0),
                nn.BatchNorm2d(3),
            ],
            (2, 9, 9),
            0,
        ),
        # forward into the following Linear
        (lambda: [nn.BatchNorm1d(6), nn.Linear(6, 4, rng=0)], (6,), 0),
        # forward through a Flatten, for 1-D, 2-D and 3-D batch norm
        (lambda: [nn.BatchNorm1d(3), nn.Flatten(), nn.Linear(12, 2, rng=0)], (3, 4), 0),
        (lambda: [nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 16, 2, rng=0)], (3, 4, 4), 0),
        (lambda: [nn.BatchNorm3d(2), nn.Flatten(), nn.Linear(2 * 8, 2, rng=0)], (2, 2, 2, 2), 0),
        # forward into a conv without padding
        (lambda: [nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3, stride=2, rng=0)], (2, 7, 7), 0),
        # a conv with padding: kept (exactness at the border)
        (lambda: [nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3, padding=1, rng=0)], (2, 5, 5), 1),
        # after an activation, nothing to fold into: kept
        (lambda: [nn.Linear(4, 4, rng=0), nn.ReLU(), nn.BatchNorm1d(4), nn.ReLU()], (4,), 1),
        # both sides: folds backward; then the second folds forward into the last Linear
        (
            lambda: [
                nn.Linear(4, 5, rng=0),
                nn.BatchNorm1d(5),
                nn.BatchNorm1d(5),
                nn.Linear(5, 2, rng=1),
            ],
            (4,),
            0,
        ),
        # nested Sequential: opened, and the pair across the boundary folds
        (
            lambda: [
                nn.Sequential(nn.Linear(4, 5, rng=0)),
                nn.Sequential(nn.BatchNorm1d(5), nn.Tanh()),
            ],
            (4,),
            0,
        ),
        # BN with affine=False, momentum=None, biased running_var: eval uses the stored values as they are
        (
            lambda: [
                nn.Linear(4, 5, rng=0),
                nn.BatchNorm1d(5, affine=False, momentum=None, running_var="biased"),
            ],
            (4,),
            0,
        ),
    ],
)
def test_documented_fold_cases_are_exact(layers, shape, bn_left) -> None:
    model = _chain(*layers())
    result = fold_batch_norm_report(model)
    assert _batch_norms(result.model) == bn_left
    x = inputs(shape, dtype=np.float64)
    with nl.no_grad():
        y_folded = result.model(x)
    assert np.max(np.abs(y_folded - _eval_output(model, x))) <= 1e-12


def test_conv_padding_case_is_explained() -> None:
    model = _chain(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3, padding=1, rng=0))
    (reason,) = fold_batch_norm_report(model).kept
    assert "'0' (BatchNorm2d)" in reason and "padding=(1, 1)" in reason


def test_folded_model_is_inference_only_and_saves() -> None:
    folded = nl.fold_batch_norm(_chain(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4)))
    with pytest.raises(InteropError, match="for inference only"):
        folded.train()
    assert not folded.training
    folded.eval()  # allowed


def test_folded_model_round_trips_through_a_checkpoint(tmp_path) -> None:
    model = _chain(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4), nn.ReLU(), dtype=np.float32)
    folded = nl.fold_batch_norm(model)
    nl.save(folded, tmp_path / "folded.safetensors")
    loaded = nl.load(tmp_path / "folded.safetensors")
    assert isinstance(loaded, FoldedSequential)
    x = inputs((3,))
    with nl.no_grad():
        assert np.array_equal(loaded(x), folded(x))


def test_track_running_stats_false_is_refused_and_nothing_changes() -> None:
    model = _chain(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4, track_running_stats=False))
    before = _snapshot(model)
    with pytest.raises(InteropError, match=r"'1' \(BatchNorm1d\) has track_running_stats=False"):
        nl.fold_batch_norm(model)
    _assert_same(before, _snapshot(model))


def test_unknown_normalization_layers_are_refused() -> None:
    class GhostBatchNorm1d(
        nn.BatchNorm1d
    ):  # stands for a variant added later (Ghost BN, Batch Renorm)
        pass

    class BatchRenorm1d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("running_mean", np.zeros(4, np.float32))

        def forward(self, x):
            return x

    for layer in (GhostBatchNorm1d(4), BatchRenorm1d()):
        model = nn.Sequential(nn.Linear(3, 4, rng=0), layer)
        with pytest.raises(
            UnsupportedLayerError, match=rf"'1' \({type(layer).__name__}\).*does not know"
        ):
            nl.fold_batch_norm(model)


def test_never_updated_running_stats_warn_and_fold_as_they_evaluate() -> None:
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4))  # running stats 0 / 1, count 0
    with pytest.warns(RuntimeWarning, match=r"'1' \(BatchNorm1d\) has never updated"):
        folded = nl.fold_batch_norm(model)
    x = inputs((3,))
    with nl.no_grad():
        y = folded(x)
    assert np.max(np.abs(y - _eval_output(model, x))) <= 1e-6


def test_updated_running_stats_do_not_warn() -> None:
    model = _chain(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nl.fold_batch_norm(model)


def test_not_a_module_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="expected a normlab Module, got dict"):
        nl.fold_batch_norm({})


def test_interop_imports_without_torch_or_onnx() -> None:
    """torch and onnx are optional: imported only inside the functions that need them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('torch', 'onnx', 'onnxruntime'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "import normlab as nl, normlab.interop, normlab.cli\n"
        "from normlab import nn\n"
        "m = nn.Sequential(nn.Linear(2, 3, rng=0), nn.BatchNorm1d(3))\n"
        "m[1].num_batches_tracked[...] = 1\n"
        "print(len(nl.fold_batch_norm(m)))\n"
        "try:\n"
        "    nl.interop.to_torch(m)\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "1",
        "normlab.interop needs PyTorch for this: pip install 'normlab[torch]'",
    ]
