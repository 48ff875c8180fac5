"""Images from a folder: one subfolder per class, decoded by Pillow on demand, as float32 NCHW in [0, 1].

Layout (as Keras ``image_dataset_from_directory`` and torchvision ``ImageFolder``)::

    root/
      cat/  a.jpg  b.png  more/c.webp      # subfolders of a class folder belong to that class
      dog/  d.jpeg ...

Class names are the subfolder names, sorted; class ``i`` is ``class_names[i]``.  Files are read by Pillow
(JPEG, PNG, BMP, WebP; the extension decides what is listed) and decoded only when a batch needs them, optionally
by a pool of threads (Pillow releases the GIL while decoding and resizing) and optionally kept, decoded and
resized, in a uint8 cache.

How pixels are made:

* **Color.** ``color="rgb"``: Pillow's ``convert("RGB")``; a grayscale file becomes three equal channels, a
  palette file its palette colors, and an alpha channel is dropped (the color values are kept as they are, not
  composited onto a background).  ``color="grayscale"``: ``convert("L")``, Pillow's ITU-R 601-2 luma
  ``L = 0.299 R + 0.587 G + 0.114 B``.  16-bit grayscale is scaled to 8 bits (divided by 257).
* **Size.** Every image is resized to ``size = (H, W)`` whatever its own size or aspect ratio (no cropping), with
  ``interpolation="bilinear"`` by default: Pillow's bilinear filter widens its support by the shrink factor when
  downsizing, so it averages every source pixel (antialiased), as torchvision's ``Resize(antialias=True)`` does.
  Keras's ``image_dataset_from_directory`` default (bilinear, ``antialias=False``) samples only 2x2 neighbours,
  which aliases fine detail when shrinking by more than 2x; here the results differ from Keras's accordingly.
  ``"nearest"``, ``"box"``, ``"bicubic"``, ``"lanczos"`` are available.
* **Scale.** uint8 0..255 -> float32 ``/ 255``; arrays are (N, C, H, W), C = 3 (rgb) or 1 (grayscale).

Bad input (each message names the file or folder):

* a missing ``root``, a ``root`` that is not a folder, no class subfolders, a class folder with no image files:
  ``DataError``;
* files whose extension is not an image extension (``notes.txt``, ``.DS_Store``): skipped, always, and listed in
  ``skipped`` (path, reason); so are hidden files (``._a.jpg``, macOS metadata); hidden folders are not read;
* a symlink loop (a folder linking to itself or an ancestor): the repeated folder is skipped and listed in
  ``skipped``; a link that cannot be resolved is treated as a bad image file;
* a file that is not an image Pillow can read, a truncated or corrupt one, one whose header claims more pixels
  than ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb guard, checked before any pixel is decoded):
  ``DataError`` with ``on_error="raise"`` (default); with ``on_error="skip"`` the file is left out and listed in
  ``skipped``.  The header of every file is read when the folder is listed; the pixels only when decoded, so a
  file truncated after a valid header is found then (and always raises) unless ``check="decode"`` decoded
  every file up front.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from normlab.data.errors import DataError
from normlab.data.idx import PathLike

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# what Pillow may report for those files (MPO: the JPEG variant some cameras write)
_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "WEBP"}
COLORS = {"rgb": 3, "grayscale": 1}
INTERPOLATIONS = ("bilinear", "nearest", "box", "bicubic", "lanczos")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow is a dependency
        raise ImportError("normlab.data images need Pillow: pip install pillow") from e
    return Image


def check_pixel_count(width: int, height: int, name: str) -> None:
    """``DataError`` if a ``width`` x ``height`` image exceeds ``PIL.Image.MAX_IMAGE_PIXELS`` (None: no limit)."""
    limit = _pil().MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise DataError(
            f"{name}: the image claims {width} x {height} = {width * height} pixels, more than "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit} (a decompression bomb, or raise that limit if you trust the file)"
        )


def _bomb_message(path: PathLike, error: Exception) -> str:
    return (
        f"{path}: refused by Pillow's decompression-bomb guard ({error}); the limit is "
        f"PIL.Image.MAX_IMAGE_PIXELS = {_pil().MAX_IMAGE_PIXELS} pixels"
    )


def read_header(path: Path) -> tuple[str, int, int]:
    """Format, width and height from the file's header, without decoding pixels; ``DataError`` naming the file."""
    image_module = _pil()
    try:
        with warnings.catch_warnings():
            # between 1x and 2x the limit Pillow only warns; check_pixel_count below raises instead
            warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
            with image_module.open(path) as im:
                fmt, (width, height) = str(im.format), im.size
    except image_module.DecompressionBombError as e:
        raise DataError(_bomb_message(path, e)) from None
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    if fmt not in _FORMATS:
        raise DataError(
            f"{path}: a {fmt} image; expected one of {sorted(_FORMATS)} (by its extension)"
        )
    check_pixel_count(width, height, str(path))
    return fmt, width, height


def decode_image(
    path: PathLike, size: tuple[int, int], color: str = "rgb", interpolation: str = "bilinear"
) -> np.ndarray:
    """The image at ``path`` as uint8 (C, H, W), converted to ``color`` and resized to ``size = (H, W)``.

    Raises ``DataError`` naming the file if it cannot be read, is truncated or corrupt, or claims more pixels
    than ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    image_module = _pil()
    height, width = size
    try:
        with image_module.open(path) as im:
            check_pixel_count(*im.size, str(path))
            im = _convert(im, color)
            if im.size != (width, height):
                im = im.resize((width, height), _resample(interpolation))
            pixels = np.asarray(im, dtype=np.uint8)
    except image_module.DecompressionBombError as e:
        raise DataError(_bomb_message(path, e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from None
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _convert(im: Any, color: str) -> Any:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit) grayscale: Pillow's convert("L") would clip at 255; scale 0..65535 to 0..255
        wide = np.asarray(im, dtype=np.float64)
        im = _pil().fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    if color == "grayscale":
        return im if im.mode == "L" else im.convert("L")
    return im if im.mode == "RGB" else im.convert("RGB")


def _resample(interpolation: str) -> Any:
    return getattr(_pil().Resampling, interpolation.upper())


def _check_size(size: Any) -> tuple[int, int]:
    ok = (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0 for s in size)
    )
    if not ok:
        raise ValueError(
            f"ImageFolder: size must be (height, width) of positive ints, got {size!r}"
        )
    return int(size[0]), int(size[1])


class ImageFolder:
    """The images under ``root`` (one subfolder per class) as a dataset of float32 (C, H, W) images in [0, 1].

    Args:
        root: the folder of class subfolders.
        size: ``(H, W)`` every image is resized to.
        color: ``"rgb"`` (C = 3) or ``"grayscale"`` (C = 1).
        interpolation: the resize filter (see the module docstring for why bilinear is the default).
        transform: applied to each decoded batch (N, C, H, W): an :mod:`normlab.data.augment` transform
            ``t(x, rng)``, a :class:`~normlab.data.augment.Compose`, or a plain function ``f(x)``.
        workers: threads that decode a batch (0: decode in the calling thread).
        cache: keep every decoded, resized image (uint8, ``N*C*H*W`` bytes) after its first use.
        on_error: ``"raise"`` or ``"skip"`` bad image files (see the module docstring).
        check: ``"header"`` reads each file's header when listing; ``"decode"`` decodes every file once (and
            fills the cache if ``cache``), so a truncated file is found now rather than mid-epoch.
        seed: seeds the generator that plain indexing (``folder[i]``) passes to random transforms; a
            :class:`~normlab.data.DataLoader` passes its own per-batch generators instead.

    Attributes: ``class_names`` (sorted), ``files`` (paths), ``labels`` (int64, N), ``skipped`` (a list of
    ``(path, reason)`` for everything left out).

    Indexing: ``folder[i]`` is ``(x (C, H, W), label)``; ``folder[indices]`` (an int array, list or slice) is
    ``(x (n, C, H, W), labels (n,))`` -- the protocol :class:`~normlab.data.DataLoader` iterates over:

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from normlab.data import DataLoader, ImageFolder
        >>> root = Path(tempfile.mkdtemp())
        >>> for label, color in (("cats", (200, 80, 40)), ("dogs", (40, 80, 200))):
        ...     (root / label).mkdir()
        ...     for i in range(3):
        ...         Image.new("RGB", (48, 40), color).save(root / label / f"{i}.png")
        >>> folder = ImageFolder(root, size=(16, 16))
        >>> folder.class_names, len(folder), folder.labels.tolist()
        (['cats', 'dogs'], 6, [0, 0, 0, 1, 1, 1])
        >>> x, label = folder[4]
        >>> x.shape, x.dtype.name, label
        ((3, 16, 16), 'float32', 1)
        >>> xb, yb = next(iter(DataLoader(folder, batch_size=4, seed=0)))
        >>> xb.shape, yb.shape
        ((4, 3, 16, 16), (4,))
        >>> import shutil; shutil.rmtree(root)
    """

    def __init__(
        self,
        root: PathLike,
        size: tuple[int, int] = (32, 32),
        color: str = "rgb",
        *,
        interpolation: str = "bilinear",
        transform: Callable[..., np.ndarray] | None = None,
        workers: int = 0,
        cache: bool = False,
        on_error: str = "raise",
        check: str = "header",
        seed: int | None = 0,
    ) -> None:
        self.size = _check_size(size)
        if color not in COLORS:
            raise ValueError(f"ImageFolder: color must be one of {sorted(COLORS)}, got {color!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"ImageFolder: interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
            )
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"ImageFolder: workers must be an int >= 0, got {workers!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"ImageFolder: on_error must be 'raise' or 'skip', got {on_error!r}")
        if check not in ("header", "decode"):
            raise ValueError(f"ImageFolder: check must be 'header' or 'decode', got {check!r}")
        self.root = Path(root)
        self.color, self.interpolation = color, interpolation
        self.transform, self.workers, self.cache = transform, workers, bool(cache)
        self.on_error = on_error
        self._rng = np.random.default_rng(seed)
        self.skipped: list[tuple[Path, str]] = []
        self.class_names, self.files, self.labels = self._scan()
        self._pool: ThreadPoolExecutor | None = None
        self._cached: np.ndarray | None = (
            None  # (N, C, H, W) uint8, filled on first use of each image
        )
        self._filled: np.ndarray | None = None  # (N,) bool
        if check == "decode":
            self._decode_all_once()

    # ------------------------------------------------------------------------------ listing
    @property
    def channels(self) -> int:
        return COLORS[self.color]

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _scan(self) -> tuple[list[str], list[Path], np.ndarray]:
        root = self.root
        if not root.exists():
            raise DataError(f"{root}: no such folder (expected one subfolder of images per class)")
        if not root.is_dir():
            raise DataError(f"{root}: not a folder (expected one subfolder of images per class)")
        classes = sorted(
            entry.name
            for entry in root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".")
        )
        if not classes:
            raise DataError(
                f"{root}: no class subfolders; expected root/<class name>/<images>, e.g. {root}/cat/1.jpg"
            )
        files: list[Path] = []
        labels: list[int] = []
        for index, name in enumerate(classes):
            found = self._list_class(root / name)
            if not found:
                raise DataError(
                    f"{root / name}: class folder {name!r} holds no usable image "
                    f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
                )
            files.extend(found)
            labels.extend([index] * len(found))
        return classes, files, np.asarray(labels, dtype=np.int64)

    def _list_class(self, folder: Path) -> list[Path]:
        """The image files under ``folder`` (recursively, following links, each real folder once), sorted."""
        found: list[Path] = []
        seen: set[str] = set()
        for here, dirs, names in os.walk(folder, followlinks=True):
            real = os.path.realpath(here)
            if real in seen:
                self.skipped.append((Path(here), "symlink loop: this folder was already listed"))
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(here) / name
                if name.startswith(
                    "."
                ):  # e.g. macOS "._a.jpg" metadata next to a.jpg: not an image
                    self.skipped.append((path, "hidden file"))
                    continue
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    self.skipped.append((path, "not an image file extension"))
                    continue
                try:
                    if not path.is_file():  # a dangling link or a link loop
                        raise DataError(f"{path}: cannot be opened (a broken or looping link?)")
                    read_header(path)
                except DataError as e:
                    if self.on_error == "raise":
                        raise
                    self.skipped.append((path, str(e)))
                    continue
                found.append(path)
        return found

    # ------------------------------------------------------------------------------ decoding
    def __len__(self) -> int:
        return len(self.files)

    def _decode_one(self, i: int) -> np.ndarray:
        if self._filled is not None and self._filled[i]:
            return self._cached[i]  # type: ignore[index]
        pixels = decode_image(self.files[i], self.size, self.color, self.interpolation)
        if self._cached is not None:
            self._cached[i] = pixels
            self._filled[i] = True  # type: ignore[index]
        return pixels

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (n, C, H, W) of the images at ``indices``, decoded (by the worker pool if any) or cached."""
        out = np.empty((len(indices), *self.sample_shape), dtype=np.uint8)
        if self.cache and self._cached is None:
            # allocated here, before any worker runs (np.zeros: the OS commits pages as they are written)
            self._cached = np.zeros((len(self), *self.sample_shape), dtype=np.uint8)
            self._filled = np.zeros(len(self), dtype=bool)
        if self.workers and len(indices) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="normlab-decode")
            for k, pixels in enumerate(self._pool.map(self._decode_one, indices.tolist())):
                out[k] = pixels
        else:
            for k, i in enumerate(indices.tolist()):
                out[k] = self._decode_one(i)
        return out

    def _indices(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(len(self))[index]
        idx = np.asarray(index)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise TypeError(
                f"ImageFolder: index with an int, a slice or a 1-D int array, got {type(index).__name__} "
                f"{getattr(idx, 'dtype', '')}"
            )
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(
                f"ImageFolder: index out of range for {len(self)} images: {idx.min()}..{idx.max()}"
            )
        return idx.astype(np.int64) % max(len(self), 1)

    def load_batch(self, indices: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(x (n, C, H, W) float32 in [0, 1] then transformed, labels (n,) int64)``; random transforms draw from
        ``rng`` (the :class:`~normlab.data.DataLoader` passes one per batch, derived from its seed)."""
        idx = self._indices(indices)
        x = self.decode(idx).astype(np.float32) / np.float32(255.0)
        if self.transform is not None:
            x = apply_transform(self.transform, x, rng)
        return x, self.labels[idx]

    def __getitem__(self, index: Any) -> tuple[np.ndarray, Any]:
        if isinstance(index, int | np.integer) and not isinstance(index, bool):
            x, y = self.load_batch(np.array([index]), self._rng)
            return x[0], int(y[0])
        return self.load_batch(index, self._rng)

    def arrays(self, transform: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Every image decoded at once, ``(x (N, C, H, W) float32, labels (N,))``; without the transform unless
        ``transform``.  For small folders (validation/test parts); training streams through a DataLoader."""
        idx = np.arange(len(self))
        if transform:
            return self.load_batch(idx, self._rng)
        return self.decode(idx).astype(np.float32) / np.float32(255.0), self.labels.copy()

    def _decode_all_once(self) -> None:
        keep = []
        if self.cache:
            self.decode(np.arange(0))  # allocates the cache
        for i, path in enumerate(self.files):
            try:
                self._decode_one(i)
            except DataError as e:
                if self.on_error == "raise":
                    raise
                self.skipped.append((path, str(e)))
                continue
            keep.append(i)
        if len(keep) < len(self.files):
            self._keep(np.asarray(keep, dtype=np.int64))
            for index, name in enumerate(self.class_names):
                if not np.any(self.labels == index):
                    raise DataError(
                        f"{self.root / name}: class folder {name!r} holds no usable image"
                    )

    def _keep(self, idx: np.ndarray) -> None:
        """Restrict this folder to the images at ``idx`` (keeping their cached pixels)."""
        self.files = [self.files[i] for i in idx]
        self.labels = self.labels[idx]
        if self._cached is not None and self._filled is not None:
            self._cached, self._filled = self._cached[idx], self._filled[idx]

    # ------------------------------------------------------------------------------ splitting
    def split(
        self, val_fraction: float, seed: int = 0, *, val_transform: Any = None
    ) -> tuple[ImageFolder, ImageFolder]:
        """``(train, val)``: a seeded, stratified split.  Each class sends ``round(val_fraction * n_class)`` of
        its images, chosen by ``np.random.default_rng(seed)``, to ``val``; both keep their images in file order.
        ``train`` keeps this folder's transform, ``val`` gets ``val_transform`` (default none)."""
        if not isinstance(val_fraction, float | int) or not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"ImageFolder.split: val_fraction must be in (0, 1), got {val_fraction!r}"
            )
        rng = np.random.default_rng(seed)
        is_val = np.zeros(len(self), dtype=bool)
        for index, name in enumerate(self.class_names):
            members = np.flatnonzero(self.labels == index)
            n_val = round(val_fraction * len(members))
            if n_val >= len(members):
                raise ValueError(
                    f"ImageFolder.split: val_fraction={val_fraction} leaves no training image of class "
                    f"{name!r} ({len(members)} images)"
                )
            is_val[rng.permutation(members)[:n_val]] = True
        if not is_val.any():
            raise ValueError(
                f"ImageFolder.split: val_fraction={val_fraction} selects no image "
                f"(classes have {np.bincount(self.labels).min()}+ images)"
            )
        return self.subset(np.flatnonzero(~is_val)), self.subset(
            np.flatnonzero(is_val), transform=val_transform
        )

    def subset(self, indices: np.ndarray, transform: Any = "same") -> ImageFolder:
        """A new ImageFolder over the images at ``indices`` (same classes, own cache and worker pool)."""
        part = copy.copy(self)
        part._pool = None
        part._cached = part._filled = None
        part._rng = np.random.default_rng(self._rng.integers(2**63))
        part.skipped = list(self.skipped)
        idx = self._indices(np.asarray(indices, dtype=np.int64))
        part.files = [self.files[i] for i in idx]
        part.labels = self.labels[idx]
        if self._cached is not None and self._filled is not None:
            part._cached, part._filled = self._cached[idx], self._filled[idx]
        if transform != "same":
            part.transform = transform
        return part

    def close(self) -> None:
        """Stop the worker threads (they also stop when the program exits)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> ImageFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ImageFolder({str(self.root)!r}, {len(self)} images, {self.num_classes} classes, "
            f"size={self.size}, color={self.color!r}, skipped={len(self.skipped)})"
        )


def apply_transform(transform: Any, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``transform(x, rng)`` for a normlab augmentation (it has ``random``), else ``transform(x)``."""
    if hasattr(transform, "random"):
        return transform(x, rng)
    return transform(x)
