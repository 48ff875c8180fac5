"""The doctor in training: fit(..., doctor=True) warns once per finding code and finds frozen layers that
changed during an epoch; a healthy run warns nothing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import normlab as nl
from doctor.models import Trained, build_mlp
from normlab import nn, optim
from normlab.doctor import DoctorCallback, DoctorWarning


def _fit(model: nn.Module, trained: Trained, epochs: int = 2, **kwargs) -> None:
    x, y = trained.x_train[:512], trained.y_train[:512]
    params = [p for p in model.parameters()]
    nl.fit(
        model,
        x,
        y,
        optimizer=optim.SGD(params, lr=0.01),
        epochs=epochs,
        batch_size=64,
        verbose=0,
        seed=0,
        **kwargs,
    )


def test_healthy_training_warns_nothing(trained: Trained) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DoctorWarning)
        _fit(build_mlp(), trained, doctor=True)


def test_keras_momentum_is_warned_once(trained: Trained) -> None:
    model = build_mlp()
    model[1].momentum = 0.99
    with pytest.warns(DoctorWarning, match="BN008") as caught:
        _fit(model, trained, epochs=3, doctor=True)
    assert [str(w.message)[:22] for w in caught if issubclass(w.category, DoctorWarning)] == [
        "normlab doctor: BN008 "
    ]


def test_small_training_batches(trained: Trained) -> None:
    doctor = DoctorCallback()
    model = build_mlp()
    x, y = trained.x_train[:64], trained.y_train[:64]
    with pytest.warns(DoctorWarning, match="BN005"):
        nl.fit(
            model,
            x,
            y,
            optimizer=optim.SGD(model.parameters(), lr=0.01),
            epochs=1,
            batch_size=8,
            verbose=0,
            seed=0,
            callbacks=[doctor],
        )
    assert {f.code for f in doctor.findings} == {"BN005"}
    assert doctor.findings[0].evidence["batch_size_needed"] == 32


def test_frozen_layer_that_still_learns(trained: Trained) -> None:
    """Frozen, then made trainable again by hand: the optimizer changes gamma and beta."""
    model = trained.fresh()
    nl.freeze_batch_norm(model)
    model[1].requires_grad_(True)
    doctor = DoctorCallback()
    with pytest.warns(DoctorWarning, match="BN011"):
        _fit(model, trained, epochs=1, callbacks=[doctor])
    changed = [f for f in doctor.findings if f.code == "BN011" and "changed" in f.message]
    assert [f.layer for f in changed] == ["1"]
    assert set(changed[0].evidence["max_abs_change"]) == {"weight", "bias"}
    assert {f.code for f in doctor.findings} == {"BN011"}


def test_frozen_done_right_is_silent(trained: Trained) -> None:
    model = nl.freeze_batch_norm(trained.fresh())
    before = {k: v for k, v in model.state_dict().items() if k.startswith(("1.", "4."))}
    doctor = DoctorCallback()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DoctorWarning)
        _fit(model, trained, epochs=1, callbacks=[doctor])
    assert doctor.findings == []
    for k, v in before.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
