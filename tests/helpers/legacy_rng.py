"""NumPy's legacy global random state, for tests that check normlab never draws from it or depends on it."""

from __future__ import annotations

import numpy as np


def seed_global(seed: int) -> None:
    np.random.seed(seed)  # noqa: NPY002 (the legacy global state is what is under test)


def global_state() -> np.ndarray:
    return np.random.get_state()[1].copy()  # noqa: NPY002 (the legacy global state is what is under test)
