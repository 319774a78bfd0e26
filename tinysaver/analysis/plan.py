"""The planner's answer: the cheapest chain of savers for each allowed accuracy drop, the Pareto
front, the best pair and the oracle (:func:`plan_chains`), and a chain of records at given
thresholds (:func:`chain_from_records`).

The search itself is :mod:`tinysaver.analysis.search` (tables, then the descent of
:mod:`tinysaver.analysis.descent`); in the calibrated mode :mod:`tinysaver.analysis.calibrate`
certifies and :mod:`tinysaver.analysis.bootstrap` gives intervals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import TinySaverError
from ..records import Record
from ..thresholds import check_thresholds, threshold_to_json
from .bootstrap import bootstrap_chain_ci
from .calibrate import certify_plan
from .crc_calibrate import crc_certify_plan
from .pair import COUNT_TOL, PAPER_DROPS
from .pools import check_calibration, check_pool, split_pool
from .search import DEFAULT_EXACT_CELLS, DEFAULT_GRID, ChainSearch, Choice, Merged, search_plan
from .stages import ChainStage, check_chain_records, simulate_chain
from .tables import GridMeter


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


def oracle(stages: Sequence[ChainStage]) -> Oracle:
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


def _points(search: ChainSearch, merged: Merged, counts: Sequence[int], report: Optional[Sequence[ChainStage]],
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


def _choice_point(choice: Choice, searched: Sequence[ChainStage], report: Optional[Sequence[ChainStage]]) -> ChainPoint:
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
                certify_method: str = "wsr", certify_expected: bool = False,
                progress: Optional[bool] = None) -> Plan:
    """The cheapest chain of savers in front of ``base`` for each allowed accuracy drop.

    Searches every chain of 1 to ``max_stages`` stages ending with the base (pool members ordered by
    cost; members as costly as the base are skipped) and their thresholds (:func:`search_plan`):
    tables over every threshold combination where they fit (exact on small data, quantile grids
    for chains of up to 3 stages at scale), then the coordinate descent of
    :mod:`tinysaver.analysis.descent` for longer chains and to refine grid answers. Reports the Pareto
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
            :func:`tinysaver.analysis.calibrate.certify_plan`): thresholds whose drop on new data is within
            the target with probability >= 1 − δ, reported as ``certified``.
        certify_method: Upper-bound method of the certification (see :mod:`tinysaver.analysis.calibrate`).
        certify_expected: Also (or, with ``certify=None``, only) a conformal-risk-control choice per
            drop (calibrated mode only; :func:`tinysaver.analysis.crc_calibrate.crc_certify_plan`):
            thresholds whose drop on new data is within the target on average over the calibration
            draw, reported as ``certified_expected``.
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
    if certify_expected and calib_base is None:
        raise TinySaverError("--certify-method crc needs the calibrated mode (--calib-base and --calib-pool)")
    if ci is not None and not 0 < ci < 1:
        raise TinySaverError(f"--ci must be a level in (0, 1), e.g. 0.95, got {ci}")
    if grid < 2:
        raise TinySaverError(f"--grid must be >= 2, got {grid}")
    check_pool(base, pool, "--pool")
    if calib_base is not None:
        check_pool(calib_base, calib_pool, "--calib-pool")
        check_calibration(pool, calib_pool, base, calib_base)
    order, skipped = split_pool(base, pool)
    report = [ChainStage.from_record(pool[i]) for i in order] + [ChainStage.from_record(base)]
    if max_stages > len(report):  # no chain is longer than the pool + the base: say what was searched
        max_stages = len(report)
    calib = None
    if calib_base is not None:
        calib = [ChainStage.from_record(calib_pool[i]) for i in order] + [ChainStage.from_record(calib_base)]
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
            point.meets_target = bool(point.acc * m_report >= base_correct - drop / 100.0 * m_report - COUNT_TOL)
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
        certified = certify_plan(calib, report, [d for d in drops if d >= 0], certify, max_stages=max_stages,
                                 method=certify_method, seed=seed, grid=grid, max_exact_cells=max_exact_cells,
                                 descent=descent, pair_grid=pair_grid, sweep=sweep)
        extra["certified"] = {repr(d): c.to_json() for d, c in certified.items()}
    if certify_expected:
        expected = crc_certify_plan(calib, report, [d for d in drops if d >= 0], max_stages=max_stages, seed=seed,
                                    grid=grid, max_exact_cells=max_exact_cells, descent=descent,
                                    pair_grid=pair_grid, sweep=sweep)
        extra["certified_expected"] = {repr(d): c.to_json() for d, c in expected.items()}
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


def chain_from_records(records: Sequence[Record], thresholds: Sequence[float]) -> ChainPoint:
    """What a chain of records (savers by increasing cost, base last) does at the given thresholds."""
    check_chain_records(records)
    t = np.asarray(check_thresholds(thresholds, len(records)), dtype=np.float64)
    stages = [ChainStage.from_record(r) for r in records]
    ev = simulate_chain(stages, t)
    return ChainPoint(stages=[s.name for s in stages], thresholds=t.tolist(), answered=ev.answered[0].tolist(),
                      acc=float(ev.acc[0]), gmacs=float(ev.gmacs[0]))


__all__ = ["ChainPoint", "Oracle", "Plan", "oracle", "plan_chains", "chain_from_records"]
