"""Exact analysis of N-stage chains: simulation at given thresholds, the planner and the oracle.

A chain is an ordered list of models ``S1 → S2 → … → B`` on the same samples; the last stage is the
base. A sample is answered by the first stage ``k`` (not the last) with ``conf_k >= t_k`` (compared
in float64; ``t_k = +inf`` lets nothing exit there), else by the base.

Cost model: a sample answered at stage ``k`` paid the incremental costs of stages ``1..k`` (each
record's ``gmacs`` is that model's own cost), so the expected cost is
``Σ_k (fraction of samples reaching stage k) · gmacs_k``. Stages are ordered by increasing cost.

The planner searches every chain of 1 to ``max_stages`` stages that ends with the base (the base
alone is the 1-stage chain) and every threshold combination at once: each sample's confidence is
ranked on every stage's threshold grid, the samples are histogrammed on the N-1 dimensional grid of
ranks (one ``np.bincount``), and cumulative sums along the axes give, for every cell (one threshold
per stage), how many samples each stage answers and how many of them it gets right — see
:func:`chain_table`. The grid of a stage is all its distinct confidences (``exact``: the same as a
brute force over every threshold combination) unless the chain's grid would exceed
``max_exact_cells`` cells; then each stage uses a quantile grid of ``grid`` of its own confidences
(``grid-512`` by default; pairs stay exact at any realistic size). Such tables cover chains of up
to 3 stages at scale (:func:`table_chains`); longer chains, and the refinement of grid answers, are
the coordinate descent's (:mod:`tinysaver.descent`, run by :func:`search_plan`), which only ever
keeps cheaper answers.

Examples:
    >>> import numpy as np
    >>> s1 = Stage("tiny", 1.0, np.array([0.9, 0.4, 0.8]), np.array([1., 0., 1.]))
    >>> s2 = Stage("small", 2.0, np.array([0.7, 0.9, 0.2]), np.array([1., 1., 0.]))
    >>> b = Stage("base", 10.0, np.ones(3), np.array([1., 1., 1.]))
    >>> ev = simulate_chain([s1, s2, b], [0.85, 0.8])
    >>> ev.answered.tolist(), ev.acc.tolist()        # s1 takes sample 0, s2 sample 1, base sample 2
    ([[0.3333333333333333, 0.3333333333333333, 0.3333333333333333]], [1.0])
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .analysis import PAPER_DROPS, threshold_to_json
from .errors import TinySaverError
from .records import Record, check_pair

#: Default per-stage quantile grid size when a chain is too large to search exactly.
DEFAULT_GRID = 512
#: A chain is searched over every distinct confidence when its grid has at most this many cells:
#: 2001², so a 3-stage chain whose savers have <= 2,000 distinct confidences each is exact.
DEFAULT_EXACT_CELLS = 2001 ** 2
#: Hard cap on the cells of one chain's grid (memory: a few float64 arrays of this size).
MAX_CELLS = 2 ** 24
# Correct counts are sums of 0/1 (exact in float64); the tolerance only absorbs the rounding of
# ``drop / 100 * M`` (as in :mod:`tinysaver.analysis`).
_COUNT_TOL = 1e-6
# Simulations hold a [rows, samples] array; rows are processed in chunks of about this many cells.
_CHUNK_CELLS = 2 ** 22


@dataclass(frozen=True)
class Stage:
    """One model of a chain on one split.

    Args:
        name: Model name.
        gmacs: Its own cost per sample.
        conf: Confidence per sample ``[M]`` (float64).
        correct: 1/0 per sample ``[M]`` (float64).
    """

    name: str
    gmacs: float
    conf: np.ndarray
    correct: np.ndarray

    @classmethod
    def from_record(cls, record: Record) -> "Stage":
        return cls(record.name, float(record.gmacs), np.asarray(record.conf, dtype=np.float64),
                   record.correct.astype(np.float64))

    @property
    def num_samples(self) -> int:
        return int(self.conf.shape[0])


# --- checking user input ------------------------------------------------------------------------

def check_chain_records(records: Sequence[Record]) -> None:
    """Checks that ``records`` (saver stages then the base) form a chain: same samples as the base
    and costs in increasing order; raises :class:`TinySaverError` naming the problem."""
    if len(records) < 1:
        raise TinySaverError("a chain needs at least one stage (the base)")
    base = records[-1]
    for rec in records[:-1]:
        check_pair(rec, base)
    for a, b in zip(records, records[1:]):
        if b.gmacs < a.gmacs:
            order = " ".join(r.name for r in sorted(records, key=lambda r: r.gmacs))
            raise TinySaverError(
                f"stages must be in order of increasing cost (GMACs): {a.name} ({a.gmacs:g}) comes before "
                f"{b.name} ({b.gmacs:g}); by cost the order is: {order}")


def check_thresholds(thresholds: Sequence[float], num_stages: int) -> np.ndarray:
    """The thresholds of a chain of ``num_stages`` stages as float64 (one per stage but the base)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or len(t) != num_stages - 1:
        raise TinySaverError(f"a chain of {num_stages} stages needs {num_stages - 1} threshold(s) (one per "
                             f"stage before the base), got {t.size}")
    if np.isnan(t).any():
        raise TinySaverError("a threshold is NaN")
    return t


# --- simulation at given thresholds -------------------------------------------------------------

@dataclass(frozen=True)
class ChainEval:
    """What a chain did at a batch of threshold vectors.

    Attributes:
        answered: ``[B, K]`` fraction of the samples answered by each stage (rows sum to 1).
        acc: ``[B]`` system accuracy.
        gmacs: ``[B]`` expected GMACs per sample.
    """

    answered: np.ndarray
    acc: np.ndarray
    gmacs: np.ndarray


def answering_stage(stages: Sequence[Stage], thresholds: np.ndarray) -> np.ndarray:
    """``[B, M]`` index of the stage that answers each sample, for a batch ``[B, K-1]`` of
    threshold vectors (the earliest stage whose confidence reaches its threshold, else the base)."""
    k_last = len(stages) - 1
    stage = np.full((thresholds.shape[0], stages[0].num_samples), k_last, dtype=np.int16)
    for k in reversed(range(k_last)):  # backwards, so that the earliest exit is written last
        exits = stages[k].conf[None, :] >= thresholds[:, k, None]
        stage[exits] = k
    return stage


def simulate_chain(stages: Sequence[Stage], thresholds, weights: Optional[np.ndarray] = None) -> ChainEval:
    """Runs a chain on its records at a batch of threshold vectors (vectorised over samples).

    This is the direct definition (no cumulative tricks): the reference that the planner's tables
    are checked against, the way thresholds chosen on one split are measured on another, and the
    batch evaluator a search over longer chains can call.

    Args:
        stages: The chain, base last, on one split.
        thresholds: ``[K-1]`` or ``[B, K-1]`` thresholds (``inf``: nothing exits at that stage).
        weights: Optional per-sample weights ``[M]`` or ``[B, M]`` (bootstrap resampling counts).

    Returns:
        A :class:`ChainEval` with one row per threshold vector.
    """
    t = np.atleast_2d(np.asarray(thresholds, dtype=np.float64))
    k = len(stages)
    if t.shape[1] != k - 1:
        raise TinySaverError(f"a chain of {k} stages needs {k - 1} threshold(s), got {t.shape[1]}")
    m = stages[0].num_samples
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and w.ndim == 2 and w.shape[0] != t.shape[0]:
        raise TinySaverError(f"{w.shape[0]} weight rows for {t.shape[0]} threshold vectors")
    correct = np.stack([s.correct for s in stages])             # [K, M]
    paid = np.cumsum([s.gmacs for s in stages])                   # cost of a sample answered at k
    answered = np.empty((t.shape[0], k))
    acc = np.empty(t.shape[0])
    gmacs = np.empty(t.shape[0])
    rows = max(1, _CHUNK_CELLS // m)
    cols = np.arange(m)
    for start in range(0, t.shape[0], rows):
        sl = slice(start, start + rows)
        stage = answering_stage(stages, t[sl])
        wb = np.ones(m) if w is None else (w if w.ndim == 1 else w[sl])
        wb = np.broadcast_to(wb, stage.shape)
        total = wb.sum(axis=1)
        for j in range(k):
            answered[sl, j] = ((stage == j) * wb).sum(axis=1) / total
        acc[sl] = (correct[stage, cols] * wb).sum(axis=1) / total
        gmacs[sl] = (paid[stage] * wb).sum(axis=1) / total
    return ChainEval(answered=answered, acc=acc, gmacs=gmacs)


# --- the N-dimensional cumulative table ---------------------------------------------------------

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
    by sample (the coordinate moves of :mod:`tinysaver.descent` use both).

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

    def __init__(self, stages: Sequence[Stage], grids: Sequence[np.ndarray]) -> None:
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


def measure_cells(stages: Sequence[Stage], grids: Sequence[np.ndarray], cells) -> ChainEval:
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


# --- the planner ---------------------------------------------------------------------------------

@dataclass
class ChainSearch:
    """Every chain's lowest cost at every correct count, on one split.

    Attributes:
        stages: The usable pool sorted by cost, then the base (last).
        chains: Stage indices of each chain (base last); chain 0 is the base alone.
        grids: Per chain, the threshold grid of each saver stage.
        exact: Per chain, whether its grids hold every distinct confidence.
        best_cost: ``[C, M+1]`` lowest expected GMACs of chain ``c`` with exactly ``j`` right
            answers (inf when no threshold combination gives ``j``).
        best_cell: ``[C, M+1]`` flat cell of that lowest cost in the chain's table (-1: none).
        grid: The quantile grid size used where a chain is not exact.
    """

    stages: List[Stage]
    chains: List[Tuple[int, ...]]
    grids: List[List[np.ndarray]]
    exact: List[bool]
    best_cost: np.ndarray
    best_cell: np.ndarray
    grid: int

    @property
    def num_samples(self) -> int:
        return self.stages[0].num_samples

    @property
    def base_correct(self) -> float:
        return float(self.stages[-1].correct.sum())

    @property
    def mode(self) -> str:
        """``exact`` when every chain was searched over all distinct confidences, else ``grid-<G>``."""
        return "exact" if all(self.exact) else f"grid-{self.grid}"

    def merged(self, max_stages: Optional[int] = None, min_stages: int = 1) -> "Merged":
        """Lowest cost per correct count over the chains of ``min_stages..max_stages`` stages
        (ties go to the chain searched first: fewer stages, cheaper models)."""
        keep = [c for c, ch in enumerate(self.chains)
                if min_stages <= len(ch) <= (max_stages or len(ch))]
        cost = np.full(self.best_cost.shape[1], np.inf)
        chain = np.full(self.best_cost.shape[1], -1)
        for c in keep:
            better = self.best_cost[c] < cost
            cost[better] = self.best_cost[c][better]
            chain[better] = c
        cell = np.where(chain >= 0, self.best_cell[np.maximum(chain, 0), np.arange(len(chain))], -1)
        return Merged(cost=cost, chain=chain, cell=cell)

    def thresholds(self, chain: int, cells: np.ndarray) -> np.ndarray:
        return cell_thresholds(self.grids[chain], cells)

    def chain_stages(self, chain: int, stages: Optional[Sequence[Stage]] = None) -> List[Stage]:
        """The stages of a chain, from this split or (``stages``, same order) another one."""
        pool = self.stages if stages is None else stages
        return [pool[i] for i in self.chains[chain]]


@dataclass
class Merged:
    """Lowest cost per correct count over a set of chains, and where it comes from."""

    cost: np.ndarray
    chain: np.ndarray
    cell: np.ndarray

    def front(self) -> np.ndarray:
        """Correct counts on the Pareto front, increasing (so with strictly increasing cost): no
        other configuration is as cheap with as many right answers."""
        next_min = np.append(np.minimum.accumulate(self.cost[::-1])[::-1][1:], np.inf)
        return np.flatnonzero(np.isfinite(self.cost) & (self.cost < next_min))

    def cheapest(self, need: float) -> Optional[int]:
        """Correct count of the cheapest configuration with at least ``need`` right answers."""
        front = self.front()
        ok = front[front >= need - _COUNT_TOL]
        return int(ok[0]) if ok.size else None


def enumerate_chains(num_savers: int, max_stages: int) -> List[Tuple[int, ...]]:
    """Chains over savers ``0..num_savers-1`` (sorted by cost) and the base (index ``num_savers``):
    the base alone, then every increasing subset of up to ``max_stages - 1`` savers before it."""
    if max_stages < 1:
        raise TinySaverError(f"--max-stages must be >= 1 (the base alone), got {max_stages}")
    return [combo + (num_savers,) for size in range(0, min(max_stages - 1, num_savers) + 1)
            for combo in itertools.combinations(range(num_savers), size)]


def _best_per_correct(correct: np.ndarray, cost: np.ndarray, m: int) -> Tuple[np.ndarray, np.ndarray]:
    """Lowest cost for each correct count 0..M, and the first flat cell reaching it."""
    count = np.rint(correct).astype(np.int64).ravel()
    del correct
    cost = cost.ravel()
    best = np.full(m + 1, np.inf)
    np.minimum.at(best, count, cost)
    hits = np.flatnonzero(cost == best[count])
    found, first = np.unique(count[hits], return_index=True)
    cell = np.full(m + 1, -1, dtype=np.int64)
    cell[found] = hits[first]
    return best, cell


def _cells(grids: Sequence[np.ndarray]) -> int:
    return math.prod(len(g) + 1 for g in grids)


def chain_grids(stages: Sequence[Stage], chain: Tuple[int, ...], grid: int, max_exact_cells: int,
                cache: Optional[Dict[Tuple[int, Optional[int]], np.ndarray]] = None) -> Tuple[List[np.ndarray], bool]:
    """The threshold grids of a chain's saver stages: every distinct confidence when the chain's
    table has at most ``max_exact_cells`` cells, else per-stage quantile grids of ``grid`` values.
    ``cache`` (keyed by stage and grid size) lets many chains share one sort per stage."""
    cache = {} if cache is None else cache

    def of(i: int, size: Optional[int]) -> np.ndarray:
        if (i, size) not in cache:
            cache[i, size] = threshold_grid(stages[i].conf, size)
        return cache[i, size]

    exact = [of(i, None) for i in chain[:-1]]
    if _cells(exact) <= max_exact_cells:
        return exact, True
    grids = [of(i, grid) for i in chain[:-1]]
    if _cells(grids) > MAX_CELLS:
        raise TinySaverError(
            f"a chain of {len(chain)} stages on grids of {grid} thresholds has {_cells(grids):.3g} cells "
            f"(limit {MAX_CELLS:.3g}): use fewer stages (--max-stages) or a smaller --grid")
    return grids, False


def search_chains(stages: Sequence[Stage], max_stages: int = 3, *, grid: int = DEFAULT_GRID,
                  max_exact_cells: int = DEFAULT_EXACT_CELLS, chains: Optional[List[Tuple[int, ...]]] = None,
                  progress: Optional[bool] = None) -> ChainSearch:
    """Searches every chain and every threshold combination on one split.

    Args:
        stages: Usable savers sorted by cost, then the base (last).
        max_stages: Longest chain, base included.
        grid: Quantile grid size per stage where a chain cannot be searched exactly.
        max_exact_cells: Largest table searched over every distinct confidence.
        chains: Restrict the search to these chains (default: :func:`enumerate_chains`).
        progress: Show a progress bar (None: only on a terminal).

    Returns:
        A :class:`ChainSearch`.
    """
    from tqdm import tqdm

    m = stages[0].num_samples
    chains = enumerate_chains(len(stages) - 1, max_stages) if chains is None else chains
    best_cost = np.empty((len(chains), m + 1))
    best_cell = np.empty((len(chains), m + 1), dtype=np.int64)
    grids_all, exact_all = [], []
    grid_cache: Dict[Tuple[int, Optional[int]], np.ndarray] = {}
    rank_cache: Dict[Tuple[int, int, bool], np.ndarray] = {}
    for c, chain in enumerate(tqdm(chains, desc="chains", unit="chain", leave=False,
                                   disable=None if progress is None else not progress)):
        grids, exact = chain_grids(stages, chain, grid, max_exact_cells, grid_cache)
        ranks = []
        for i, g in zip(chain, grids):  # one ranking per stage and grid, shared by all chains
            key = (i, len(g), exact)
            if key not in rank_cache:
                rank_cache[key] = grid_ranks(stages[i].conf, g)
            ranks.append(rank_cache[key])
        table = chain_counts(ranks, [len(g) for g in grids], [stages[i].correct for i in chain],
                             [stages[i].gmacs for i in chain])
        best_cost[c], best_cell[c] = _best_per_correct(table.correct, table.cost, m)
        del table
        grids_all.append(grids)
        exact_all.append(exact)
    return ChainSearch(stages=list(stages), chains=list(chains), grids=grids_all, exact=exact_all,
                       best_cost=best_cost, best_cell=best_cell, grid=grid)


# --- chains of any length: tables where they fit, then the descent -------------------------------

#: Chains of up to this many stages get a table even when it cannot be exact (quantile grids);
#: longer chains get one only when every distinct confidence fits, else only the descent reaches them.
GRID_TABLE_STAGES = 3
# Costs of distinct configurations differ by far more than this (relative to the costliest model).
_COST_TOL = 1e-9


def count_chains(num_savers: int, max_stages: int) -> int:
    """Number of chains of 1 to ``max_stages`` stages ending with the base over ``num_savers``."""
    return sum(math.comb(num_savers, size) for size in range(0, min(max_stages - 1, num_savers) + 1))


def table_chains(stages: Sequence[Stage], max_stages: int, max_exact_cells: int = DEFAULT_EXACT_CELLS
                 ) -> List[Tuple[int, ...]]:
    """The chains the planner searches with a table (in :func:`enumerate_chains` order): every chain
    of up to :data:`GRID_TABLE_STAGES` stages (on quantile grids when too large to be exact), and
    the longer ones whose table over every distinct confidence has at most ``max_exact_cells`` cells.

    Examples:
        >>> import numpy as np
        >>> pool = [Stage(f"s{i}", i + 1.0, np.arange(10.0) / 10, np.ones(10)) for i in range(3)]
        >>> len(table_chains(pool + [Stage("b", 9.0, np.ones(10), np.ones(10))], 4, 11 ** 3))  # all 8
        8
        >>> len(table_chains(pool + [Stage("b", 9.0, np.ones(10), np.ones(10))], 4, 11 ** 2))  # not s0 s1 s2 b
        7
    """
    if max_stages < 1:
        raise TinySaverError(f"--max-stages must be >= 1 (the base alone), got {max_stages}")
    n = len(stages) - 1
    cells = [len(np.unique(s.conf)) + 1 for s in stages[:-1]]
    smallest = sorted(cells)
    chains: List[Tuple[int, ...]] = []
    for size in range(0, min(max_stages - 1, n) + 1):
        gridded = size + 1 <= GRID_TABLE_STAGES
        if not gridded and math.prod(smallest[:size]) > max_exact_cells:
            break  # no chain of this length (or longer) fits exactly
        for combo in itertools.combinations(range(n), size):
            if gridded or math.prod(cells[i] for i in combo) <= max_exact_cells:
                chains.append(combo + (n,))
    return chains


@dataclass
class Choice:
    """The cheapest configuration found at one accuracy target on the searched split.

    Attributes:
        chain: Stage indices (pool by cost, base last).
        thresholds: One per stage but the base.
        correct: Right answers on the searched split.
        cost: Expected GMACs per sample there.
        found_by: ``"table"`` (the tables' cheapest) or ``"descent"`` (cheaper than that).
        descent: What the descent did at this target (None when it did not run).
    """

    chain: Tuple[int, ...]
    thresholds: np.ndarray
    correct: float
    cost: float
    found_by: str
    descent: Optional[Dict[str, object]] = None


@dataclass
class PlanSearch:
    """Tables over the chains that fit them and the descent's refinement at each target."""

    search: ChainSearch
    choices: Dict[float, Optional[Choice]]
    total_chains: int
    descent_run: bool
    settings: Dict[str, object]

    @property
    def mode(self) -> str:
        """``exact`` / ``grid-<G>`` (the tables), with ``+descent`` when the descent refined them."""
        return self.search.mode + ("+descent" if self.descent_run else "")

    def info(self) -> Dict[str, object]:
        exact = sum(self.search.exact)
        tabled = len(self.search.chains)
        return {"chains": self.total_chains, "table_chains": tabled, "exact_chains": exact,
                "grid_chains": tabled - exact, "descent_only_chains": self.total_chains - tabled,
                "descent": self.descent_run, **self.settings}


def _table_starts(search: ChainSearch, need: float, count: int) -> List[np.ndarray]:
    """Pool-wide threshold vectors (``inf``: not in the chain) of the cheapest table configuration
    meeting ``need`` in each of the ``count`` cheapest chains there."""
    n = len(search.stages) - 1
    first = max(0, int(math.ceil(need - _COUNT_TOL)))
    if first > search.num_samples:
        return []
    tail = search.best_cost[:, first:]
    where = np.argmin(tail, axis=1)
    cost = tail[np.arange(len(tail)), where]
    starts = []
    for c in np.argsort(cost, kind="stable")[:count]:
        if not np.isfinite(cost[c]):
            break
        cell = search.best_cell[c, first + where[c]]
        vector = np.full(n, np.inf)
        vector[list(search.chains[c][:-1])] = search.thresholds(int(c), [cell])[0]
        starts.append(vector)
    return starts


def search_tables(stages: Sequence[Stage], max_stages: int, *, grid: int = DEFAULT_GRID,
                  max_exact_cells: int = DEFAULT_EXACT_CELLS, progress: Optional[bool] = None) -> ChainSearch:
    """Step 1 of :func:`search_plan`: :func:`search_chains` over :func:`table_chains`."""
    return search_chains(stages, max_stages, grid=grid, max_exact_cells=max_exact_cells,
                         chains=table_chains(stages, max_stages, max_exact_cells), progress=progress)


def search_plan(stages: Sequence[Stage], max_stages: int, drops: Sequence[float], *, grid: int = DEFAULT_GRID,
                max_exact_cells: int = DEFAULT_EXACT_CELLS, descent: bool = True, starts: int = 2,
                pair_grid: Optional[int] = None, sweep: int = 16, progress: Optional[bool] = None,
                tables: Optional[ChainSearch] = None) -> PlanSearch:
    """The cheapest chain and thresholds for each accuracy drop on one split, chains of any length.

    1. Tables (:func:`search_chains`) over :func:`table_chains`: every chain of up to 3 stages
       (exact or on quantile grids) and every longer chain small enough to be exact.
    2. Unless every chain of up to ``max_stages`` stages was searched exactly, a Lagrangian sweep
       (:meth:`tinysaver.descent.ChainDescent.lagrangian`, ``sweep`` values of the worth of a right
       answer, from large to small, each starting where the previous ended, from the most
       accurate table configuration) visits the trade-off across all targets, as DyCE's λ sweep
       does but with every distinct threshold per move.
    3. Then the constrained descent of :mod:`tinysaver.descent` refines each target, from strictest
       to loosest, starting from the cheapest table configuration of each of the ``starts``
       cheapest chains at that target, from the cheapest sweep state meeting it and from the answer
       at the previous (stricter) target; it is kept where it is cheaper than the tables'. When
       every chain has a table (on grids: e.g. ``max_stages=3`` at scale), the descent only
       polishes the tables' answers: one table start per target, no sweep.

    Args:
        stages: Usable pool sorted by cost, then the base (last).
        max_stages: Longest chain, base included.
        drops: Allowed accuracy drops in points.
        grid: Quantile grid size of the tables too large to be exact.
        max_exact_cells: Largest table searched over every distinct confidence.
        descent: Run the descent where the tables are not exhaustive.
        starts: Table chains the descent starts from at each target.
        pair_grid: Quantile grid size of the descent's pair moves (None: its default; 0: none).
        sweep: Values of the Lagrangian sweep (0: none).
        progress: Progress bars (None: only on a terminal).
        tables: The tables of :func:`search_tables` on these stages, when already computed.

    Returns:
        A :class:`PlanSearch`; its choices are never costlier than the tables' (guarantee 1 of
        :mod:`tinysaver.descent`).
    """
    from tqdm import tqdm

    from .descent import DEFAULT_PAIR_GRID, ChainDescent

    if starts < 1:
        raise TinySaverError(f"--starts must be >= 1, got {starts}")
    if sweep < 0:
        raise TinySaverError(f"--sweep must be >= 0, got {sweep}")
    pair_grid = DEFAULT_PAIR_GRID if pair_grid is None else int(pair_grid)
    if pair_grid == 1 or pair_grid < 0:
        raise TinySaverError(f"--pair-grid must be 0 (no pair moves) or >= 2, got {pair_grid}")
    n, m = len(stages) - 1, stages[0].num_samples
    search = tables or search_tables(stages, max_stages, grid=grid, max_exact_cells=max_exact_cells,
                                     progress=progress)
    total = count_chains(n, max_stages)
    run = descent and (len(search.chains) < total or not all(search.exact))
    if len(search.chains) == total:
        # every chain has a table (some on grids): the descent only polishes the tables' answers,
        # which one start per target does as well as many (measured: bench_planner_vs_dyce pools)
        starts, sweep = 1, 0
    merged = search.merged()
    tol = _COST_TOL * max(s.gmacs for s in stages)
    descender = ChainDescent(stages, max_stages, pair_grid) if run else None
    swept: List[Tuple[float, float, np.ndarray]] = []
    if descender is not None and sweep > 0:
        # from "a right answer is worth 100 passes through every stage" down to "worth the cheapest
        # stage's cost", geometric: the whole trade-off, from the most accurate table configuration
        costs = np.array([s.gmacs for s in stages])
        state = _table_starts(search, float(np.flatnonzero(np.isfinite(merged.cost)).max()), 1)[0]
        for mu in tqdm(np.geomspace(100.0 * costs.sum(), max(costs.min(), 1e-12 * costs.sum()), sweep),
                       desc="sweep", unit="value", leave=False, disable=None if progress is None else not progress):
            result = descender.lagrangian(state, mu)
            state = result.thresholds
            swept.append((result.correct, result.cost, state.copy()))
    choices: Dict[float, Optional[Choice]] = {}
    previous: Optional[np.ndarray] = None
    ordered = sorted({float(d) for d in drops})  # strictest first: its answer meets the looser targets
    for drop in tqdm(ordered, desc="descent", unit="target", leave=False,
                     disable=(None if progress is None else not progress) if run else True):
        need = search.base_correct - drop / 100.0 * m
        c = merged.cheapest(need)
        if c is None:
            choices[drop] = None
            continue
        chain_id = int(merged.chain[c])
        choice = Choice(chain=search.chains[chain_id], thresholds=search.thresholds(chain_id, [merged.cell[c]])[0],
                        correct=float(c), cost=float(merged.cost[c]), found_by="table")
        if descender is not None:
            from_tables = _table_starts(search, need, starts)
            meeting = [x for x in swept if x[0] >= need - _COUNT_TOL]
            from_sweep = [min(meeting, key=lambda x: (x[1], -x[0]))[2]] if meeting else []
            others = from_sweep + ([previous] if previous is not None else [])
            results = [descender.run(s, need) for s in from_tables + others]
            best = min(results, key=lambda r: (r.cost, -r.correct))
            info = {"starts": len(results), "from_sweep": bool(from_sweep), "from_previous_target": previous is not None,
                    "table_gmacs": choice.cost, "gmacs": best.cost, "chain": [stages[i].name for i in best.chain],
                    "moves": {k: sum(r.moves[k] for r in results) for k in best.moves},
                    "cycles": max(r.passes for r in results), "converged": all(r.converged for r in results)}
            if best.cost < choice.cost - tol:
                choice = Choice(chain=tuple(best.chain) + (n,), thresholds=best.thresholds[best.chain],
                                correct=best.correct, cost=best.cost, found_by="descent")
            choice.descent = info
            previous = np.full(n, np.inf)
            previous[list(choice.chain[:-1])] = choice.thresholds
        choices[drop] = choice
    settings = {"grid": grid, "max_exact_cells": max_exact_cells, "starts": starts if run else 0,
                "pair_grid": pair_grid if run else 0, "sweep": sweep if run else 0}
    return PlanSearch(search=search, choices={float(d): choices[float(d)] for d in drops}, total_chains=total,
                      descent_run=run, settings=settings)


# --- plan results ---------------------------------------------------------------------------------

@dataclass
class ChainPoint:
    """One configuration of a chain and what it did on the reported split.

    In the calibrated mode the thresholds were chosen on the calibration split: ``acc``,
    ``answered`` and ``gmacs`` are *measured* on the reported split, ``calib_acc``/``calib_gmacs``
    are what they did where they were chosen, and ``meets_target`` says whether the measured
    accuracy kept the allowed drop.
    """

    stages: List[str]
    thresholds: List[float]
    answered: List[float]
    acc: float
    gmacs: float
    calib_acc: Optional[float] = None
    calib_gmacs: Optional[float] = None
    meets_target: Optional[bool] = None
    ci: Optional[Dict[str, object]] = None

    def to_json(self) -> Dict[str, object]:
        out: Dict[str, object] = {"stages": self.stages,
                                  "thresholds": [threshold_to_json(t) for t in self.thresholds],
                                  "answered": self.answered, "acc": self.acc, "gmacs": self.gmacs}
        for key in ("calib_acc", "calib_gmacs", "meets_target", "ci"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class Oracle:
    """Every sample answered by the cheapest model that gets it right (the base when none does)."""

    acc: float
    gmacs: float
    models: List[str]
    answered: List[float]

    def to_json(self) -> Dict[str, object]:
        return {"acc": self.acc, "gmacs": self.gmacs, "models": self.models, "answered": self.answered}


@dataclass
class Plan:
    """The planner's answer (see :func:`plan_chains`)."""

    base: str
    base_acc: float
    base_gmacs: float
    pool: List[str]
    skipped: List[Dict[str, object]]
    max_stages: int
    mode: str
    selection: str
    num_samples: int
    front: List[ChainPoint]
    required: Dict[float, Optional[ChainPoint]]
    best_pair: Dict[float, Optional[ChainPoint]]
    oracle: Oracle
    models: List[Dict[str, object]]
    search: Dict[str, object]
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def headroom_captured(self) -> Dict[float, Optional[float]]:
        """(C_base − C_plan) / (C_base − C_oracle) per drop (None: drop not reached, or no headroom).
        Above 1 when the plan is cheaper than the oracle (see :func:`oracle`)."""
        room = self.base_gmacs - self.oracle.gmacs
        return {d: (None if p is None or room <= 0 else (self.base_gmacs - p.gmacs) / room)
                for d, p in self.required.items()}

    def to_json(self) -> Dict[str, object]:
        def by_drop(points: Dict[float, Optional[ChainPoint]]) -> Dict[str, object]:
            return {repr(float(d)): (p.to_json() if p else None) for d, p in points.items()}

        out: Dict[str, object] = {
            "base": self.base, "base_acc": self.base_acc, "base_gmacs": self.base_gmacs,
            "pool": self.pool, "skipped": self.skipped, "max_stages": self.max_stages,
            "mode": self.mode, "selection": self.selection, "num_samples": self.num_samples,
            "search": self.search, "models": self.models,
            "front": [p.to_json() for p in self.front],
            "required": by_drop(self.required), "best_pair": by_drop(self.best_pair),
            "oracle": self.oracle.to_json(),
            "headroom_captured": {repr(float(d)): h for d, h in self.headroom_captured.items()},
        }
        out.update(self.extra)
        return out


def oracle(stages: Sequence[Stage]) -> Oracle:
    """Each sample answered by the cheapest stage that gets it right, the base (last) when none does.

    Its cost is that model's own GMACs (no cascade overhead). It is the most accurate answer the
    pool has, and no chain answers a sample right for less; it is not a lower bound on cost: a
    chain that answers some samples wrong with a cheap model (within its allowed drop), where the
    oracle pays for a right answer or, when no model is right, for the base, can cost less than the
    oracle (``headroom_captured`` above 1)."""
    order = sorted(range(len(stages) - 1), key=lambda i: stages[i].gmacs) + [len(stages) - 1]
    right = np.stack([stages[i].correct > 0 for i in order])
    chosen = np.where(right.any(axis=0), np.argmax(right, axis=0), len(order) - 1)
    costs = np.array([stages[i].gmacs for i in order])
    counts = np.bincount(chosen, minlength=len(order)) / len(chosen)
    return Oracle(acc=float(right[chosen, np.arange(len(chosen))].mean()), gmacs=float(costs[chosen].mean()),
                  models=[stages[i].name for i in order], answered=counts.tolist())


def _split_pool(base: Record, pool: Sequence[Record]) -> Tuple[List[int], List[Dict[str, object]]]:
    """Indices of the usable savers sorted by cost, and the skipped ones with why."""
    usable, skipped = [], []
    for i, rec in enumerate(pool):
        if rec.gmacs >= base.gmacs:
            skipped.append({"name": rec.name, "gmacs": rec.gmacs,
                            "why": f"costs {rec.gmacs:g} GMACs >= the base's {base.gmacs:g}: cannot save"})
        else:
            usable.append(i)
    return sorted(usable, key=lambda i: pool[i].gmacs), skipped


def _check_pool(base: Record, pool: Sequence[Record], what: str) -> None:
    names = [r.name for r in pool] + [base.name]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TinySaverError(f"{what}: model name(s) {', '.join(map(repr, twice))} appear more than once "
                             f"(each model of the pool once, the base not in the pool)")
    for rec in pool:
        check_pair(rec, base)


def _check_calibration(pool: Sequence[Record], calib_pool: Sequence[Record], base: Record,
                       calib_base: Record) -> None:
    if len(calib_pool) != len(pool):
        raise TinySaverError(f"--calib-pool has {len(calib_pool)} record(s) but --pool has {len(pool)}: give "
                             f"the same models in the same order")
    for rec, cal in zip(list(pool) + [base], list(calib_pool) + [calib_base]):
        if rec.name != cal.name:
            raise TinySaverError(f"calibration record {cal.path} is model {cal.name!r} but its report-split "
                                 f"counterpart {rec.path} is {rec.name!r}: same models, same order")
        if rec.gmacs != cal.gmacs:
            raise TinySaverError(f"model {rec.name!r} costs {rec.gmacs:g} GMACs in {rec.path} but {cal.gmacs:g} "
                                 f"in {cal.path}")


def _points(search: ChainSearch, merged: Merged, counts: Sequence[int], report: Optional[Sequence[Stage]],
            meters: Dict[int, GridMeter]) -> List[ChainPoint]:
    """Chain points for the given correct counts of ``merged``; with ``report`` (the same models on
    the reported split) the configurations are measured there and the search split's numbers kept
    as ``calib_*``. ``meters`` caches one table per chain across calls."""
    m = search.num_samples
    points: Dict[int, ChainPoint] = {}
    counts = [int(c) for c in counts]
    for chain in sorted({int(merged.chain[c]) for c in counts}):
        mine = [c for c in counts if merged.chain[c] == chain]
        cells = merged.cell[mine]
        t = search.thresholds(chain, cells)
        names = [s.name for s in search.chain_stages(chain)]
        if chain not in meters:
            meters[chain] = GridMeter(search.chain_stages(chain, report), search.grids[chain])
        measured = meters[chain].at(cells)
        for row, c in enumerate(mine):
            point = ChainPoint(stages=names, thresholds=t[row].tolist(), answered=measured.answered[row].tolist(),
                               acc=float(measured.acc[row]), gmacs=float(measured.gmacs[row]))
            if report is None:  # exactly the search's numbers (the same arithmetic as the brute force)
                point.acc, point.gmacs = c / m, float(merged.cost[c])
            else:
                point.calib_acc, point.calib_gmacs = c / m, float(merged.cost[c])
            points[c] = point
    return [points[c] for c in counts]


def _choice_point(choice: Choice, searched: Sequence[Stage], report: Optional[Sequence[Stage]]) -> ChainPoint:
    """A descent's configuration as a chain point: simulated on the reported split, with the
    searched split's numbers as ``calib_*`` when that is another split."""
    measure = searched if report is None else report
    ev = simulate_chain([measure[i] for i in choice.chain], choice.thresholds)
    point = ChainPoint(stages=[measure[i].name for i in choice.chain], thresholds=choice.thresholds.tolist(),
                       answered=ev.answered[0].tolist(), acc=float(ev.acc[0]), gmacs=float(ev.gmacs[0]))
    if report is not None:
        point.calib_acc, point.calib_gmacs = choice.correct / searched[0].num_samples, choice.cost
    return point


def _pareto(points: Sequence[ChainPoint]) -> List[ChainPoint]:
    """The points no other point beats on the split they were chosen on (as accurate or more for
    as little or less, one of them strictly), sorted by measured GMACs."""
    def key(p: ChainPoint) -> Tuple[float, float]:
        return (p.gmacs, p.acc) if p.calib_gmacs is None else (p.calib_gmacs, p.calib_acc)

    keys = np.array([key(p) for p in points]).reshape(-1, 2)
    keep, seen = [], set()
    for i, (g, a) in enumerate(keys):
        beaten = (keys[:, 0] <= g) & (keys[:, 1] >= a) & ((keys[:, 0] < g) | (keys[:, 1] > a))
        if not beaten.any() and (g, a) not in seen:  # the same configuration may answer two drops
            seen.add((g, a))
            keep.append(points[i])
    return sorted(keep, key=lambda p: p.gmacs)


def plan_chains(base: Record, pool: Sequence[Record], *, max_stages: int = 3,
                drops: Sequence[float] = PAPER_DROPS, grid: int = DEFAULT_GRID,
                max_exact_cells: int = DEFAULT_EXACT_CELLS, calib_base: Optional[Record] = None,
                calib_pool: Optional[Sequence[Record]] = None, ci: Optional[float] = None,
                draws: int = 1000, seed: int = 0, descent: bool = True, starts: int = 2,
                pair_grid: Optional[int] = None, sweep: int = 16, certify: Optional[float] = None,
                certify_method: str = "wsr",
                progress: Optional[bool] = None) -> Plan:
    """The cheapest chain of savers in front of ``base`` for each allowed accuracy drop.

    Searches every chain of 1 to ``max_stages`` stages ending with the base (pool members ordered by
    cost; members as costly as the base are skipped) and their thresholds (:func:`search_plan`):
    tables over every threshold combination where they fit (exact on small data, quantile grids
    for chains of up to 3 stages at scale), then the coordinate descent of
    :mod:`tinysaver.descent` for longer chains and to refine grid answers. Reports the Pareto
    front of accuracy vs expected GMACs, the cheapest configuration within each drop
    (``required``, like the paper's Tables 1/5 but over chains), the same restricted to 2-stage
    chains (``best_pair``; ``required`` is never costlier on the split it is chosen on, since pairs
    are part of the search and the descent only accepts cheaper answers), and the oracle.

    Args:
        base: Base record (reported split).
        pool: Candidate savers (reported split).
        max_stages: Longest chain, base included (any length up to the pool size + 1).
        drops: Allowed accuracy drops in percentage points (negative: a gain is required).
        grid: Per-stage quantile grid size for chains too large to search exactly.
        max_exact_cells: Largest per-chain table searched over every distinct confidence.
        calib_base: Base record of a calibration split (honest mode, with ``calib_pool``): every
            configuration is chosen there and measured on the reported split.
        calib_pool: The pool on the calibration split, same models in the same order.
        ci: Confidence level of bootstrap intervals for ``required`` (calibrated mode only).
        draws: Bootstrap draws.
        seed: Bootstrap seed, and the calibration split's halves for ``certify``.
        descent: Refine with the descent where the tables are not exhaustive.
        starts: Table chains the descent starts from at each target.
        pair_grid: Grid of the descent's pair moves (None: default; 0: single moves only).
        sweep: Values of the descent's Lagrangian sweep (0: none).
        certify: δ of a Learn-then-Test certification per drop (calibrated mode only;
            :func:`tinysaver.calibrate.certify_plan`): thresholds whose drop on new data is within
            the target with probability >= 1 − δ, reported as ``certified``.
        certify_method: Upper-bound method of the certification (see :mod:`tinysaver.calibrate`).
        progress: Progress bars (None: only on a terminal).

    Returns:
        A :class:`Plan`.

    Examples:
        >>> result = plan_chains(base_test, [xxs_test, s_test], calib_base=base_holdout,
        ...                      calib_pool=[xxs_holdout, s_holdout], max_stages=3)  # doctest: +SKIP
        >>> result.required[0.5].stages, result.required[0.5].gmacs  # doctest: +SKIP
    """
    if (calib_base is None) != (calib_pool is None):
        raise TinySaverError("--calib-base and --calib-pool go together")
    if ci is not None and calib_base is None:
        raise TinySaverError("--ci needs the calibrated mode (--calib-base and --calib-pool)")
    if certify is not None and calib_base is None:
        raise TinySaverError("--certify needs the calibrated mode (--calib-base and --calib-pool)")
    if ci is not None and not 0 < ci < 1:
        raise TinySaverError(f"--ci must be a level in (0, 1), e.g. 0.95, got {ci}")
    if grid < 2:
        raise TinySaverError(f"--grid must be >= 2, got {grid}")
    _check_pool(base, pool, "--pool")
    if calib_base is not None:
        _check_pool(calib_base, calib_pool, "--calib-pool")
        _check_calibration(pool, calib_pool, base, calib_base)
    order, skipped = _split_pool(base, pool)
    report = [Stage.from_record(pool[i]) for i in order] + [Stage.from_record(base)]
    if max_stages > len(report):  # no chain is longer than the pool + the base: say what was searched
        max_stages = len(report)
    calib = None
    if calib_base is not None:
        calib = [Stage.from_record(calib_pool[i]) for i in order] + [Stage.from_record(calib_base)]
    drops = [float(d) for d in drops]
    planned = search_plan(calib or report, max_stages, drops, grid=grid, max_exact_cells=max_exact_cells,
                          descent=descent, starts=starts, pair_grid=pair_grid, sweep=sweep, progress=progress)
    search = planned.search
    measure_on = report if calib is not None else None
    everything, pairs = search.merged(), search.merged(max_stages=2, min_stages=2)
    meters: Dict[int, GridMeter] = {}
    m_report = report[0].num_samples
    base_correct = float(report[-1].correct.sum())

    def judge(point: ChainPoint, drop: float) -> ChainPoint:
        if calib is not None:
            point.meets_target = bool(point.acc * m_report >= base_correct - drop / 100.0 * m_report - _COUNT_TOL)
        return point

    def pick(merged: Merged, drop: float) -> Optional[ChainPoint]:
        c = merged.cheapest(search.base_correct - drop / 100.0 * search.num_samples)
        if c is None:
            return None
        return judge(_points(search, merged, [c], measure_on, meters)[0], drop)

    required: Dict[float, Optional[ChainPoint]] = {}
    for d in drops:
        choice = planned.choices[d]
        if choice is None or choice.found_by == "table":
            required[d] = pick(everything, d)
        else:
            required[d] = judge(_choice_point(choice, calib or report, measure_on), d)
    best_pair = {d: pick(pairs, d) for d in drops}
    front = _points(search, everything, everything.front(), measure_on, meters)
    # the descent's answers join the front (and retire the table points they beat)
    front = _pareto(front + [p for d, p in required.items()
                             if p is not None and planned.choices[d].found_by == "descent"])
    # in the order of the split they were chosen on (measured costs of neighbours may swap)
    pair_front = sorted(_points(search, pairs, pairs.front(), measure_on, meters),
                        key=lambda p: p.gmacs if p.calib_gmacs is None else p.calib_gmacs)
    if ci is not None:
        from .calibrate import bootstrap_chain_ci

        by_chain: Dict[Tuple[str, ...], List[float]] = {}
        for d, p in required.items():
            if p is not None:
                by_chain.setdefault(tuple(p.stages), []).append(d)
        index = {s.name: i for i, s in enumerate(report)}
        for names, chain_drops in by_chain.items():
            ids = [index[n] for n in names]
            intervals = bootstrap_chain_ci([calib[i] for i in ids], [report[i] for i in ids], chain_drops,
                                           level=ci, draws=draws, seed=seed, grid=grid)
            for d in chain_drops:
                required[d].ci = intervals[d]
    models = [{"name": s.name, "gmacs": s.gmacs, "acc": float(s.correct.mean())} for s in report]
    # the 2-stage front, compactly (for plots): gmacs and acc of each point
    extra: Dict[str, object] = {"pair_front": {"gmacs": [p.gmacs for p in pair_front],
                                               "acc": [p.acc for p in pair_front]}}
    if calib is not None:
        extra["calibration"] = {"num_samples": search.num_samples,
                                "base_acc": search.base_correct / search.num_samples}
    if certify is not None:
        from .calibrate import certify_plan

        certified = certify_plan(calib, report, [d for d in drops if d >= 0], certify, max_stages=max_stages,
                                 method=certify_method, seed=seed, grid=grid, max_exact_cells=max_exact_cells,
                                 descent=descent, pair_grid=pair_grid, sweep=sweep)
        extra["certified"] = {repr(d): c.to_json() for d, c in certified.items()}
    info = planned.info()
    info["searched_on"] = "calibration" if calib else "report"
    info["descent_by_drop"] = {repr(d): (c.descent if c is not None else None) for d, c in planned.choices.items()
                               if planned.descent_run}
    info["found_by"] = {repr(d): (c.found_by if c is not None else None) for d, c in planned.choices.items()}
    return Plan(
        base=base.name, base_acc=base_correct / m_report, base_gmacs=float(base.gmacs),
        pool=[s.name for s in report[:-1]], skipped=skipped, max_stages=max_stages, mode=planned.mode,
        selection="calibrated" if calib is not None else "same-split", num_samples=m_report,
        front=front, required=required, best_pair=best_pair, oracle=oracle(report), models=models,
        search=info, extra=extra)


def plan_records(base: Union[Record, str, os.PathLike], pool: Sequence[Union[Record, str, os.PathLike]],
                 calib_base: Union[Record, str, os.PathLike, None] = None,
                 calib_pool: Optional[Sequence[Union[Record, str, os.PathLike]]] = None,
                 max_stages: Optional[int] = None, drops: Sequence[float] = PAPER_DROPS,
                 certify: Optional[float] = 0.1, plot: Union[str, os.PathLike, None] = None,
                 **options) -> Dict[str, object]:
    """The demo's plan section: :func:`plan_chains` on records (or record paths), as JSON-able data.

    Args:
        base: Base record of the reported split (e.g. ``fmnist_cnn_l_test.npz``).
        pool: The savers on that split.
        calib_base: Base record of the calibration split (e.g. the holdout), or None.
        calib_pool: The savers on it, same order.
        max_stages: Longest chain (None: every pool model may join, the pool size + 1).
        drops: Allowed accuracy drops in points.
        certify: δ of the Learn-then-Test certification per drop (calibrated mode; None: none).
        plot: Also draw the plan (:func:`tinysaver.plan_report.plot_plan`) to this PNG.
        **options: Further keyword arguments of :func:`plan_chains` (``grid``, ``ci``, ``starts``, …).

    Returns:
        :meth:`Plan.to_json` plus ``"markdown"`` (the table of :func:`tinysaver.plan_report.plan_markdown`).

    Examples:
        >>> folder = "outputs/fashion_mnist/records"
        >>> section = plan_records(f"{folder}/fmnist_cnn_l_test.npz",
        ...                        [f"{folder}/fmnist_cnn_{m}_test.npz" for m in ("xxs", "xs", "s", "m")],
        ...                        f"{folder}/fmnist_cnn_l_holdout.npz",
        ...                        [f"{folder}/fmnist_cnn_{m}_holdout.npz" for m in ("xxs", "xs", "s", "m")]
        ...                        )  # doctest: +SKIP
        >>> section["required"]["0.5"]["stages"], section["certified"]["0.5"]["thresholds"]  # doctest: +SKIP
    """
    from .plan_report import plan_markdown, plot_plan
    from .records import load_record

    def load(r):
        return r if isinstance(r, Record) else load_record(r)

    base_r, pool_r = load(base), [load(r) for r in pool]
    calib_r = None if calib_base is None else load(calib_base)
    calib_pool_r = None if calib_pool is None else [load(r) for r in calib_pool]
    plan = plan_chains(base_r, pool_r, max_stages=len(pool_r) + 1 if max_stages is None else max_stages,
                       drops=drops, calib_base=calib_r, calib_pool=calib_pool_r,
                       certify=certify if calib_r is not None else None, **options)
    out = plan.to_json()
    out["markdown"] = plan_markdown(plan)
    if plot is not None:
        plot_plan(plan, plot)
    return out


def chain_from_records(records: Sequence[Record], thresholds: Sequence[float]) -> ChainPoint:
    """What a chain of records (savers by increasing cost, base last) does at the given thresholds."""
    check_chain_records(records)
    t = check_thresholds(thresholds, len(records))
    stages = [Stage.from_record(r) for r in records]
    ev = simulate_chain(stages, t)
    return ChainPoint(stages=[s.name for s in stages], thresholds=t.tolist(), answered=ev.answered[0].tolist(),
                      acc=float(ev.acc[0]), gmacs=float(ev.gmacs[0]))
