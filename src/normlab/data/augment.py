"""Seeded augmentation of image batches (N, C, H, W) float32 in [0, 1], and per-channel normalization.

Every transform is called as ``t(x, rng)`` on a whole batch and returns a new array (the input is not changed);
random ones draw each image's parameters from ``rng``, a ``np.random.Generator``, so the same generator state gives
the same output.  :class:`~normlab.data.DataLoader` hands an :class:`~normlab.data.ImageFolder` one generator per
batch derived from the loader's seed.  :class:`Compose` chains them, and also takes the plain one-argument array
functions of :mod:`normlab.data.transforms` (``flatten``, ...)::

    augment = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(),
                       Normalize(*compute_mean_std(train_folder))])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _batch(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{where}: expected images (N, C, H, W), got shape {x.shape}")
    return x


def _pair(size: int | Sequence[int], where: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in pair):
        raise ValueError(f"{where}: size must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


class Transform:
    """Base class: ``random`` says whether the output depends on ``rng``."""

    random = True

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class Compose(Transform):
    """Apply ``transforms`` in order; each gets the same generator, so the chain is seeded as a whole."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: {t!r} is not callable")
        self.random = any(getattr(t, "random", False) for t in self.transforms)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            x = t(x, rng) if isinstance(t, Transform) else t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomCrop(Transform):
    """Pad each side by ``padding`` (zeros, or ``mode="reflect"``), then crop ``size`` at a random position
    (uniform over all positions, independently per image) -- the CIFAR recipe ``RandomCrop(32, padding=4)``."""

    def __init__(self, size: int | Sequence[int], padding: int = 0, mode: str = "constant") -> None:
        self.size = _pair(size, "RandomCrop")
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be an int >= 0, got {padding!r}")
        if mode not in ("constant", "reflect"):
            raise ValueError(f"RandomCrop: mode must be 'constant' or 'reflect', got {mode!r}")
        self.padding, self.mode = padding, mode

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _batch(x, "RandomCrop")
        p = self.padding
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode=self.mode) if p else x
        h, w = self.size
        H, W = padded.shape[2:]
        if h > H or w > W:
            raise ValueError(
                f"RandomCrop: crop {self.size} is larger than the padded image ({H}, {W})"
            )
        tops = rng.integers(0, H - h + 1, size=len(x))
        lefts = rng.integers(0, W - w + 1, size=len(x))
        return (
            np.stack(
                [
                    img[:, t : t + h, s : s + w]
                    for img, t, s in zip(padded, tops, lefts, strict=True)
                ]
            )
            if len(x)
            else np.empty((0, x.shape[1], h, w), x.dtype)
        )

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, padding={self.padding}, mode={self.mode!r})"


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _batch(x, "RandomHorizontalFlip")
        flip = rng.random(len(x)) < self.p
        return np.where(flip[:, None, None, None], x[..., ::-1], x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop(Transform):
    """Crop a random area fraction ``scale`` and aspect ratio ``ratio`` (log-uniform) of each image and resize it to
    ``size`` (bilinear, Pillow's float resize per channel) -- the Inception / torchvision recipe: up to 10 draws
    for a crop that fits, else the largest centred crop whose ratio lies in ``ratio``."""

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size = _pair(size, "RandomResizedCrop")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(
                f"RandomResizedCrop: scale must satisfy 0 < lo <= hi <= 1, got {scale}"
            )
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop: ratio must satisfy 0 < lo <= hi, got {ratio}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def _box(self, H: int, W: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        area = H * W
        log_lo, log_hi = np.log(self.ratio[0]), np.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = float(np.exp(rng.uniform(log_lo, log_hi)))
            w = round(np.sqrt(target * aspect))
            h = round(np.sqrt(target / aspect))
            if 0 < w <= W and 0 < h <= H:
                top = int(rng.integers(0, H - h + 1))
                left = int(rng.integers(0, W - w + 1))
                return top, left, h, w
        aspect = W / H
        if aspect < self.ratio[0]:
            w, h = W, round(W / self.ratio[0])
        elif aspect > self.ratio[1]:
            h, w = H, round(H * self.ratio[1])
        else:
            h, w = H, W
        return (H - h) // 2, (W - w) // 2, h, w

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image

        x = _batch(x, "RandomResizedCrop")
        out_h, out_w = self.size
        out = np.empty((*x.shape[:2], out_h, out_w), dtype=np.float32)
        for n, img in enumerate(x):
            top, left, h, w = self._box(*img.shape[1:], rng)
            for c, plane in enumerate(img[:, top : top + h, left : left + w]):
                crop = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
                out[n, c] = np.asarray(crop.resize((out_w, out_h), Image.Resampling.BILINEAR))
        return out

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class ColorJitter(Transform):
    """Random brightness, then contrast, per image; results clipped to [0, 1].

    Brightness multiplies by ``b ~ U(1 - brightness, 1 + brightness)``; contrast blends with the image's mean
    gray level ``m`` (luma 0.299 R + 0.587 G + 0.114 B for RGB): ``(x - m) * c + m``, ``c ~ U(1 - contrast,
    1 + contrast)``.  The order is fixed (torchvision shuffles it).
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0) -> None:
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ColorJitter: {name} must be in [0, 1], got {value!r}")
        self.brightness, self.contrast = float(brightness), float(contrast)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _batch(x, "ColorJitter")
        n = len(x)
        b = rng.uniform(1 - self.brightness, 1 + self.brightness, n).astype(x.dtype)
        c = rng.uniform(1 - self.contrast, 1 + self.contrast, n).astype(x.dtype)
        out = np.clip(x * b[:, None, None, None], 0.0, 1.0)
        if x.shape[1] == 3:
            weights = np.array([0.299, 0.587, 0.114], dtype=x.dtype)
            gray = np.einsum("nchw,c->nhw", out, weights)
        else:
            gray = out.mean(axis=1)
        m = gray.mean(axis=(1, 2))[:, None, None, None]
        return np.clip((out - m) * c[:, None, None, None] + m, 0.0, 1.0).astype(x.dtype)

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast})"


class Normalize(Transform):
    """``(x - mean[c]) / std[c]`` per channel (deterministic); ``mean``, ``std`` e.g. from
    :func:`compute_mean_std` on the training images."""

    random = False

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape or not np.all(self.std > 0):
            raise ValueError(
                f"Normalize: mean and std must have one value per channel and std > 0, got "
                f"mean {self.mean.tolist()} std {self.std.tolist()}"
            )

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = _batch(x, "Normalize")
        if x.shape[1] != len(self.mean):
            raise ValueError(
                f"Normalize: fitted for {len(self.mean)} channels, got images with {x.shape[1]}"
            )
        mean = self.mean.astype(x.dtype)[None, :, None, None]
        std = self.std.astype(x.dtype)[None, :, None, None]
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def compute_mean_std(data: Any, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of images, over every pixel of every image, in float64.

    ``data`` is an array (N, C, H, W) or an :class:`~normlab.data.ImageFolder` (decoded batch by batch, without
    its transform).  Returns two float64 arrays of shape (C,).
    """
    if hasattr(data, "decode") and hasattr(data, "files"):
        n, channels = len(data), data.channels
        batches = (
            data.decode(np.arange(i, min(i + batch_size, n))).astype(np.float64) / 255.0
            for i in range(0, n, batch_size)
        )
    else:
        array = _batch(data, "compute_mean_std")
        n, channels = len(array), array.shape[1]
        batches = (array[i : i + batch_size].astype(np.float64) for i in range(0, n, batch_size))
    if n == 0:
        raise ValueError("compute_mean_std: no images")
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for xb in batches:
        total += xb.sum(axis=(0, 2, 3))
        total_sq += np.square(xb).sum(axis=(0, 2, 3))
        count += xb.shape[0] * xb.shape[2] * xb.shape[3]
    mean = total / count
    # E[x^2] - E[x]^2 in float64 over [0, 1] data: no catastrophic cancellation at these magnitudes
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean, std
