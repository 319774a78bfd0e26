"""Configuration search over an ESN's exits (paper §4.3, §6.4: "DyCE to tune exit thresholds").

An ESN is a chain whose stages are, in this order: the saver, exit 1 … exit E, the base's own
output. Each stage's record holds its *incremental* cost (the base segments it adds, its token, the
causal layers over the tokens so far, its head). That accounting is exact for one chain only, the
full one: exit ``n`` cannot be reached without the segments before it, and the saver's features are
token 0 of every exit. So the search is the planner's exact N-dimensional table
(:func:`tinysaver.analysis.search_chains`) restricted to that chain, over every threshold combination
including +inf: an exit whose threshold is +inf is *not used* (nothing exits there; its segments
still run because later stages need them). Which exits are used and at which thresholds is what
DyCE searches; here it is searched exhaustively on a per-stage threshold grid.

Why not ``tinysaver plan`` on the exit records as they are: ``plan`` orders a pool by cost and also
searches sub-chains that skip stages. With incremental costs an exit (a few base blocks) can cost
less than the saver, so it would be put before it, and a chain that skips exit 1 would not pay for
the segments exit 2 runs on. The search here keeps the ESN's order and the full chain.

Honest mode as everywhere: thresholds chosen on the calibration split, measured on the reported one.

Examples:
    >>> plan = plan_exits(test_records, holdout_records, base_gmacs=0.0291)  # doctest: +SKIP
    >>> plan.required[0.5].thresholds, plan.required[0.5].gmacs             # doctest: +SKIP
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np

from ..analysis import (DEFAULT_EXACT_CELLS, PAPER_DROPS, ChainPoint, ChainStage, GridMeter, Oracle, Plan,
                        search_chains)
from ..errors import TinySaverError
from ..records import Record, check_pair

# The rounding of ``drop / 100 * M`` (as in :mod:`tinysaver.analysis`).
_COUNT_TOL = 1e-6
#: Cells of the threshold table searched by default (a few float64 arrays of this size in memory).
DEFAULT_CELLS = 2 ** 22


def auto_grid(num_thresholds: int, cells: int = DEFAULT_CELLS, cap: int = 512) -> int:
    """Largest per-stage grid whose table of ``num_thresholds`` axes has at most ``cells`` cells."""
    if num_thresholds <= 0:
        return cap
    return int(max(2, min(cap, math.floor(cells ** (1.0 / num_thresholds)) - 1)))


def _check_stages(records: Sequence[Record], what: str) -> None:
    if len(records) < 2:
        raise TinySaverError(f"{what}: an ESN has at least the saver and the base's output")
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        raise TinySaverError(f"{what}: stage names repeat ({', '.join(names)})")
    for rec in records[:-1]:
        check_pair(rec, records[-1])


def _check_same_stages(report: Sequence[Record], calib: Sequence[Record]) -> None:
    if len(report) != len(calib):
        raise TinySaverError(f"{len(calib)} calibration records for {len(report)} stages: give the same stages "
                             f"in the same order")
    for r, c in zip(report, calib):
        if r.name != c.name or r.gmacs != c.gmacs:
            raise TinySaverError(f"calibration record {c.path or c.name} ({c.name}, {c.gmacs:g} GMACs) does not match "
                                 f"the reported stage {r.path or r.name} ({r.name}, {r.gmacs:g} GMACs)")


def esn_oracle(stages: Sequence[ChainStage]) -> Oracle:
    """Each sample answered by the *earliest* stage that gets it right (the base when none does),
    paying the cumulative cost up to there: the bound no threshold choice of this ESN can beat."""
    right = np.stack([s.correct > 0 for s in stages])
    chosen = np.where(right.any(axis=0), np.argmax(right, axis=0), len(stages) - 1)
    paid = np.cumsum([s.gmacs for s in stages])
    counts = np.bincount(chosen, minlength=len(stages)) / len(chosen)
    return Oracle(acc=float(right[chosen, np.arange(len(chosen))].mean()), gmacs=float(paid[chosen].mean()),
                  models=[s.name for s in stages], answered=counts.tolist())


def plan_exits(report: Sequence[Record], calib: Sequence[Record], *, base_gmacs: float,
               drops: Sequence[float] = PAPER_DROPS, grid: Optional[int] = None,
               max_exact_cells: int = DEFAULT_EXACT_CELLS, best_pair: Optional[Dict[float, Optional[ChainPoint]]] = None,
               progress: Optional[bool] = False) -> Plan:
    """The cheapest use of an ESN's exits for each allowed accuracy drop, chosen on ``calib`` and
    measured on ``report``.

    Args:
        report: Records of the stages on the reported split, in the ESN's order: saver, exits, the
            base's own output (last), each with its incremental GMACs.
        calib: The same stages on the calibration split.
        base_gmacs: Cost of the base alone (the reference of the drops and percentages; the last
            stage's record holds only the segments after the last exit and the head).
        drops: Allowed accuracy drops in points, relative to the base's accuracy on each split.
        grid: Per-stage quantile grid (None: the largest with at most :data:`DEFAULT_CELLS` cells).
        max_exact_cells: Searched over every distinct confidence when the table is at most this big.
        best_pair: Points to show as the "best pair" column (e.g. plain TinySaver with the same saver).
        progress: Progress bar of the search.

    Returns:
        A :class:`tinysaver.analysis.Plan` (``selection`` "calibrated", one chain), so the plan reports
        (:func:`tinysaver.report.plan.plan_markdown`, ``plot_plan``) apply.
    """
    _check_stages(report, "reported split")
    _check_stages(calib, "calibration split")
    _check_same_stages(report, calib)
    rep = [ChainStage.from_record(r) for r in report]
    cal = [ChainStage.from_record(r) for r in calib]
    k = len(rep)
    grid = auto_grid(k - 1) if grid is None else int(grid)
    full = tuple(range(k))
    search = search_chains(cal, max_stages=k, grid=grid, max_exact_cells=max_exact_cells, chains=[full],
                           progress=progress)
    merged = search.merged()
    meter = GridMeter(rep, search.grids[0])
    m_cal, m_rep = search.num_samples, rep[0].num_samples
    base_correct_rep = float(rep[-1].correct.sum())
    names = [s.name for s in rep]

    def point(count: int) -> ChainPoint:
        cell = np.array([merged.cell[count]])
        measured = meter.at(cell)
        return ChainPoint(stages=names, thresholds=search.thresholds(0, cell)[0].tolist(),
                          answered=measured.answered[0].tolist(), acc=float(measured.acc[0]),
                          gmacs=float(measured.gmacs[0]), calib_acc=count / m_cal, calib_gmacs=float(merged.cost[count]))

    required: Dict[float, Optional[ChainPoint]] = {}
    for drop in (float(d) for d in drops):
        count = merged.cheapest(search.base_correct - drop / 100.0 * m_cal)
        if count is None:
            required[drop] = None
            continue
        p = point(count)
        p.meets_target = bool(p.acc * m_rep >= base_correct_rep - drop / 100.0 * m_rep - _COUNT_TOL)
        required[drop] = p
    front = sorted((point(int(c)) for c in merged.front()), key=lambda p: p.gmacs)
    cumulative = np.cumsum([s.gmacs for s in rep]).tolist()
    return Plan(
        base=names[-1], base_acc=base_correct_rep / m_rep, base_gmacs=float(base_gmacs), pool=names[:-1],
        skipped=[], max_stages=k, mode=search.mode, selection="calibrated", num_samples=m_rep, front=front,
        required=required, best_pair=dict(best_pair or {}), oracle=esn_oracle(rep),
        models=[{"name": s.name, "gmacs": s.gmacs, "cumulative_gmacs": c, "acc": float(s.correct.mean())}
                for s, c in zip(rep, cumulative)],
        search={"chains": 1, "exact_chains": int(search.exact[0]), "grid_chains": int(not search.exact[0]),
                "grid": grid, "max_exact_cells": max_exact_cells, "searched_on": "calibration",
                "chain": "the full ESN chain (saver, every exit, the base's output); +inf: exit not used"},
        extra={"calibration": {"num_samples": m_cal, "base_acc": search.base_correct / m_cal}})


__all__ = ["plan_exits", "esn_oracle", "auto_grid", "DEFAULT_CELLS"]
