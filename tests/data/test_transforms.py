"""scale_01, Standardizer, flatten, one_hot."""

from __future__ import annotations

import numpy as np
import pytest

from normlab.data import Standardizer, flatten, one_hot, scale_01


def test_scale_01() -> None:
    out = scale_01(np.array([[0, 51, 255]], dtype=np.uint8))
    assert out.dtype == np.float32 and out.shape == (1, 3)
    np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]], rtol=1e-7)
    with pytest.raises(TypeError, match="expected uint8"):
        scale_01(np.array([0.5]))


def test_standardizer_uses_training_statistics_only() -> None:
    x_train = np.array([[1.0, 10.0], [3.0, 10.0]])  # mean (2, 10); std (1, 0 -> 1)
    x_test = np.array([[5.0, 12.0], [2.0, 10.0]])
    s = Standardizer().fit(x_train)
    np.testing.assert_array_equal(s.mean_, [2.0, 10.0])
    np.testing.assert_array_equal(s.std_, [1.0, 1.0])
    np.testing.assert_array_equal(s.transform(x_test), [[3.0, 2.0], [0.0, 0.0]])
    np.testing.assert_array_equal(s.transform(x_train), [[-1.0, 0.0], [1.0, 0.0]])


def test_standardizer_matches_the_formula_per_feature_and_keeps_dtypes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(50, 2, 3))
    z = Standardizer().fit_transform(x)
    assert z.dtype == np.float64 and z.shape == x.shape
    np.testing.assert_allclose(z, (x - x.mean(axis=0)) / x.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-12)
    assert Standardizer().fit_transform(x.astype(np.float32)).dtype == np.float32
    assert Standardizer().fit_transform(np.arange(6, dtype=np.uint8).reshape(3, 2)).dtype == (
        np.float32
    )


def test_standardizer_errors() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        Standardizer().transform(np.zeros((2, 3)))
    s = Standardizer().fit(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"fitted on features of shape \(3,\)"):
        s.transform(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="at least one sample"):
        Standardizer().fit(np.zeros((0, 3)))


def test_flatten() -> None:
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    f = flatten(x)
    assert f.shape == (2, 784)
    np.testing.assert_array_equal(f[1], x[1].ravel())
    assert flatten(np.zeros((0, 28, 28))).shape == (0, 784)
    assert flatten(np.zeros(5)).shape == (5, 1)


def test_one_hot() -> None:
    out = one_hot(np.array([2, 0, 1, 2]), 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert one_hot(np.array([1], dtype=np.uint8), 2, dtype=np.int64).tolist() == [[0, 1]]
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2, got values from 0 to 3"):
        one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        one_hot(np.array([-1]), 3)
    with pytest.raises(TypeError, match="integer labels"):
        one_hot(np.array([0.0, 1.0]), 3)
