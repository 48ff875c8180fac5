"""A generated image folder for examples and tests: colored shapes drawn by Pillow, one subfolder per shape.

``python -m normlab.data.shapes DIR [--per-class N] [--size S] [--seed K]`` writes ``DIR/circle``, ``DIR/square``,
``DIR/triangle`` (and ``DIR/cross``) full of small JPEGs: each a shape of random color, size and position on a
random dark background, with noise; the class is the shape, never the color.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from normlab.data.idx import PathLike

SHAPES = ("circle", "cross", "square", "triangle")


def _draw(shape: str, size: int, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    im = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(im)
    color = tuple(int(v) for v in rng.integers(120, 256, 3))
    r = float(rng.uniform(0.22, 0.38) * size)
    cx, cy = (float(v) for v in rng.uniform(r, size - r, 2))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:  # cross
        t = r / 3
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=color)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=color)
    pixels = np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_shapes(
    root: PathLike,
    per_class: int = 100,
    size: int = 32,
    seed: int = 0,
    shapes: tuple[str, ...] = SHAPES,
    quality: int = 90,
) -> Path:
    """Write ``per_class`` JPEGs of ``size`` x ``size`` pixels per shape into ``root/<shape>/NNNN.jpg``; returns
    ``root``.  The same arguments always write the same files."""
    unknown = set(shapes) - set(SHAPES)
    if unknown or not shapes:
        raise ValueError(f"make_shapes: shapes must be among {SHAPES}, got {shapes!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for shape in shapes:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _draw(shape, size, rng).save(folder / f"{i:04d}.jpg", quality=quality)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m normlab.data.shapes", description=__doc__)
    parser.add_argument("root")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_shapes(args.root, args.per_class, args.size, args.seed)
    print(f"{args.per_class * len(SHAPES)} images in {args.root}")


if __name__ == "__main__":
    main()
