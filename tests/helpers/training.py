"""Small data sets and models shared by the training and checkpoint tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from normlab import nn


def blobs(
    n: int = 240, features: int = 6, classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around random class centers: linearly separable enough for a quick fit."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 2.5, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(size=(n, features))
    return x.astype(np.float32), y.astype(np.int64)


def bn_mlp(
    features: int = 6, classes: int = 3, seed: int = 0, dropout: float = 0.2, dtype: Any = None
) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear, every random part seeded."""
    gen = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Linear(features, 16, bias=False, rng=gen, dtype=dtype),
        nn.BatchNorm1d(16, dtype=dtype),
        nn.ReLU(),
        nn.Dropout(dropout, seed=gen),
        nn.Linear(16, classes, rng=gen, dtype=dtype),
    )


def small_cnn(seed: int = 0) -> nn.Sequential:
    """Conv -> BN2d -> ReLU -> MaxPool -> Flatten -> Dropout -> Linear, for (N, 1, 8, 8) input."""
    gen = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False, rng=gen),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.25, seed=gen),
        nn.Linear(4 * 4 * 4, 3, rng=gen),
    )


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    """Bit-identical parameters and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


def assert_same_optimizer_state(a: Any, b: Any) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert set(sa["state"]) == set(sb["state"])
    for i in sa["state"]:
        assert set(sa["state"][i]) == set(sb["state"][i])
        for k, v in sa["state"][i].items():
            np.testing.assert_array_equal(v, sb["state"][i][k], err_msg=f"state {i} {k}")
