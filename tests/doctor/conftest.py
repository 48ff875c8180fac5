"""Fixtures of the doctor's tests: the trained BN MLP, once per session."""

from __future__ import annotations

import pytest

from doctor.models import Trained, train_mlp


@pytest.fixture(scope="session")
def trained() -> Trained:
    return train_mlp()
