"""Image loading rows: one epoch of decoding + resizing a folder of JPEGs into float32 NCHW batches.

The folder: 512 generated 64x64 JPEGs (:func:`normlab.data.shapes.make_shapes`, 4 classes), resized to 32x32
RGB, batches of 64 in file order, no cache.  One call = one epoch = 512 images, so images/s = 512 / time.

* ``normlab``: ``DataLoader(ImageFolder(..., workers=W), shuffle=False)`` for W = 0 and 2 (threads);
* ``torch``: ``torch.utils.data.DataLoader`` over a map-style dataset doing the same Pillow decode + bilinear
  resize per image, ``num_workers=W`` (processes, kept alive between epochs);
* ``naive``: a plain loop, ``Image.open -> convert -> resize -> np.asarray`` per image, stacked per batch.

``check`` verifies that the three produce identical pixels for the whole epoch.
Run alone for images/s: ``python -m benchmarks.image_cases``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.registry import Case

N_PER_CLASS, SOURCE, SIZE, BATCH = 128, 64, 32, 64
_FOLDER: Path | None = None


def _folder() -> Path:
    global _FOLDER
    if _FOLDER is None:
        from normlab.data.shapes import make_shapes

        _FOLDER = make_shapes(
            Path(tempfile.mkdtemp(prefix="normlab-bench-images-")), N_PER_CLASS, SOURCE
        )
    return _FOLDER


def _naive_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)


class _TorchImages:
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        return _naive_image(self.files[i])


def _setup(workers: int):
    def setup():
        import torch.utils.data as tud

        from normlab.data import DataLoader, ImageFolder

        folder = ImageFolder(_folder(), size=(SIZE, SIZE), workers=workers)
        loader = DataLoader(folder, batch_size=BATCH, shuffle=False)
        files = list(folder.files)
        torch_loader = tud.DataLoader(
            _TorchImages(files),
            batch_size=BATCH,
            shuffle=False,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

        def normlab_epoch():
            return [xb for xb, _ in loader]

        def torch_epoch():
            return [xb for xb in torch_loader]

        def naive_epoch():
            return [
                np.stack([_naive_image(p) for p in files[i : i + BATCH]])
                for i in range(0, len(files), BATCH)
            ]

        return {"normlab": normlab_epoch, "torch": torch_epoch, "naive": naive_epoch}

    return setup


def _check(workers: int):
    def check() -> str:
        fns = _setup(workers)()
        ours = np.concatenate(fns["normlab"]())
        theirs = np.concatenate([t.numpy() for t in fns["torch"]()])
        naive = np.concatenate(fns["naive"]())
        if not (np.array_equal(ours, naive) and np.array_equal(ours, theirs)):
            raise AssertionError("the image loaders decoded different pixels")
        return f"{len(ours)} images {SOURCE}->{SIZE}, identical pixels in all three"

    return check


def cases(quick: bool) -> list[Case]:
    return [
        Case(
            name=f"ImageFolder epoch, {workers} workers",
            group="images",
            shape=(4 * N_PER_CLASS, 3, SIZE, SIZE),
            bytes_moved=0,
            setup=_setup(workers),
            check=_check(workers),
        )
        for workers in (0, 2)
    ]


def main() -> None:
    n = 4 * N_PER_CLASS
    print(
        f"{n} JPEGs {SOURCE}x{SOURCE} -> float32 (3, {SIZE}, {SIZE}), batches of {BATCH}, no cache"
    )
    for case in cases(quick=False):
        print(case.check() if case.check else "")
        fns = case.setup()
        for name, fn in fns.items():
            fn()  # warm: the pool (or torch's worker processes) started
            times = []
            for _ in range(5):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            median = float(np.median(times))
            print(f"  {case.name:32s} {name:8s} {median * 1e3:8.1f} ms  {n / median:8.0f} images/s")


if __name__ == "__main__":
    main()
