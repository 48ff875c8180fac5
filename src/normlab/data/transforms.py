"""Array transforms for inputs and labels: scale to [0, 1], standardize, flatten, one-hot."""

from __future__ import annotations

import numpy as np


def scale_01(images: np.ndarray) -> np.ndarray:
    """uint8 pixels (any shape) -> float32 in [0, 1], ``images / 255``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"scale_01: expected uint8 pixels (0..255), got dtype {images.dtype}")
    return images.astype(np.float32) / np.float32(255.0)


def flatten(images: np.ndarray) -> np.ndarray:
    """(N, *rest) -> (N, prod(rest)): one row per sample, e.g. (N, 28, 28) -> (N, 784).  A view when possible."""
    images = np.asarray(images)
    if images.ndim < 1:
        raise ValueError("flatten: expected an array of shape (N, ...), got a scalar")
    return images.reshape(images.shape[0], int(np.prod(images.shape[1:], dtype=np.int64)))


def one_hot(
    labels: np.ndarray, num_classes: int, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """Integer labels (N,) in ``0..num_classes-1`` -> (N, num_classes) of ``dtype`` with a single 1 per row."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise TypeError(
            f"one_hot: expected 1-D integer labels, got dtype {labels.dtype} shape {labels.shape}"
        )
    if num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be at least 1, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"one_hot: labels must lie in 0..{num_classes - 1}, got values from {labels.min()} to {labels.max()}"
        )
    out = np.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


class Standardizer:
    """Per-feature standardization ``(x - mean) / std``, with mean and std fitted on training data only.

    Features are everything after the first (sample) axis: for x of shape (N, *F), ``mean_`` and ``std_`` have
    shape F.  ``std`` is the population standard deviation (ddof=0, NumPy's default); a feature that is constant
    in the training data has std 0 and is divided by 1 instead, so it maps to 0 rather than to NaN.
    Statistics are computed in float64; the result is float64 for float64 input, float32 for anything else.

    Examples:
        >>> import numpy as np
        >>> s = Standardizer().fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
        >>> s.transform(np.array([[2.0, 5.0], [5.0, 6.0]])).tolist()
        [[0.0, 0.0], [3.0, 1.0]]
    """

    def __init__(self) -> None:
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> Standardizer:
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"Standardizer.fit: expected at least one sample, got shape {x.shape}")
        x64 = x.astype(np.float64)
        self.mean_ = x64.mean(axis=0)
        std = x64.std(axis=0)
        self.std_ = np.where(std == 0, 1.0, std)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        if self.mean_ is None or self.std_ is None:
            raise RuntimeError("Standardizer.transform: call fit(x_train) first")
        x = np.asarray(x)
        if x.shape[1:] != self.mean_.shape:
            raise ValueError(
                f"Standardizer.transform: fitted on features of shape {self.mean_.shape}, "
                f"got samples of shape {x.shape[1:]}"
            )
        out_dtype = np.float64 if x.dtype == np.float64 else np.float32
        return ((x.astype(np.float64) - self.mean_) / self.std_).astype(out_dtype)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)
