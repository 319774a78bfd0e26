"""The N-dimensional cumulative table of a chain: its counts at every threshold combination at once.

Each sample's confidence is ranked on every stage's threshold grid (:func:`threshold_grid`,
:func:`grid_ranks`), the samples are histogrammed on the N-1 dimensional grid of ranks (one
``np.bincount``), and cumulative sums along the axes give, for every cell (one threshold per
stage), how many samples each stage answers and how many of them it gets right — see
:func:`chain_table`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .stages import ChainEval, ChainStage


def threshold_grid(conf: np.ndarray, size: Optional[int] = None) -> np.ndarray:
    """Candidate thresholds of one stage, ascending: every distinct confidence, or (``size`` given
    and more distinct values than that) about ``size`` of them at evenly spaced sample quantiles.
    Every value is one of the confidences and the lowest one is always included (everything can exit).
    """
    values = np.unique(conf)
    if size is None or len(values) <= size:
        return values
    ranked = np.sort(conf)
    picks = np.linspace(0, len(ranked) - 1, size).round().astype(np.int64)
    return np.unique(ranked[picks])


def grid_ranks(conf: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the highest grid value ``<= conf`` per sample: threshold index ``j`` lets the sample
    exit exactly when ``j <= rank``. Requires ``grid[0] <= conf.min()``."""
    return np.searchsorted(grid, conf, side="right") - 1


def _exclusive_prefix(a: np.ndarray, axis: int) -> np.ndarray:
    """``out[j] = Σ_{r < j} a[r]`` along ``axis``, for ``j = 0..G`` (one longer than ``a``)."""
    shape = list(a.shape)
    shape[axis] += 1
    out = np.zeros(shape)
    if axis == a.ndim - 1:
        np.cumsum(a, axis=axis, out=out[..., 1:])
        return out
    # numpy's cumsum along a leading axis is ~5x slower than adding whole slices one after the
    # other (numpy 2.4, a 512x512 table: 7 ms vs 1.3 ms); each step is vectorised over the other axes.
    src, dst = np.moveaxis(a, axis, 0), np.moveaxis(out, axis, 0)
    for j in range(src.shape[0]):
        np.add(dst[j], src[j], out=dst[j + 1])
    return out


def _suffix(a: np.ndarray, axis: int) -> np.ndarray:
    """``out[j] = Σ_{r >= j} a[r]`` along ``axis``, for ``j = 0..G`` (``out[G] = 0``)."""
    return a.sum(axis=axis, keepdims=True) - _exclusive_prefix(a, axis)


@dataclass(frozen=True)
class ChainTable:
    """A chain's counts at every combination of grid thresholds (see :func:`chain_table`).

    Attributes:
        correct: ``(G_1+1, …, G_n+1)`` (weighted) number of right answers.
        cost: Same shape, expected GMACs per sample.
        reach: ``n + 1`` arrays broadcastable to that shape: ``reach[k]`` is how many samples reach
            stage ``k + 1`` (``reach[0]`` all of them, ``reach[n]`` the base).
        total: Number (total weight) of samples.
    """

    correct: np.ndarray
    cost: np.ndarray
    reach: List[np.ndarray]
    total: float

    def answered(self, cells) -> np.ndarray:
        """``[B, K]`` fraction answered by each stage at flat cells."""
        cells = np.atleast_1d(np.asarray(cells, dtype=np.int64))
        shape = self.correct.shape
        index = np.unravel_index(cells, shape) if shape else ()
        at = [np.broadcast_to(r, shape)[index] * np.ones(len(cells)) for r in self.reach]
        out = [at[k] - at[k + 1] for k in range(len(at) - 1)] + [at[-1]]
        return np.stack(out, axis=1) / self.total


def _answer_table(flat: np.ndarray, sizes: Tuple[int, ...], values: Sequence[np.ndarray]) -> np.ndarray:
    """``Σ_i values[k_i][i]`` at every cell, ``k_i`` the stage that answers sample ``i`` there.

    Stage ``k`` answers the samples with ``rank_1 < j_1, …, rank_{k-1} < j_{k-1}`` and
    ``rank_k >= j_k``; ``values[n]`` is for the samples that pass every stage. The sum of stage
    ``k`` is the histogram of ``(rank_1..rank_k)`` summed with exclusive prefix sums along the first
    ``k-1`` axes and a suffix sum along axis ``k``, for all cells at once.

    Args:
        flat: Each sample's cell of ranks, flattened on ``sizes``.
        sizes: Grid size ``G_k`` per stage (``n`` of them).
        values: ``n + 1`` per-sample arrays: the value when answered by stage ``k``, then when
            passing them all.

    Returns:
        An array of shape ``(G_1+1, …, G_n+1)`` (index ``G_k``: threshold +inf on axis ``k``).
    """
    n = len(sizes)
    full = tuple(g + 1 for g in sizes)
    cells = math.prod(sizes)

    def hist(v: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=v, minlength=cells).reshape(sizes)

    def expand(a: np.ndarray) -> np.ndarray:  # trailing axes of length 1, to broadcast on ``full``
        return a.reshape(a.shape + (1,) * (n - a.ndim))

    out = np.zeros(full)
    for k in range(n):
        h = hist(values[k])
        if k + 1 < n:
            h = h.sum(axis=tuple(range(k + 1, n)))
        for axis in range(k):
            h = _exclusive_prefix(h, axis)
        out += expand(_suffix(h, k))
    h = hist(values[n])
    for axis in range(n):
        h = _exclusive_prefix(h, axis)
    out += h
    return out


def answer_table(ranks: Sequence[np.ndarray], sizes: Sequence[int], values: Sequence[np.ndarray]) -> np.ndarray:
    """Sum over samples of a per-sample value of whichever stage answers it, at every combination
    of grid thresholds (see :func:`_answer_table`); :func:`chain_counts` is this with the 1/0
    correct arrays as values. With ``values`` per-sample costs it gives costs that differ sample
    by sample (the coordinate moves of :mod:`tinysaver.analysis.descent` use both).

    Examples:
        >>> import numpy as np
        >>> answer_table([np.array([0, 1, 1])], [2], [np.ones(3), np.zeros(3)]).tolist()  # exits at t_j
        [3.0, 2.0, 0.0]
    """
    sizes = tuple(int(g) for g in sizes)
    if not sizes:
        return np.array(float(np.sum(values[0])))
    flat = np.ravel_multi_index(tuple(np.asarray(r) for r in ranks), sizes)
    return _answer_table(flat, sizes, [np.asarray(v, dtype=np.float64) for v in values])


def chain_counts(ranks: Sequence[np.ndarray], sizes: Sequence[int], corrects: Sequence[np.ndarray],
                 gmacs: Sequence[float], weights: Optional[np.ndarray] = None) -> ChainTable:
    """Correct count, expected cost and reach of a chain at every combination of grid thresholds.

    Stage ``k`` answers the samples with ``rank_1 < j_1, …, rank_{k-1} < j_{k-1}`` (they passed the
    earlier stages) and ``rank_k >= j_k``; the base answers those below every threshold. So the
    counts of stage ``k`` are the histogram of ``(rank_1..rank_k)``, summed with exclusive prefix
    sums along the first ``k-1`` axes and a suffix sum along axis ``k`` — for all cells at once.

    Args:
        ranks: Per saver stage (all but the base), each sample's rank on that stage's grid
            (:func:`grid_ranks`), in ``0..sizes[k]-1``.
        sizes: Grid size ``G_k`` per saver stage.
        corrects: 1/0 per sample for every stage, base last (``len(ranks) + 1`` arrays).
        gmacs: Own cost of every stage, base last.
        weights: Optional per-sample weights (e.g. bootstrap counts); counts become weighted sums.

    Returns:
        A :class:`ChainTable` whose arrays have shape ``(G_1+1, …, G_n+1)``: index ``j < G_k`` on
        axis ``k`` is the threshold ``grid_k[j]``, ``j = G_k`` is +inf. The cost is computed as
        ``(M·g_1 + reach_2·g_2 + … + reach_B·g_B) / M`` with integer ``reach`` counts.
    """
    n = len(ranks)
    m = len(corrects[0])
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    if n == 0:
        return ChainTable(correct=np.array(float((w * corrects[0]).sum())),
                          cost=np.array(total * gmacs[0] / total), reach=[np.array(total)], total=total)
    sizes = tuple(int(g) for g in sizes)
    full = tuple(g + 1 for g in sizes)
    flat = np.ravel_multi_index(tuple(np.asarray(r) for r in ranks), sizes)
    correct = _answer_table(flat, sizes, [w * c for c in corrects])
    count = np.bincount(flat, weights=w, minlength=math.prod(sizes)).reshape(sizes)

    def expand(a: np.ndarray) -> np.ndarray:  # trailing axes of length 1, to broadcast on ``full``
        return a.reshape(a.shape + (1,) * (n - a.ndim))

    cost = np.full(full, total * gmacs[0])
    reach = [np.array(total)]
    for k in range(1, n + 1):  # reach of stage k (k = n: the base): below every earlier threshold
        r = count.sum(axis=tuple(range(k, n))) if k < n else count
        for axis in range(k):
            r = _exclusive_prefix(r, axis)
        reach.append(expand(r))
        cost += reach[-1] * gmacs[k]
    cost /= total
    return ChainTable(correct=correct, cost=cost, reach=reach, total=total)


def chain_table(ranks: Sequence[np.ndarray], sizes: Sequence[int], corrects: Sequence[np.ndarray],
                gmacs: Sequence[float], weights: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(correct, cost)`` of :func:`chain_counts`: the (weighted) number of right answers and the
    expected GMACs per sample at every combination of grid thresholds."""
    table = chain_counts(ranks, sizes, corrects, gmacs, weights)
    return table.correct, table.cost


class GridMeter:
    """A chain's table on one split over another split's grids, read at any number of cells.

    Ranks ``stages``' confidences on the grids extended by ``-inf`` at the bottom (a sample below
    every grid value of another split never exits): O(samples + cells) for one table, then each
    cell is a lookup, where :func:`simulate_chain` is O(samples) per cell.
    """

    def __init__(self, stages: Sequence[ChainStage], grids: Sequence[np.ndarray]) -> None:
        self.grids = list(grids)
        # on the extended grid [-inf, g_0, g_1, ...], index j of the grid is j + 1
        ranks = [np.searchsorted(g, s.conf, side="right") for s, g in zip(stages, grids)]
        self.table = chain_counts(ranks, [len(g) + 1 for g in grids], [s.correct for s in stages],
                                  [s.gmacs for s in stages])

    def at(self, cells) -> ChainEval:
        """What the chain does at flat cells of the grids (``j = G_k``: +inf)."""
        cells = np.atleast_1d(np.asarray(cells, dtype=np.int64))
        table = self.table
        if not self.grids:
            n = len(cells)
            return ChainEval(answered=table.answered(np.zeros(n, dtype=np.int64)),
                             acc=np.full(n, float(table.correct) / table.total), gmacs=np.full(n, float(table.cost)))
        index = np.unravel_index(cells, tuple(len(g) + 1 for g in self.grids))
        shifted = np.ravel_multi_index(tuple(j + 1 for j in index), table.correct.shape)
        return ChainEval(answered=table.answered(shifted), acc=table.correct.ravel()[shifted] / table.total,
                         gmacs=table.cost.ravel()[shifted])


def measure_cells(stages: Sequence[ChainStage], grids: Sequence[np.ndarray], cells) -> ChainEval:
    """A chain at grid cells (thresholds ``grids[k][j]``, ``j = G_k``: +inf) on any split
    (see :class:`GridMeter`)."""
    return GridMeter(stages, grids).at(cells)


def cell_thresholds(grids: Sequence[np.ndarray], cells: np.ndarray) -> np.ndarray:
    """``[B, n]`` thresholds of flat cell indices of a :func:`chain_table` (``G_k`` → +inf)."""
    cells = np.atleast_1d(np.asarray(cells, dtype=np.int64))
    if not grids:
        return np.zeros((len(cells), 0))
    index = np.unravel_index(cells, tuple(len(g) + 1 for g in grids))
    out = np.empty((len(cells), len(grids)))
    for k, (g, j) in enumerate(zip(grids, index)):
        out[:, k] = np.where(j < len(g), g[np.minimum(j, len(g) - 1)], np.inf)
    return out


def grid_cells(grids: Sequence[np.ndarray]) -> int:
    """Cells of a chain's table on ``grids`` (each grid plus +inf)."""
    return math.prod(len(g) + 1 for g in grids)


__all__ = ["threshold_grid", "grid_ranks", "ChainTable", "answer_table", "chain_counts", "chain_table",
           "GridMeter", "measure_cells", "cell_thresholds", "grid_cells"]
