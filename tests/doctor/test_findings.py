"""Each check fires with exactly its code on a model with the fault, and nothing at warning or above fires on
correctly trained models (info findings, redundant biases and folding opportunities, are allowed there)."""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from doctor.models import Trained, build_mlp
from normlab import nn
from normlab.doctor import DoctorError
from normlab.lab.experiments.eval_pitfalls import (
    class_sorted_batches,
    in_batches,
    load_parameters_only,
    train_mode_accuracy,
)


def warn(report: nl.doctor.Report) -> set[str]:
    return report.codes("warning")


# --------------------------------------------------------------------------------------- healthy models
def test_healthy_trained_mlp_has_no_finding(trained: Trained) -> None:
    report = nl.doctor(trained.fresh(), trained.x_test, labels=trained.y_test)
    assert warn(report) == set(), report
    assert report.data_checked and report.labels_checked
    # the lab's MLP keeps a Linear bias before each batch norm: info only
    assert report.codes() == {"BN006", "BN014"}


def test_healthy_after_recalibration(trained: Trained) -> None:
    model = trained.fresh()
    nl.recalibrate_batch_norm(model, [trained.x_train[i : i + 64] for i in range(0, 3200, 64)])
    assert warn(nl.doctor(model, trained.x_test, labels=trained.y_test)) == set()


def test_healthy_on_training_data(trained: Trained) -> None:
    x, y = trained.x_train[:1000], trained.y_train[:1000]
    assert warn(nl.doctor(trained.fresh(), x, labels=y)) == set()


# --------------------------------------------------------------------------------------- eval-pitfalls
def test_lost_running_statistics(trained: Trained) -> None:
    """eval-pitfalls' reload that kept only the parameters: running statistics back at 0 / 1."""
    model = build_mlp(seed=1)
    load_parameters_only(model, trained.state)
    model.eval()
    for report in (nl.doctor(model), nl.doctor(model, trained.x_test, labels=trained.y_test)):
        assert warn(report) == {"BN001"}, report
        assert {f.layer for f in report.findings if f.code == "BN001"} == {"1", "4"}


def test_untrained_model_is_not_reported_as_never_updated() -> None:
    assert "BN001" not in nl.doctor(build_mlp().eval()).codes()


def test_leaked_running_statistics(trained: Trained) -> None:
    """eval-pitfalls' training-mode pass over class-sorted batches overwrote the running statistics."""
    model = trained.fresh()
    train_mode_accuracy(model, class_sorted_batches(trained.x_test, trained.y_test, 50))
    model.eval()
    x, y = trained.x_train[:1000], trained.y_train[:1000]
    report = nl.doctor(model, x, labels=y)
    assert warn(report) == {"BN003"}, report
    stale = [f for f in report.findings if f.code == "BN003"]
    assert {f.layer for f in stale} == {"1", "4"}
    e = stale[0].evidence
    assert e["mean_kl"] > e["kl_threshold"] and e["z_var"] > e["z_threshold"]
    # recalibrating recovers at least one accuracy point: an error
    assert e["accuracy_recalibrated"] - e["accuracy"] >= 0.01
    assert {f.severity for f in stale} == {"error"}
    assert warn(nl.doctor(model, x)) == {"BN003"}  # without labels too


@pytest.mark.parametrize("batch_size", [1, 8])
def test_training_mode_small_batches(trained: Trained, batch_size: int) -> None:
    """eval-pitfalls' training mode with test batches of 1 and 8: wrong mode and too few values."""
    model = trained.fresh().train()
    n = 100 if batch_size == 1 else 400
    x, y = trained.x_test[:n], trained.y_test[:n]
    report = nl.doctor(model, in_batches(x, y, batch_size))
    assert warn(report) == {"BN004", "BN005"}, report
    mode = next(f for f in report.findings if f.code == "BN004")
    assert mode.severity == "error"
    if batch_size == 1:
        assert "more than 1 value per channel" in mode.evidence["training_mode_error"]
    else:
        assert mode.evidence["accuracy_eval_mode"] - mode.evidence["accuracy_training_mode"] >= 0.05
    if batch_size == 1:
        assert "not judged: 100 samples" in report.notes[0]
    few = next(f for f in report.findings if f.code == "BN005")
    assert few.evidence["values_per_channel"] == batch_size
    assert few.evidence["batch_size_needed"] == 32


def test_training_mode_class_sorted_batches(trained: Trained) -> None:
    model = trained.fresh().train()
    report = nl.doctor(model, class_sorted_batches(trained.x_test, trained.y_test, 100))
    assert warn(report) == {"BN004"}, report
    mode = report.findings[0]
    assert mode.severity == "error"
    assert mode.evidence["accuracy_training_mode"] < mode.evidence["accuracy_eval_mode"] - 0.3


def test_training_mode_without_data_and_one_large_batch(trained: Trained) -> None:
    """The control row (the whole test set as one batch) costs little, but the mode is still wrong."""
    model = trained.fresh().train()
    assert warn(nl.doctor(model)) == {"BN004"}
    report = nl.doctor(model, [(trained.x_test, trained.y_test)])
    assert warn(report) == {"BN004"}
    assert abs(report.findings[0].evidence["cost"]) < 0.01


def test_running_var_holds_standard_deviations(trained: Trained) -> None:
    model = trained.fresh()
    model[1].running_var = np.sqrt(model[1].running_var)
    report = nl.doctor(model, trained.x_test, labels=trained.y_test)
    assert warn(report) == {"BN010"}, (
        report
    )  # layer 4's input is off because of layer 1: not judged
    assert [f.layer for f in report.findings if f.code == "BN010"] == ["1"]


# --------------------------------------------------------------------------------------- static checks
def _set(layer: nn.Module, name: str, index: int, value: float) -> None:
    array = getattr(layer, name)
    array = array.data if hasattr(array, "data") else array
    array[index] = value


def _bad_var(value: float):
    def fault(model: nn.Sequential) -> None:
        model[4].running_var[3] = value

    return fault


def _keras_momentum(model: nn.Sequential) -> None:
    model[1].momentum = 0.99


def _frozen_then_trainable(model: nn.Sequential) -> None:
    nl.freeze_batch_norm(model)
    model[4].requires_grad_(True)


def _frozen_then_training(model: nn.Sequential) -> None:
    nl.freeze_batch_norm(model)
    model[1].training = True


def _dead_gamma(model: nn.Sequential) -> None:
    model[1].weight.data[5] = 1e-5


def _exploding_gamma(model: nn.Sequential) -> None:
    model[4].weight.data[0] = 500.0


def _nan_beta(model: nn.Sequential) -> None:
    model[4].bias.data[0] = np.nan


STATIC_FAULTS = {
    "BN002-negative": (_bad_var(-0.5), "BN002", "error"),
    "BN002-zero": (_bad_var(0.0), "BN002", "error"),
    "BN002-nan": (_bad_var(np.nan), "BN002", "error"),
    "BN008-keras-momentum": (_keras_momentum, "BN008", "warning"),
    "BN011-frozen-trainable": (_frozen_then_trainable, "BN011", "error"),
    "BN011-frozen-training": (_frozen_then_training, "BN011", "error"),
    "BN012-dead-gamma": (_dead_gamma, "BN012", "warning"),
    "BN013-exploding-gamma": (_exploding_gamma, "BN013", "warning"),
    "BN013-nan-beta": (_nan_beta, "BN013", "error"),
}


@pytest.mark.parametrize("fault", list(STATIC_FAULTS), ids=list(STATIC_FAULTS))
def test_static_check_fires(trained: Trained, fault: str) -> None:
    apply, code, severity = STATIC_FAULTS[fault]
    model = trained.fresh()
    apply(model)
    report = nl.doctor(model)
    assert warn(report) == {code}, report
    assert {f.severity for f in report.findings if f.code == code} == {severity}
    assert all(f.layer in ("1", "4") and f.fix for f in report.findings if f.code == code)


def test_bn011_weights_frozen_by_hand_in_training_mode(trained: Trained) -> None:
    """requires_grad_(False) on batch norm while training: gamma/beta stay, the statistics still move."""
    model = trained.fresh()
    model[1].requires_grad_(False)
    assert warn(nl.doctor(model)) == set()  # in eval mode nothing moves
    model.train()
    report = nl.doctor(model)
    assert warn(report) == {"BN004", "BN011"}
    assert [f.layer for f in report.findings if f.code == "BN011"] == ["1"]


def test_frozen_batch_norm_done_right_is_silent(trained: Trained) -> None:
    model = nl.freeze_batch_norm(trained.fresh()).train()  # frozen layers stay in eval mode
    assert warn(nl.doctor(model)) == set()


def _info(*layers: nn.Module) -> set[str]:
    return nl.doctor(nn.Sequential(*layers).eval()).codes()


def test_bn006_bias_before_batch_norm() -> None:
    assert _info(nn.Linear(4, 6, rng=0), nn.BatchNorm1d(6)) == {"BN006", "BN014"}
    assert _info(nn.Linear(4, 6, bias=False, rng=0), nn.BatchNorm1d(6)) == {"BN014"}
    conv = nn.Conv2d(1, 3, 3, rng=0)
    assert _info(conv, nn.BatchNorm2d(3)) == {"BN006", "BN014"}
    assert _info(nn.Linear(4, 6, rng=0), nn.ReLU(), nn.BatchNorm1d(6)) == set()


def test_bn007_affine_before_renormalization() -> None:
    first = nn.Linear(4, 6, bias=False, rng=0)
    assert _info(first, nn.BatchNorm1d(6), nn.BatchNorm1d(6)) == {"BN007", "BN014"}
    assert _info(first, nn.BatchNorm1d(6), nn.Dropout(0.1, seed=0), nn.BatchNorm1d(6)) == {
        "BN007",
        "BN014",
    }
    assert _info(first, nn.BatchNorm1d(6, affine=False), nn.BatchNorm1d(6)) == {"BN014"}
    assert _info(first, nn.BatchNorm1d(6), nn.ReLU(), nn.BatchNorm1d(6)) == {"BN014"}


def test_bn009_keras_eps_with_pytorch_variance() -> None:
    assert _info(nn.ReLU(), nn.BatchNorm1d(6, eps=1e-3)) == {"BN009"}
    assert _info(nn.ReLU(), nn.BatchNorm1d(6, eps=1e-3, running_var="biased")) == set()
    assert _info(nn.ReLU(), nn.BatchNorm1d(6)) == set()


def test_bn005_without_running_statistics_in_eval_mode() -> None:
    """track_running_stats=False normalizes with batch statistics even in eval mode."""
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    x = rng.normal(size=(64, 4)).astype(np.float32)
    assert warn(nl.doctor(model, [x[i : i + 4] for i in range(0, 64, 4)])) == {"BN005"}
    assert warn(nl.doctor(model, [x])) == set()
    conv = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    images = rng.normal(size=(4, 2, 2, 2)).astype(np.float32)  # 2 x 4 spatial = 8 values
    found = nl.doctor(conv, [images[:2], images[2:]]).findings[0]
    assert found.code == "BN005" and found.evidence["batch_size_needed"] == 8


# --------------------------------------------------------------------------------------- bad input
def test_model_without_normalization_layers() -> None:
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU())
    report = nl.doctor(model, np.ones((8, 4), np.float32))
    assert report.findings == [] and report.normalization_layers == []
    assert "no normalization layers" in report.notes[0]


def test_data_that_does_not_fit_the_model(trained: Trained) -> None:
    model = trained.fresh()
    with pytest.raises(DoctorError, match=r"batch 0 of shape \(64, 20\) does not fit the model"):
        nl.doctor(model, np.ones((100, 20), np.float32))
    with pytest.raises(DoctorError, match="labels must be 64 integer class indices"):
        nl.doctor(model, trained.x_test[:64], labels=trained.y_test[:10])
    with pytest.raises(DoctorError, match="must hold floats"):
        nl.doctor(model, [np.ones((4, 784), np.int64)])
    with pytest.raises(DoctorError, match="no batches"):
        nl.doctor(model, [])
    with pytest.raises(DoctorError, match="expected a normlab Module"):
        nl.doctor("model.safetensors")
