"""Chains longer than a table can hold: constrained coordinate descent from the tables' best answers.

The planner (:func:`tinysaver.analysis.plan_chains`) searches every chain whose table of threshold
combinations fits in memory exactly (all distinct confidences) or on per-stage quantile grids. A
chain of ``K`` stages has a ``(K-1)``-dimensional table, so at realistic sizes that covers chains of
up to 3 stages; longer chains (up to the pool size + 1) are reached by this descent.

**State.** One threshold per pool model (sorted by cost), ``+inf`` meaning "not in the chain"; the
chain is the models with a finite threshold, then the base. At most ``max_stages - 1`` are finite.

**Target.** For one accuracy target (a number of right answers ``need`` on the search split), the
cost (expected GMACs) is minimised subject to ``correct >= need``.

**Moves.** Each move re-chooses a few coordinates with all the others fixed, evaluating *every*
candidate at once with the cumulative counts of :func:`tinysaver.analysis.answer_table` (sort-free
``bincount`` + prefix/suffix sums, no Python loop over thresholds):

- *single*: one model's threshold over every distinct confidence of that model plus "not in the
  chain" — this adds the model to the chain, removes it, or moves its threshold;
- *pair*: two models' thresholds jointly, each on a grid of the confidences of the samples that
  reach them: ``pair_grid`` evenly spaced quantiles, every distinct value within ``pair_grid // 4``
  of the current threshold (the top ones for a model not in the chain), and "not in the chain".
  This trades accuracy between two stages — what a single move at an active accuracy constraint
  cannot do — adds or removes two models at once, and swaps one model for another.

The samples a move can change are those that reach its first model; what happens to them after a
changed stage (exit at a later model of the chain, or the base) comes from the current state.
A move is applied when its best candidate meets the target and is cheaper than the current state
(by more than a rounding tolerance). The moves run in a cycle (every single move, then every pair
move) until a whole cycle in a row changes nothing.

**Starts.** A constrained descent stops where no move of one or two thresholds can trade accuracy
for cost at the target, so where it starts matters. :func:`tinysaver.analysis.search_plan` starts it
from the tables' best configurations at the target, from the answer at the previous (stricter)
target, and from a *Lagrangian sweep* (:meth:`ChainDescent.lagrangian`): the same moves on
``cost − μ · right answers`` with no target, for ``μ`` from large to small, each from where the
previous ended. Unconstrained, the sweep moves freely along the trade-off (it is DyCE's λ-weighted
search, with every distinct threshold per move instead of ``fminbound``); the cheapest state it
visits that meets a target is one more start there.

**Guarantees** (on the split searched; see the tests):

1. Monotone: every applied move keeps ``correct >= need`` and the chain within ``max_stages``, and
   strictly lowers the cost, so the descent terminates and its result is never costlier than its
   start. Started (among others) from the tables' best answer at the same target (chains of up to
   3 stages, exact or grid), the best result is never worse than that answer, hence never worse
   than the best pair. (The Lagrangian sweep also only lowers its own objective at every move.)
2. At the end no single move (any distinct confidence of any model, adding or removing one model)
   and no pair move on its grids lowers the cost: a local optimum for those neighbourhoods.
3. Not a global optimum in general. Where every chain up to ``max_stages`` fits a table exactly
   (small data), the planner does not need the descent and equals a brute force over every chain
   and threshold combination, for any number of stages.

The descent is the same kind of search as DyCE's coordinate search (one exit at a time against the
others), but it optimises the cost at the accuracy target itself (after the λ-weighted sweep), it
evaluates every distinct threshold of a coordinate exactly instead of a bounded scalar minimiser
over a piecewise-constant function, and it also moves two thresholds at once. Nothing guarantees
it beats DyCE on given records; ``bench/bench_planner_vs_dyce.py`` measures it.

Examples:
    >>> import numpy as np
    >>> from tinysaver.analysis import ChainStage
    >>> rng = np.random.default_rng(0)
    >>> conf = [rng.random(2000) for _ in range(3)]
    >>> stages = [ChainStage(f"s{i}", 0.1 * (i + 1), c, (rng.random(2000) < 0.4 + 0.6 * c).astype(float))
    ...           for i, c in enumerate(conf)] + [ChainStage("base", 5.0, np.ones(2000), np.ones(2000))]
    >>> descent = ChainDescent(stages, max_stages=4)
    >>> start = np.array([np.inf, np.inf, np.inf])             # the base alone
    >>> result = descent.run(start, need=0.99 * 2000)
    >>> bool(result.cost <= result.start_cost)
    True
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import TinySaverError
from .pair import COUNT_TOL
from .stages import ChainStage, simulate_chain
from .tables import answer_table, grid_ranks, threshold_grid

#: Quantile grid size per model of a pair move.
DEFAULT_PAIR_GRID = 128
#: Cycles of moves (every single move, then every pair move) at most; the descent normally stops
#: after a few.
DEFAULT_MAX_PASSES = 50


@dataclass
class DescentResult:
    """Where a descent ended.

    Attributes:
        thresholds: ``[n]`` per pool model (``inf``: not in the chain).
        correct: Right answers on the search split.
        cost: Expected GMACs per sample on the search split.
        start_cost: Expected GMACs of the start.
        moves: Applied moves by kind (``single``, ``pair``).
        passes: Cycles of moves run (the last one possibly partial).
        converged: Whether a whole cycle changed nothing (else ``max_passes`` stopped it).
        history: With ``run(..., record=True)``: ``(thresholds, correct, cost)`` of the start and
            after every applied move, as the move's table computed them.
    """

    thresholds: np.ndarray
    correct: float
    cost: float
    start_cost: float
    moves: Dict[str, int] = field(default_factory=dict)
    passes: int = 0
    converged: bool = True
    history: Optional[List[Tuple[np.ndarray, float, float]]] = None

    @property
    def chain(self) -> List[int]:
        """Indices of the pool models in the chain (the base is not included)."""
        return [int(k) for k in np.flatnonzero(np.isfinite(self.thresholds))]


class ChainDescent:
    """Coordinate descent over a pool's thresholds at an accuracy target (module docstring).

    Args:
        stages: Pool models sorted by increasing cost, then the base (last), on the search split.
        max_stages: Longest chain, base included.
        pair_grid: Quantile grid size per model of a pair move (0: no pair moves).
        max_passes: Safety cap on the cycles of moves.
    """

    def __init__(self, stages: Sequence[ChainStage], max_stages: int, pair_grid: int = DEFAULT_PAIR_GRID,
                 max_passes: int = DEFAULT_MAX_PASSES) -> None:
        if max_stages < 1:
            raise TinySaverError(f"--max-stages must be >= 1 (the base alone), got {max_stages}")
        self.stages = list(stages)
        self.n = len(stages) - 1
        self.m = stages[0].num_samples
        self.limit = max_stages - 1
        self.pair_grid = int(pair_grid)
        self.max_passes = int(max_passes)
        self.conf = [s.conf for s in self.stages[:-1]]
        self.correct = np.stack([s.correct for s in self.stages])
        self.gmacs = np.array([s.gmacs for s in self.stages], dtype=np.float64)
        # every distinct confidence of each model: the candidates of its single moves
        self.grids = [threshold_grid(c) for c in self.conf]
        self.ranks = [grid_ranks(c, g) for c, g in zip(self.conf, self.grids)]
        self.cols = np.arange(self.m)
        # costs are sums over samples; distinct configurations differ by far more than this
        self.tol = 1e-9 * float(self.gmacs.max()) if len(self.gmacs) else 0.0
        self._mu: Optional[float] = None

    # -- the state -----------------------------------------------------------------------------

    def _answering(self, t: np.ndarray, skip: Tuple[int, ...] = ()) -> np.ndarray:
        """Index of the stage answering each sample (``n``: the base), models in ``skip`` left out."""
        answer = np.full(self.m, self.n, dtype=np.int64)
        for k in reversed(range(self.n)):  # backwards, so the earliest exit is written last
            if k not in skip and np.isfinite(t[k]):
                answer[self.conf[k] >= t[k]] = k
        return answer

    def _paid(self, t: np.ndarray, skip: Tuple[int, ...] = ()) -> np.ndarray:
        """``paid[k]``: GMACs paid by a sample answered at stage ``k`` (models in the chain up to
        ``k``, ``skip`` left out); for a stage not in the chain, what was paid before it."""
        present = np.append(np.isfinite(t), True)
        present[list(skip)] = False
        return np.cumsum(np.where(present, self.gmacs, 0.0))

    def evaluate(self, t: np.ndarray) -> Tuple[float, float]:
        """``(correct, expected GMACs)`` of a state, by the direct definition."""
        t = np.asarray(t, dtype=np.float64)
        chain = [k for k in range(self.n) if np.isfinite(t[k])] + [self.n]
        ev = simulate_chain([self.stages[k] for k in chain], t[chain[:-1]])
        return float(np.rint(ev.acc[0] * self.m)), float(ev.gmacs[0])

    def _count(self, t: np.ndarray, skip: Tuple[int, ...] = ()) -> int:
        finite = np.isfinite(t)
        finite[list(skip)] = False
        return int(finite.sum())

    # -- choosing the best candidate of a move ----------------------------------------------------

    def _choose(self, correct: np.ndarray, cost: np.ndarray, allowed: np.ndarray, need: float,
                current: int) -> Optional[int]:
        """Flat index of the cheapest allowed candidate meeting ``need`` (ties: more right answers,
        then the first), or None when it is not cheaper than ``current`` by more than the tolerance."""
        correct, cost = correct.ravel(), cost.ravel()
        if self._mu is not None:  # the Lagrangian phase: cost - mu * correct, no target
            value = np.where(allowed.ravel(), cost - self._mu * correct, np.inf)
            pick = int(np.argmin(value))
            return pick if value[pick] < cost[current] - self._mu * correct[current] - self.tol else None
        ok = allowed.ravel() & (correct >= need - COUNT_TOL)
        if not ok.any():
            return None
        priced = np.where(ok, cost, np.inf)
        best = priced.min()
        if not best < cost[current] - self.tol:
            return None
        # among the candidates within half the tolerance of the best, the most accurate: every
        # applied move lowers the cost by more than tol / 2, so the descent cannot cycle
        ties = np.flatnonzero(priced <= best + self.tol / 2)
        return int(ties[np.argmax(correct[ties])])

    # -- the moves ----------------------------------------------------------------------------------

    def _single(self, t: np.ndarray, k: int, need: float) -> Optional[Tuple[float, float]]:
        """Re-choose model ``k``'s threshold (or leave it out); the new ``(correct, cost)`` (cost
        per sample) if the state changed, else None."""
        answer = self._answering(t, skip=(k,))
        paid = self._paid(t, skip=(k,))
        g = self.gmacs[k]
        reach = answer > k                                   # not answered before k
        idx = np.flatnonzero(reach)
        gone = np.flatnonzero(~reach)
        const_correct = float(self.correct[answer[gone], gone].sum())
        const_cost = float(paid[answer[gone]].sum())
        fallback = answer[idx]                               # where they go when not leaving at k
        values_correct = [self.correct[k, idx], self.correct[fallback, idx]]
        values_cost = [np.full(len(idx), paid[k] + g), paid[fallback] + g]
        size = len(self.grids[k])
        ranks = [self.ranks[k][idx]]
        correct = answer_table(ranks, [size], values_correct) + const_correct
        cost = answer_table(ranks, [size], values_cost) + const_cost
        cost[size] -= g * len(idx)                           # index `size`: not in the chain
        allowed = np.ones(size + 1, dtype=bool)
        if not np.isfinite(t[k]) and self._count(t) >= self.limit:
            allowed[:size] = False
        current = size if not np.isfinite(t[k]) else self._index(self.grids[k], t[k])
        pick = self._choose(correct, cost, allowed, need, current)
        if pick is None:
            return None
        t[k] = np.inf if pick == size else self.grids[k][pick]
        return float(correct[pick]), float(cost[pick]) / self.m

    @staticmethod
    def _index(grid: np.ndarray, value: float) -> int:
        j = int(np.searchsorted(grid, value))
        if j >= len(grid) or grid[j] != value:
            raise AssertionError(f"threshold {value!r} is not on its grid")
        return j

    def _pair_grid(self, k: int, idx: np.ndarray, current: float) -> Tuple[np.ndarray, np.ndarray]:
        """Model ``k``'s grid for a pair move over the samples ``idx``: ``pair_grid`` of their
        confidences at evenly spaced quantiles (the lowest included, so every sample has a rank),
        plus every one of their distinct confidences within ``pair_grid // 4`` of the current
        threshold (from the top when the model is not in the chain): coarse steps reach far, fine
        ones trade a few samples between the two stages. Works on ranks on the full grid (no sort).

        Returns:
            ``(grid, ranks)``: the grid values and each sample's rank on it.
        """
        full = self.ranks[k][idx]
        size = len(self.grids[k])
        counts = np.bincount(full, minlength=size)
        below_or_at = np.cumsum(counts)                                # samples with rank <= j
        picks = np.linspace(0, len(idx) - 1, self.pair_grid).round()
        chosen = [np.searchsorted(below_or_at, picks, side="right")]   # full-grid index of each pick
        present = np.flatnonzero(counts)                               # their distinct confidences
        window = self.pair_grid // 4
        if np.isfinite(current):
            j = self._index(self.grids[k], current)
            at = int(np.searchsorted(present, j))
            chosen += [np.array([j]), present[max(0, at - window): at + window + 1]]
        else:
            chosen.append(present[-window:] if window else present[:0])
        chosen = np.unique(np.concatenate(chosen))
        lookup = np.searchsorted(chosen, np.arange(size), side="right") - 1
        return self.grids[k][chosen], lookup[full]

    def _pair(self, t: np.ndarray, a: int, b: int, need: float) -> Optional[Tuple[float, float]]:
        """Re-choose models ``a < b`` jointly on quantile grids; the new ``(correct, cost)`` if the
        state changed, else None."""
        answer = self._answering(t, skip=(a, b))
        paid = self._paid(t, skip=(a, b))
        ga, gb = self.gmacs[a], self.gmacs[b]
        reach = answer > a
        idx = np.flatnonzero(reach)
        gone = np.flatnonzero(~reach)
        if len(idx) == 0:
            return None
        const_correct = float(self.correct[answer[gone], gone].sum())
        const_cost = float(paid[answer[gone]].sum())
        fallback = answer[idx]
        mid = fallback < b                                   # answered between a and b: never reach b
        right_fb = self.correct[fallback, idx]
        at_a = (self.correct[a, idx], np.full(len(idx), paid[a] + ga))
        at_b = (np.where(mid, right_fb, self.correct[b, idx]),
                np.where(mid, paid[fallback] + ga, paid[b] + ga + gb))
        past = (right_fb, np.where(mid, paid[fallback] + ga, paid[fallback] + ga + gb))
        grid_a, rank_a = self._pair_grid(a, idx, t[a])
        grid_b, rank_b = self._pair_grid(b, idx, t[b])
        ranks = [rank_a, rank_b]
        sizes = [len(grid_a), len(grid_b)]
        correct = answer_table(ranks, sizes, [at_a[0], at_b[0], past[0]]) + const_correct
        cost = answer_table(ranks, sizes, [at_a[1], at_b[1], past[1]]) + const_cost
        # "not in the chain": a's cost leaves every reaching sample, b's every sample reaching b
        cost[sizes[0], :] -= ga * len(idx)
        reach_b = answer_table(ranks[:1], sizes[:1], [np.zeros(len(idx)), (~mid).astype(np.float64)])
        cost[:, sizes[1]] -= gb * reach_b
        used = self._count(t, skip=(a, b))
        in_a = np.arange(sizes[0] + 1) < sizes[0]
        in_b = np.arange(sizes[1] + 1) < sizes[1]
        allowed = used + in_a[:, None].astype(int) + in_b[None, :].astype(int) <= self.limit
        ja = sizes[0] if not np.isfinite(t[a]) else self._index(grid_a, t[a])
        jb = sizes[1] if not np.isfinite(t[b]) else self._index(grid_b, t[b])
        pick = self._choose(correct, cost, allowed, need, ja * (sizes[1] + 1) + jb)
        if pick is None:
            return None
        ja, jb = divmod(pick, sizes[1] + 1)
        t[a] = np.inf if ja == sizes[0] else grid_a[ja]
        t[b] = np.inf if jb == sizes[1] else grid_b[jb]
        return float(correct.ravel()[pick]), float(cost.ravel()[pick]) / self.m

    # -- the descent -------------------------------------------------------------------------------

    def _cycle(self, t: np.ndarray, need: float, history: Optional[list]) -> Tuple[Dict[str, int], int, bool]:
        """Cyclic coordinate descent on ``t`` in place until a whole cycle of moves changes nothing."""
        moves = {"single": 0, "pair": 0}
        cycle = [("single", (k,)) for k in range(self.n)]
        if self.pair_grid > 0:
            cycle += [("pair", ab) for ab in itertools.combinations(range(self.n), 2)]
        quiet, done, converged = 0, 0, not cycle
        while cycle and done < self.max_passes * len(cycle):
            kind, which = cycle[done % len(cycle)]
            done += 1
            changed = self._single(t, which[0], need) if kind == "single" else self._pair(t, *which, need)
            if changed is not None:
                moves[kind] += 1
                quiet = 0
                if history is not None:
                    history.append((t.copy(), *changed))
            else:
                quiet += 1
                if quiet == len(cycle):
                    converged = True
                    break
        return moves, (-(-done // len(cycle)) if cycle else 0), converged

    def lagrangian(self, start: Sequence[float], mu: float) -> DescentResult:
        """The same moves on ``cost − mu · correct`` (``mu``: GMACs a right answer is worth), with
        no accuracy target: a point of the trade-off for every ``mu``, as DyCE's λ-weighted cost
        gives, but with every distinct threshold per move. Used to find starts for :meth:`run`."""
        t = np.array(start, dtype=np.float64)
        start_correct, start_cost = self.evaluate(t)
        self._mu = float(mu)  # the tables hold sums over samples: cost sum - mu * right answers
        try:
            moves, passes, converged = self._cycle(t, -np.inf, None)
        finally:
            self._mu = None
        correct, cost = self.evaluate(t)
        return DescentResult(thresholds=t, correct=correct, cost=cost, start_cost=start_cost, moves=moves,
                             passes=passes, converged=converged)

    def run(self, start: Sequence[float], need: float, record: bool = False) -> DescentResult:
        """Descends from ``start`` (a state meeting ``need``) at the target ``need`` right answers.

        Args:
            start: ``[n]`` thresholds per pool model (``inf``: not in the chain); every finite one
                must be a confidence of its model on this split.
            need: Right answers required on this split.
            record: Keep the state after every applied move (``history``; for tests).

        Returns:
            A :class:`DescentResult` (its cost is never above the start's).
        """
        t = np.array(start, dtype=np.float64)
        if t.shape != (self.n,):
            raise TinySaverError(f"a start needs {self.n} thresholds (one per pool model), got {t.shape}")
        if self._count(t) > self.limit:
            raise TinySaverError(f"the start has {self._count(t) + 1} stages, more than --max-stages {self.limit + 1}")
        start_correct, start_cost = self.evaluate(t)
        if start_correct < need - COUNT_TOL:
            raise TinySaverError(f"the start has {start_correct:g} right answers, fewer than the {need:g} needed")
        history = [(t.copy(), start_correct, start_cost)] if record else None
        moves, passes, converged = self._cycle(t, need, history)
        correct, cost = self.evaluate(t)
        return DescentResult(thresholds=t, correct=correct, cost=cost, start_cost=start_cost, moves=moves,
                             passes=passes, converged=converged, history=history)


__all__ = ["ChainDescent", "DescentResult", "DEFAULT_PAIR_GRID"]
