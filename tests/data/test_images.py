"""ImageFolder: listing, decoding (checked against Pillow and against known pixel values), the stratified split,
streaming through DataLoader (workers, cache, seeded augmentation, resume) and every kind of bad input."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from normlab.data import (
    Compose,
    DataError,
    DataLoader,
    ImageFolder,
    RandomCrop,
    RandomHorizontalFlip,
)
from normlab.data.shapes import make_shapes


def _save(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return path


def _solid(color: tuple[int, int, int], h: int = 6, w: int = 6) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (h, w, 3)).copy()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three classes (names not in creation order), PNG/BMP/WebP/JPEG, mixed sizes, a nested folder."""
    root = tmp_path / "pics"
    _save(root / "zebra" / "a.png", _solid((10, 20, 30), 6, 9))
    _save(root / "zebra" / "b.bmp", _solid((40, 50, 60), 12, 4))
    _save(root / "apple" / "x.webp", _solid((200, 0, 0), 8, 8), lossless=True)
    _save(root / "apple" / "nested" / "y.png", _solid((0, 200, 0), 3, 3))
    _save(root / "mango" / "m.jpg", _solid((128, 128, 128), 16, 16), quality=95)
    _save(root / "mango" / "n.PNG", _solid((1, 2, 3), 5, 5))
    return root


def test_classes_are_sorted_subfolders_and_images_float32_nchw(folder: Path) -> None:
    data = ImageFolder(folder, size=(4, 5))
    assert data.class_names == ["apple", "mango", "zebra"]
    assert [p.relative_to(folder).as_posix() for p in data.files] == [
        "apple/x.webp",
        "apple/nested/y.png",
        "mango/m.jpg",
        "mango/n.PNG",
        "zebra/a.png",
        "zebra/b.bmp",
    ]
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1, 2, 2])
    x, y = data[np.arange(len(data))]
    assert x.shape == (6, 3, 4, 5) and x.dtype == np.float32 and y.dtype == np.int64
    # solid colors survive decoding and resizing from every format and size (JPEG within its loss)
    expected = np.array(
        [(200, 0, 0), (0, 200, 0), (128, 128, 128), (1, 2, 3), (10, 20, 30), (40, 50, 60)]
    )
    np.testing.assert_allclose(x.mean(axis=(2, 3)) * 255, expected, atol=2)
    np.testing.assert_array_equal(x.max(axis=(2, 3)), x.min(axis=(2, 3)))
    one, label = data[4]
    assert one.shape == (3, 4, 5) and label == 2
    np.testing.assert_array_equal(one, x[4])


def test_pixels_equal_pillow_bilinear_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (23, 17, 3), dtype=np.uint8)
    path = _save(tmp_path / "r" / "c" / "a.png", pixels)
    x, _ = ImageFolder(tmp_path / "r", size=(10, 7))[np.array([0])]
    anchor = np.asarray(Image.open(path).resize((7, 10), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(np.rint(x[0] * 255).astype(np.uint8), anchor.transpose(2, 0, 1))


def test_shrinking_is_antialiased(tmp_path: Path) -> None:
    # a one-pixel checkerboard shrunk 4x: an antialiased filter averages it to mid-gray everywhere, a point
    # sampler (nearest) returns pure black or white
    board = ((np.indices((16, 16)).sum(axis=0) % 2) * 255).astype(np.uint8)
    _save(tmp_path / "r" / "c" / "board.png", board)
    smooth, _ = ImageFolder(tmp_path / "r", size=(4, 4), color="grayscale")[0]
    assert np.all(np.abs(smooth * 255 - 127.5) < 2)
    sharp, _ = ImageFolder(tmp_path / "r", size=(4, 4), color="grayscale", interpolation="nearest")[
        0
    ]
    assert set(np.unique(sharp * 255).tolist()) <= {0.0, 255.0}


def test_grayscale_file_in_an_rgb_folder_and_rgb_file_in_a_grayscale_one(tmp_path: Path) -> None:
    gray = np.full((4, 4), 77, dtype=np.uint8)
    _save(tmp_path / "r" / "c" / "gray.png", gray)
    _save(tmp_path / "r" / "c" / "red.png", _solid((255, 0, 0), 4, 4))
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = (9, 99, 199), 0  # fully transparent: the color values are kept
    _save(tmp_path / "r" / "c" / "rgba.png", rgba)
    sixteen = np.full((4, 4), 257 * 100, dtype=np.uint16)
    _save(tmp_path / "r" / "c" / "wide.png", sixteen)
    rgb, _ = ImageFolder(tmp_path / "r", size=(4, 4))[np.arange(4)]
    np.testing.assert_array_equal(
        rgb[0] * 255, np.full((3, 4, 4), 77.0)
    )  # gray: three equal channels
    np.testing.assert_array_equal(rgb[1, :, 0, 0] * 255, [255, 0, 0])
    np.testing.assert_array_equal(rgb[2, :, 0, 0] * 255, [9, 99, 199])
    np.testing.assert_array_equal(rgb[3] * 255, np.full((3, 4, 4), 100.0))  # 16-bit scaled by 1/257
    luma, _ = ImageFolder(tmp_path / "r", size=(4, 4), color="grayscale")[np.array([1])]
    assert luma.shape == (1, 1, 4, 4)
    assert round(float(luma[0, 0, 0, 0]) * 255) == 76  # 0.299 * 255


def test_split_is_stratified_seeded_and_disjoint(tmp_path: Path) -> None:
    root = make_shapes(tmp_path / "shapes", per_class=10, size=8, shapes=("circle", "square"))
    for extra in range(5):  # an unbalanced class: 10 circles, 15 squares
        _save(root / "square" / f"extra{extra}.png", _solid((1, 1, 1)))
    data = ImageFolder(root, size=(8, 8))
    train, val = data.split(0.2, seed=3)
    np.testing.assert_array_equal(
        np.bincount(val.labels), [2, 3]
    )  # round(0.2 * 10), round(0.2 * 15)
    assert set(train.files).isdisjoint(val.files)
    assert sorted(train.files + val.files) == sorted(data.files)
    again_train, again_val = data.split(0.2, seed=3)
    assert again_val.files == val.files and again_train.files == train.files
    assert data.split(0.2, seed=4)[1].files != val.files
    with pytest.raises(ValueError, match="val_fraction"):
        data.split(1.0)
    with pytest.raises(ValueError, match="selects no image"):
        data.split(0.01)


def _epoch(loader: DataLoader) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(xb.copy(), yb.copy()) for xb, yb in loader]


def test_the_loader_streams_every_image_once_with_or_without_workers_and_cache(
    tmp_path: Path,
) -> None:
    root = make_shapes(tmp_path / "shapes", per_class=9, size=12)
    plain = _epoch(DataLoader(ImageFolder(root, size=(10, 10)), batch_size=8, seed=5))
    assert sum(len(yb) for _, yb in plain) == 36
    # every image exactly once: compare against decoding them all at once, matched by pixels
    every, labels = ImageFolder(root, size=(10, 10)).arrays()
    seen = np.concatenate([xb for xb, _ in plain])
    order = [int(np.flatnonzero((every == img).all(axis=(1, 2, 3)))[0]) for img in seen]
    assert sorted(order) == list(range(36))
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in plain]), labels[order])

    with ImageFolder(root, size=(10, 10), workers=2, cache=True) as pooled:
        loader = DataLoader(pooled, batch_size=8, seed=5)
        first = _epoch(loader)
        for (xa, ya), (xb, yb) in zip(plain, first, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
        for path in pooled.files:  # the cache holds every image now: the files are not read again
            path.unlink()
        second = _epoch(loader)
    assert sum(len(yb) for _, yb in second) == 36
    assert not np.array_equal(first[0][1], second[0][1]) or not np.array_equal(
        first[0][0], second[0][0]
    )


def test_augmentation_is_seeded_by_the_loader_and_resumes_exactly(tmp_path: Path) -> None:
    root = make_shapes(tmp_path / "shapes", per_class=6, size=12)
    augment = Compose([RandomCrop(12, padding=3), RandomHorizontalFlip()])

    def loader(seed: int) -> DataLoader:
        return DataLoader(
            ImageFolder(root, size=(12, 12), transform=augment, workers=2), batch_size=5, seed=seed
        )

    a, b, c = _epoch(loader(1)), _epoch(loader(1)), _epoch(loader(2))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))
    # the augmentation differs between epochs of one loader, and with the order fixed (shuffle=False) too
    fixed = DataLoader(
        ImageFolder(root, size=(12, 12), transform=augment), batch_size=24, shuffle=False
    )
    e1, e2 = _epoch(fixed), _epoch(fixed)
    np.testing.assert_array_equal(e1[0][1], e2[0][1])
    assert not np.array_equal(e1[0][0], e2[0][0])

    # interrupted after two batches, resumed in a new loader: the same augmented batches as without the break
    first = loader(1)
    it = iter(first)
    next(it), next(it)
    state = first.state_dict()
    resumed = loader(1)
    resumed.load_state_dict(state)
    for (xa, ya), (xr, yr) in zip(a[2:], _epoch(resumed), strict=True):
        np.testing.assert_array_equal(xa, xr)
        np.testing.assert_array_equal(ya, yr)


def test_the_loader_rejects_labels_next_to_a_dataset(folder: Path) -> None:
    with pytest.raises(ValueError, match="y must be None"):
        DataLoader(ImageFolder(folder, size=(4, 4)), np.zeros(6), batch_size=2)


# ------------------------------------------------------------------------------------------- bad input
def test_missing_root_not_a_folder_and_no_class_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}: no such folder"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        ImageFolder(tmp_path / "file.png")
    (tmp_path / "flat").mkdir()
    _save(tmp_path / "flat" / "a.png", _solid((1, 2, 3)))
    with pytest.raises(DataError, match="no class subfolders"):
        ImageFolder(tmp_path / "flat")


def test_empty_class_folder_names_it(folder: Path) -> None:
    (folder / "empty").mkdir()
    (folder / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty: class folder 'empty' holds no usable image"):
        ImageFolder(folder)


def test_non_image_files_and_hidden_folders_are_skipped_and_counted(folder: Path) -> None:
    (folder / "apple" / "notes.txt").write_text("hello")
    (folder / "apple" / ".DS_Store").write_bytes(b"\0\0")
    (folder / "apple" / "._x.webp").write_bytes(b"\0\5\0\0 macOS metadata")
    (folder / ".hidden").mkdir()
    data = ImageFolder(folder, size=(4, 4))
    assert len(data) == 6 and data.class_names == ["apple", "mango", "zebra"]
    assert sorted((p.name, why) for p, why in data.skipped) == [
        (".DS_Store", "hidden file"),
        ("._x.webp", "hidden file"),
        ("notes.txt", "not an image file extension"),
    ]


def test_corrupt_image_raises_naming_the_file_or_is_skipped(folder: Path) -> None:
    bad = folder / "mango" / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG at all" * 10)
    with pytest.raises(DataError, match=rf"{bad}: not a readable image"):
        ImageFolder(folder)
    data = ImageFolder(folder, size=(4, 4), on_error="skip")
    assert len(data) == 6 and [p for p, _ in data.skipped] == [bad]


def _png_bytes(pixels: np.ndarray) -> bytes:
    path_bytes = Image.fromarray(pixels)
    import io

    buffer = io.BytesIO()
    path_bytes.save(buffer, format="PNG")
    return buffer.getvalue()


def test_truncated_image_fails_at_decode_naming_the_file(folder: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _png_bytes(noise)
    bad = folder / "zebra" / "truncated.png"
    bad.write_bytes(data[: len(data) // 2])  # the header is intact, half the pixel data is gone
    images = ImageFolder(folder, size=(4, 4))  # listing reads headers only
    index = images.files.index(bad)
    with pytest.raises(DataError, match=rf"{bad}: cannot decode the image"):
        images[np.array([index])]
    # raised in a worker thread: the same error
    pooled = ImageFolder(folder, size=(4, 4), workers=2)
    with pooled, pytest.raises(DataError, match=rf"{bad}: cannot decode the image"):
        pooled[np.arange(len(pooled))]
    with pytest.raises(DataError, match=rf"{bad}: cannot decode"):
        ImageFolder(folder, size=(4, 4), check="decode")
    checked = ImageFolder(folder, size=(4, 4), check="decode", on_error="skip", cache=True)
    assert len(checked) == 6 and [p for p, _ in checked.skipped] == [bad]
    x, y = checked[np.arange(6)]
    assert x.shape == (6, 3, 4, 4) and y.tolist() == [0, 0, 1, 1, 2, 2]


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grayscale pixels, with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [10_000, 100_000])  # 1.1x and 112x Image.MAX_IMAGE_PIXELS
def test_decompression_bomb_is_refused_before_decoding(folder: Path, side: int) -> None:
    bomb = folder / "apple" / "bomb.png"
    bomb.write_bytes(_bomb_png(side, side))
    assert bomb.stat().st_size < 200
    with pytest.raises(DataError, match=rf"{bomb}: .*pixels.*MAX_IMAGE_PIXELS"):
        ImageFolder(folder)
    data = ImageFolder(folder, size=(4, 4), on_error="skip")
    assert len(data) == 6 and [p for p, _ in data.skipped] == [bomb]


def test_symlink_loops_are_skipped_not_followed_forever(folder: Path) -> None:
    os.symlink(
        folder / "apple", folder / "apple" / "nested" / "again"
    )  # a folder linking to an ancestor
    data = ImageFolder(folder, size=(4, 4))
    assert len(data) == 6  # nothing listed twice
    assert [reason for _, reason in data.skipped] == [
        "symlink loop: this folder was already listed"
    ]
    loop = folder / "zebra" / "self.png"
    os.symlink(loop, loop)  # a file link pointing at itself
    with pytest.raises(DataError, match=rf"{loop}: cannot be opened"):
        ImageFolder(folder)
    assert len(ImageFolder(folder, on_error="skip")) == 6


def test_bad_arguments_are_named(folder: Path) -> None:
    with pytest.raises(ValueError, match="size must be"):
        ImageFolder(folder, size=(0, 4))
    with pytest.raises(ValueError, match="color must be"):
        ImageFolder(folder, color="cmyk")
    with pytest.raises(ValueError, match="interpolation"):
        ImageFolder(folder, interpolation="cubic")
    with pytest.raises(IndexError, match="out of range"):
        ImageFolder(folder, size=(4, 4))[np.array([6])]
