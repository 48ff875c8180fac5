"""Checks on a drawn matplotlib figure: what a reader must be able to see.

* every line's first point lies inside its axes' view (no y range that cuts it off);
* a line of one point has a marker (a line of one point and no marker draws nothing);
* no legend covers a drawn point of a line or band (lines are sampled along their segments too), nor
  any part of a bar;
* no two tick labels of an axis overlap.

The experiments draw through ``RunContext.figure`` and hand the figure to ``save_figure``;
:class:`CaptureContext` stands in for the context and keeps the figures instead of writing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from normlab.lab.base import RunContext


class CaptureContext:
    """Enough of a :class:`RunContext` for an experiment's ``_plot``: ``config``, ``figure`` and a
    ``save_figure`` that keeps the figure in ``figures[name]``."""

    figure = staticmethod(RunContext.figure)

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.figures: dict[str, Any] = {}

    def save_figure(self, fig: Any, name: str) -> Path:
        self.figures[name] = fig
        return Path(f"{name}.png")


def _display_points(ax: Any, xy: np.ndarray, per_segment: int = 25) -> np.ndarray:
    """The finite points of ``xy`` and points along each segment between them, in display pixels."""
    xy = xy[np.all(np.isfinite(xy), axis=1)]
    pixels = ax.transData.transform(xy)
    if len(pixels) < 2:
        return pixels
    t = np.linspace(0.0, 1.0, per_segment)[None, :, None]
    start, end = pixels[:-1, None, :], pixels[1:, None, :]
    return (start + t * (end - start)).reshape(-1, 2)


def problems(fig: Any) -> list[str]:
    """What a reader cannot see in ``fig`` (empty when all is visible), one sentence per problem."""
    fig.draw_without_rendering()  # lays the figure out, as saving would
    found = []
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        name = ax.get_title() or f"axes {i}"
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        shapes = []
        for line in ax.lines:
            if line.get_transform() != ax.transData:
                continue  # axhline/axvline: a reference line across the axes, not data
            xy = np.asarray(line.get_xydata(), dtype=float)
            finite = xy[np.all(np.isfinite(xy), axis=1)]
            if len(finite) == 0:
                continue
            x, y = finite[0]
            if not (x0 <= x <= x1 and y0 <= y <= y1):
                found.append(f"{name}: the first point {(x, y)} of {line.get_label()!r} is cut off")
            if len(finite) == 1 and line.get_marker() in (None, "", "None", " "):
                found.append(f"{name}: {line.get_label()!r} has one point and no marker")
            shapes.append((line.get_label(), _display_points(ax, finite)))
        for band in ax.collections:
            if band.get_transform() != ax.transData:
                continue  # scatter markers: paths are marker shapes, not data
            for path in band.get_paths():
                shapes.append((band.get_label(), ax.transData.transform(path.vertices)))
        for axis in (ax.xaxis, ax.yaxis):
            labels = [
                t.get_window_extent()
                for t in axis.get_ticklabels(which="both")
                if t.get_visible() and t.get_text()
            ]
            if any(a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1 :]):
                found.append(f"{name}: tick labels of the {axis.axis_name} axis overlap")
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent()
        for bar in ax.patches:  # a bar under the legend: its top (its value) can be hidden
            if bar.get_visible() and bar.get_window_extent().overlaps(box):
                found.append(f"{name}: the legend covers a bar of {bar.get_label()!r}")
        for label, pixels in shapes:
            inside = (
                (pixels[:, 0] > box.x0)
                & (pixels[:, 0] < box.x1)
                & (pixels[:, 1] > box.y0)
                & (pixels[:, 1] < box.y1)
            )
            if inside.any():
                found.append(f"{name}: the legend covers part of {label!r}")
    return found
