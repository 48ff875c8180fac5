"""A PNG grid of sample images with their labels: ``normlab data show PATH|mnist|fashion-mnist|cifar10``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from normlab.data.idx import PathLike

NAMED = ("mnist", "fashion-mnist", "cifar10")
MNIST_CLASSES = tuple(str(d) for d in range(10))


def samples(
    source: str,
    count: int = 32,
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
    root: PathLike | None = None,
) -> tuple[np.ndarray, list[str], str]:
    """``(images uint8 (n, C, H, W), their label names, a title)`` for ``source``: a folder of class subfolders,
    ``mnist`` (the bundled sample), or ``fashion-mnist`` / ``cifar10`` (test split, from the cache).  The images are
    drawn with ``seed``, the same number from every class as far as ``count`` allows."""
    if source in NAMED:
        if source == "mnist":
            from normlab.data.mnist import load_mnist

            part = load_mnist("sample").train
            names, title = MNIST_CLASSES, "MNIST (bundled sample)"
        else:
            from normlab.data.color_datasets import REMOTES, load_named

            part = load_named(source, "test", root)
            names, title = REMOTES[source].class_names, f"{REMOTES[source].name} (test split)"
        x = part.x if part.x.ndim == 4 else part.x[:, None]
        labels = part.y
        chosen = _per_class(labels, count, seed)
        return x[chosen], [names[int(labels[i])] for i in chosen], title
    from normlab.data.images import ImageFolder

    folder = ImageFolder(source, size=size)
    chosen = _per_class(folder.labels, count, seed)
    pixels = folder.decode(chosen)
    skipped = f", {len(folder.skipped)} files skipped" if folder.skipped else ""
    title = f"{source} ({len(folder)} images, {folder.num_classes} classes{skipped})"
    return pixels, [folder.class_names[int(folder.labels[i])] for i in chosen], title


def _per_class(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` indices, taken round-robin over the classes from a seeded shuffle of each class."""
    if count < 1:
        raise ValueError(f"data show: count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop(0)))
    return np.asarray(sorted(chosen, key=lambda i: (labels[i], i)), dtype=np.int64)


def write_grid(
    images: np.ndarray, labels: list[str], out: PathLike, title: str = "", columns: int = 8
) -> Path:
    """Draw ``images`` (n, C, H, W) uint8 with ``labels`` under each into a PNG at ``out`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ValueError("data show: no images to draw")
    columns = min(columns, n)
    rows = -(-n // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.4 * columns, 1.6 * rows + 0.4), squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = images[k]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.transpose(1, 2, 0))
        ax.set_title(labels[k], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return out
