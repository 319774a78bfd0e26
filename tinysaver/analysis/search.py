"""The planner's search: every chain's cheapest configuration at every accuracy, on one split.

The planner searches every chain of 1 to ``max_stages`` stages that ends with the base (the base
alone is the 1-stage chain) and every threshold combination at once: each sample's confidence is
ranked on every stage's threshold grid, the samples are histogrammed on the N-1 dimensional grid of
ranks (one ``np.bincount``), and cumulative sums along the axes give, for every cell (one threshold
per stage), how many samples each stage answers and how many of them it gets right — see
:func:`~tinysaver.analysis.tables.chain_table`. The grid of a stage is all its distinct confidences (``exact``: the same as a
brute force over every threshold combination) unless the chain's grid would exceed
``max_exact_cells`` cells; then each stage uses a quantile grid of ``grid`` of its own confidences
(``grid-512`` by default; pairs stay exact at any realistic size). Such tables cover chains of up
to 3 stages at scale (:func:`table_chains`); longer chains, and the refinement of grid answers, are
the coordinate descent's (:mod:`tinysaver.analysis.descent`, run by :func:`search_plan`), which only ever
keeps cheaper answers.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..errors import TinySaverError
from .descent import DEFAULT_PAIR_GRID, ChainDescent
from .pair import COUNT_TOL
from .stages import ChainStage
from .tables import cell_thresholds, chain_counts, grid_cells, grid_ranks, threshold_grid

#: Default per-stage quantile grid size when a chain is too large to search exactly.
DEFAULT_GRID = 512
#: A chain is searched over every distinct confidence when its grid has at most this many cells:
#: 2001², so a 3-stage chain whose savers have <= 2,000 distinct confidences each is exact.
DEFAULT_EXACT_CELLS = 2001 ** 2
#: Hard cap on the cells of one chain's grid (memory: a few float64 arrays of this size).
MAX_CELLS = 2 ** 24


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

    stages: List[ChainStage]
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

    def chain_stages(self, chain: int, stages: Optional[Sequence[ChainStage]] = None) -> List[ChainStage]:
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
        ok = front[front >= need - COUNT_TOL]
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


def chain_grids(stages: Sequence[ChainStage], chain: Tuple[int, ...], grid: int, max_exact_cells: int,
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
    if grid_cells(exact) <= max_exact_cells:
        return exact, True
    grids = [of(i, grid) for i in chain[:-1]]
    if grid_cells(grids) > MAX_CELLS:
        raise TinySaverError(
            f"a chain of {len(chain)} stages on grids of {grid} thresholds has {grid_cells(grids):.3g} cells "
            f"(limit {MAX_CELLS:.3g}): use fewer stages (--max-stages) or a smaller --grid")
    return grids, False


def search_chains(stages: Sequence[ChainStage], max_stages: int = 3, *, grid: int = DEFAULT_GRID,
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


def table_chains(stages: Sequence[ChainStage], max_stages: int, max_exact_cells: int = DEFAULT_EXACT_CELLS
                 ) -> List[Tuple[int, ...]]:
    """The chains the planner searches with a table (in :func:`enumerate_chains` order): every chain
    of up to :data:`GRID_TABLE_STAGES` stages (on quantile grids when too large to be exact), and
    the longer ones whose table over every distinct confidence has at most ``max_exact_cells`` cells.

    Examples:
        >>> import numpy as np
        >>> pool = [ChainStage(f"s{i}", i + 1.0, np.arange(10.0) / 10, np.ones(10)) for i in range(3)]
        >>> len(table_chains(pool + [ChainStage("b", 9.0, np.ones(10), np.ones(10))], 4, 11 ** 3))  # all 8
        8
        >>> len(table_chains(pool + [ChainStage("b", 9.0, np.ones(10), np.ones(10))], 4, 11 ** 2))  # not s0 s1 s2 b
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
    first = max(0, int(math.ceil(need - COUNT_TOL)))
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


def search_tables(stages: Sequence[ChainStage], max_stages: int, *, grid: int = DEFAULT_GRID,
                  max_exact_cells: int = DEFAULT_EXACT_CELLS, progress: Optional[bool] = None) -> ChainSearch:
    """Step 1 of :func:`search_plan`: :func:`search_chains` over :func:`table_chains`."""
    return search_chains(stages, max_stages, grid=grid, max_exact_cells=max_exact_cells,
                         chains=table_chains(stages, max_stages, max_exact_cells), progress=progress)


def search_plan(stages: Sequence[ChainStage], max_stages: int, drops: Sequence[float], *, grid: int = DEFAULT_GRID,
                max_exact_cells: int = DEFAULT_EXACT_CELLS, descent: bool = True, starts: int = 2,
                pair_grid: Optional[int] = None, sweep: int = 16, progress: Optional[bool] = None,
                tables: Optional[ChainSearch] = None) -> PlanSearch:
    """The cheapest chain and thresholds for each accuracy drop on one split, chains of any length.

    1. Tables (:func:`search_chains`) over :func:`table_chains`: every chain of up to 3 stages
       (exact or on quantile grids) and every longer chain small enough to be exact.
    2. Unless every chain of up to ``max_stages`` stages was searched exactly, a Lagrangian sweep
       (:meth:`tinysaver.analysis.descent.ChainDescent.lagrangian`, ``sweep`` values of the worth of a right
       answer, from large to small, each starting where the previous ended, from the most
       accurate table configuration) visits the trade-off across all targets, as DyCE's λ sweep
       does but with every distinct threshold per move.
    3. Then the constrained descent of :mod:`tinysaver.analysis.descent` refines each target, from strictest
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
        :mod:`tinysaver.analysis.descent`).
    """
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
            meeting = [x for x in swept if x[0] >= need - COUNT_TOL]
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



__all__ = ["DEFAULT_GRID", "DEFAULT_EXACT_CELLS", "MAX_CELLS", "GRID_TABLE_STAGES", "ChainSearch", "Merged",
           "enumerate_chains", "chain_grids", "search_chains", "count_chains", "table_chains", "Choice",
           "PlanSearch", "search_tables", "search_plan"]
