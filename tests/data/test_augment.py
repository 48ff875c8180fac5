"""Augmentation transforms: identities at their neutral settings, the geometry of each random draw, seeding, and
per-channel normalization from compute_mean_std."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from normlab.data import (
    ColorJitter,
    Compose,
    ImageFolder,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    compute_mean_std,
    flatten,
)
from normlab.data.shapes import make_shapes


def _images(n: int = 6, c: int = 3, h: int = 8, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


ALL = [
    RandomCrop((8, 10), padding=2),
    RandomCrop(6, mode="reflect", padding=1),
    RandomHorizontalFlip(),
    RandomResizedCrop((5, 7)),
    ColorJitter(brightness=0.4, contrast=0.4),
]


@pytest.mark.parametrize("transform", ALL, ids=repr)
def test_same_generator_state_same_output_and_input_untouched(transform) -> None:
    x = _images()
    before = x.copy()
    a, b = transform(x, _rng(7)), transform(x, _rng(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, transform(x, _rng(8)))
    np.testing.assert_array_equal(x, before)
    assert a.dtype == np.float32


def test_random_crop_returns_windows_of_the_padded_image() -> None:
    x = _images(n=20)
    out = RandomCrop((8, 10), padding=2)(x, _rng(1))
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for img, crop in zip(padded, out, strict=True):
        found = [
            (t, s)
            for t in range(5)
            for s in range(5)
            if np.array_equal(img[:, t : t + 8, s : s + 10], crop)
        ]
        assert found, "the crop is not a window of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 5  # positions vary from image to image
    np.testing.assert_array_equal(
        RandomCrop((8, 10))(x, _rng(1)), x
    )  # no padding, full size: identity
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(20)(x, _rng(0))


def test_flip_mirrors_exactly_the_chosen_images() -> None:
    x = _images(n=200, h=2, w=3)
    np.testing.assert_array_equal(RandomHorizontalFlip(p=1.0)(x, _rng()), x[..., ::-1])
    np.testing.assert_array_equal(RandomHorizontalFlip(p=0.0)(x, _rng()), x)
    out = RandomHorizontalFlip(p=0.5)(x, _rng(3))
    flipped = np.array([np.array_equal(o, i[..., ::-1]) for o, i in zip(out, x, strict=True)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, x, strict=True)])
    assert np.all(flipped ^ kept) and 70 < flipped.sum() < 130


def test_random_resized_crop_full_area_is_a_resize_and_keeps_constants() -> None:
    x = _images(n=3, h=8, w=8)
    whole = RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, _rng())
    np.testing.assert_allclose(
        whole, x, atol=1e-6
    )  # the crop is the whole image, resized to its own size
    flat = np.full((4, 3, 9, 13), 0.25, dtype=np.float32)
    out = RandomResizedCrop((5, 6))(flat, _rng(2))
    assert out.shape == (4, 3, 5, 6)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_color_jitter_neutral_settings_and_bounds() -> None:
    x = _images()
    np.testing.assert_allclose(ColorJitter()(x, _rng()), x, atol=1e-7)
    gray = np.full((5, 3, 4, 4), 0.3, dtype=np.float32)
    out = ColorJitter(contrast=0.9)(
        gray, _rng(1)
    )  # contrast around the image's own mean: a constant stays
    np.testing.assert_allclose(out, gray, atol=1e-6)
    bright = ColorJitter(brightness=0.5)(gray, _rng(4))
    factors = bright[:, 0, 0, 0] / 0.3
    assert np.all((factors >= 0.5 - 1e-6) & (factors <= 1.5 + 1e-6)) and np.ptp(factors) > 0.05
    assert (ColorJitter(0.9, 0.9)(x, _rng(5)) <= 1).all()


def test_normalize_with_computed_statistics_gives_zero_mean_unit_std(tmp_path: Path) -> None:
    x = _images(n=50) * np.array([1.0, 0.5, 0.2], dtype=np.float32)[None, :, None, None]
    mean, std = compute_mean_std(x, batch_size=7)  # in uneven batches
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, x.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-8)
    z = Normalize(mean, std)(x)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)
    with pytest.raises(ValueError, match="fitted for 3 channels"):
        Normalize(mean, std)(x[:, :1])
    with pytest.raises(ValueError, match="std > 0"):
        Normalize([0.0], [0.0])

    root = make_shapes(tmp_path / "shapes", per_class=5, size=8)
    folder = ImageFolder(root, size=(8, 8))
    every, _ = folder.arrays()
    folder_mean, folder_std = compute_mean_std(folder, batch_size=3)
    np.testing.assert_allclose(
        folder_mean, every.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-6
    )
    np.testing.assert_allclose(folder_std, every.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-5)


def test_compose_chains_random_transforms_and_plain_array_functions() -> None:
    x = _images()
    chain = Compose([RandomHorizontalFlip(p=1.0), Normalize([0.5] * 3, [0.25] * 3), flatten])
    out = chain(x, _rng())
    np.testing.assert_allclose(out, ((x[..., ::-1] - 0.5) / 0.25).reshape(6, -1), rtol=1e-6)
    assert chain.random and not Compose([Normalize([0.0], [1.0])]).random
    with pytest.raises(TypeError, match="not callable"):
        Compose([3])
    with pytest.raises(ValueError, match=r"expected images \(N, C, H, W\)"):
        RandomHorizontalFlip()(np.zeros((3, 4)), _rng())
