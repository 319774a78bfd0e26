"""Plotting helpers: matplotlib with the non-interactive Agg backend (:func:`pyplot`), atomic PNG
files (:func:`save_figure`), thinning of long curves and label placement without overlaps.

matplotlib is imported only when a plot is drawn; this package is the only place it is imported.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..io import atomic_open

PathLike = Union[str, os.PathLike]
PLOT_POINTS = 2000  # a curve of 500k thresholds is thinned to this many points for drawing


def thin(n: int) -> np.ndarray:
    """Indices of at most :data:`PLOT_POINTS` evenly spread points of an ``n``-point curve (ends kept)."""
    if n <= PLOT_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, PLOT_POINTS).round().astype(int))


def pyplot():
    """``matplotlib.pyplot``, on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: PathLike) -> None:
    """Writes ``fig`` as a PNG (atomically) and closes it."""
    plt = pyplot()
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


# Label positions tried around a point, in points: beside it first, then stacked ever further
# above and below with a leader line, so a free place always exists.
_NEAR = [(6, -9), (6, 5), (-6, -9), (-6, 5)]
_STACKED = [(18, sign * 11 * k) for k in range(1, 40) for sign in (-1, 1)]


def place_labels(ax, labels: Sequence[tuple], avoid: Sequence[Any] = (), points: Optional[np.ndarray] = None,
                 markers: Optional[np.ndarray] = None, marker_size: float = 8, fontsize: float = 7) -> List[Any]:
    """Annotates ``(x, y, text, color)`` points so that no label box overlaps another label, an
    artist of ``avoid`` (e.g. the legend) or a marker (``markers``: data coordinates ``[N, 2]``,
    ``marker_size`` points wide), and, where possible, covers none of ``points`` (data coordinates
    ``[N, 2]``, e.g. a curve) and stays inside the axes.

    Placement is greedy, left to right: each label takes the first free position of a fixed list
    (beside the point, then stacked further away with a leader line), measured with the figure's
    renderer.

    Returns:
        The annotations, in the order of ``labels``.
    """
    from matplotlib.transforms import Bbox

    # A full draw first: it settles the axis limits (autoscaling is lazy), hence where points land.
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = [a.get_window_extent(renderer) for a in avoid]
    half = marker_size / 2 * ax.figure.dpi / 72  # points to pixels
    if markers is not None:
        taken += [Bbox.from_extents(x - half, y - half, x + half, y + half)
                  for x, y in ax.transData.transform(markers)]
    covered = ax.transData.transform(points) if points is not None and len(points) else np.zeros((0, 2))
    placed: Dict[int, Any] = {}
    order = sorted(range(len(labels)), key=lambda i: (labels[i][0], -labels[i][1]))
    for i in order:
        x, y, text, color = labels[i]
        best = None  # (annotation, box): a free place, a clear one if found
        for dx, dy in _NEAR + _STACKED:
            leader = None if (dx, dy) in _NEAR else dict(arrowstyle="-", lw=0.5, color=color)
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              color=color, ha="left" if dx > 0 else "right", va="center", arrowprops=leader)
            box = label_box(ann, renderer).padded(1.5)
            free = not any(box.overlaps(t) for t in taken)
            clear = box.count_contains(covered) == 0 and inside.contains(box.x0, box.y0) \
                and inside.contains(box.x1, box.y1)
            if free and clear:
                if best is not None:
                    best[0].remove()
                best = (ann, box)
                break
            if free and best is None:
                best = (ann, box)  # on the curve or outside: kept unless a clear place turns up
            else:
                ann.remove()
        if best is None:  # 80 positions for a handful of labels: cannot happen
            raise RuntimeError(f"no free place for the label {text!r}")
        placed[i], box = best
        taken.append(box)
    return [placed[i] for i in range(len(labels))]


def label_box(label: Any, renderer: Any = None):
    """Display-space box of an annotation's text alone (without its leader line)."""
    from matplotlib.text import Text

    label.get_window_extent(renderer)  # lays out the annotation (its text position) first
    return Text.get_window_extent(label, renderer)

