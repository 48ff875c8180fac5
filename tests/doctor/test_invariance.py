"""The doctor changes nothing: parameters, gradients, buffers, modes, flags, dropout generators and NumPy's
global random state are identical before and after, also when a check raises half-way."""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from doctor.models import Trained
from normlab import nn
from normlab.doctor import core, data


def _model_with_dropout(trained: Trained) -> nn.Sequential:
    model = trained.fresh()
    model.append(nn.Dropout(0.3, seed=7))  # owns a generator the doctor must not advance
    model[0].weight.grad = np.full_like(model[0].weight.data, 0.5)
    return model


def _everything(model: nn.Module) -> dict:
    return {
        "state": {k: v.copy() for k, v in model.state_dict().items()},
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "flags": [
            (n, getattr(m, "frozen", None), getattr(m, "momentum", None))
            for n, m in model.named_modules()
        ],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.copy() for p in model.parameters()],
        "generators": [
            m.generator.bit_generator.state for _, m in nn.layers.dropout_generators(model)
        ],
        "global_rng": np.random.get_state()[1].copy(),  # noqa: NPY002
        "methods": [sorted(vars(m)) for m in model.modules()],
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        np.testing.assert_array_equal(after["state"][k], v, err_msg=k)
    for key in ("modes", "flags", "requires_grad", "generators", "methods"):
        assert after[key] == before[key], key
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or np.array_equal(a, b)
    np.testing.assert_array_equal(after["global_rng"], before["global_rng"])


@pytest.mark.parametrize("mode", ["eval", "train", "frozen"])
def test_doctor_with_data_changes_nothing(trained: Trained, mode: str) -> None:
    model = _model_with_dropout(trained)
    if mode == "train":
        model.train()
    elif mode == "frozen":
        nl.freeze_batch_norm(model).train()
    np.random.seed(3)  # noqa: NPY002
    before = _everything(model)
    report = nl.doctor(model, trained.x_test[:300], labels=trained.y_test[:300])
    _assert_same(before, _everything(model))
    assert report.data_checked and report.labels_checked
    assert ("BN004" in report.codes()) == (mode == "train")


def _mutate_then_fail(model: nn.Module) -> list:
    """A broken check: it changes everything it can reach, then raises."""
    model.train()
    for p in model.parameters():
        p.data += 1.0
        p.requires_grad = False
    model[1].running_mean = model[1].running_mean + 3.0
    model[1].momentum = 0.5
    model[-1].generator.random(10)
    np.random.random(5)  # noqa: NPY002
    object.__setattr__(model[1], "forward", lambda x: x)
    raise RuntimeError("injected failure")


def test_a_static_check_that_raises_changes_nothing(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model_with_dropout(trained)
    checks = core.STATIC_CHECKS
    monkeypatch.setattr(core, "STATIC_CHECKS", (*checks[:3], _mutate_then_fail, *checks[3:]))
    before = _everything(model)
    with pytest.raises(RuntimeError, match="injected failure"):
        nl.doctor(model, trained.x_test[:100])
    _assert_same(before, _everything(model))
    # and the restored model still works as before
    monkeypatch.setattr(core, "STATIC_CHECKS", checks)
    assert (
        nl.doctor(model, trained.x_test[:300], labels=trained.y_test[:300]).codes("warning")
        == set()
    )


def test_a_data_check_that_raises_midway_changes_nothing(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The eval pass has run (on a copy); the stale-statistics check then mutates the real model and fails."""
    model = _model_with_dropout(trained).train()

    def broken(self: data.DataExamination, skip: set) -> list:
        return _mutate_then_fail(self.model)

    monkeypatch.setattr(data.DataExamination, "stale_statistics", broken)
    before = _everything(model)
    with pytest.raises(RuntimeError, match="injected failure"):
        nl.doctor(model, trained.x_test[:100], labels=trained.y_test[:100])
    _assert_same(before, _everything(model))


def test_bad_data_changes_nothing(trained: Trained) -> None:
    model = _model_with_dropout(trained).train()
    before = _everything(model)
    with pytest.raises(nl.doctor.DoctorError):
        nl.doctor(model, np.ones((10, 5), np.float32))
    _assert_same(before, _everything(model))
