"""Bootstrap intervals of the calibrated accuracy and GMACs of a chain (:func:`bootstrap_chain_ci`)
and of a pair's ``tinysaver tradeoff`` row (:func:`tradeoff_ci`).

In the calibrated mode the reported accuracy and GMACs come from a threshold chosen on one split
and measured on another; each bootstrap draw resamples the calibration split (re-choosing the
thresholds, within the chosen chain) and the reported split (re-measuring) with multinomial counts,
and percentile intervals are reported. They describe the sampling variability of the numbers, not a
guarantee.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import TinySaverError
from ..records import Record, check_pair
from .pair import COUNT_TOL
from .search import DEFAULT_GRID
from .stages import CHUNK_CELLS, ChainStage, simulate_chain
from .tables import cell_thresholds, chain_table, grid_cells, grid_ranks, threshold_grid


def _resample(rng: np.random.Generator, n: int) -> np.ndarray:
    """Multinomial bootstrap counts: how often each of n samples is drawn in n draws."""
    return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def bootstrap_chain_ci(calib: Sequence[ChainStage], report: Sequence[ChainStage], drops: Sequence[float], *,
                       level: float = 0.95, draws: int = 1000, seed: int = 0, grid: int = DEFAULT_GRID,
                       max_cells: int = 257 ** 2) -> Dict[float, Optional[Dict[str, object]]]:
    """Percentile bootstrap intervals of the calibrated accuracy and GMACs of one chain.

    Each draw resamples the calibration split, re-chooses the cheapest thresholds within each drop
    (on the chain's grids: every distinct confidence unless the table would exceed ``max_cells``,
    then per-stage quantile grids — 256 values per stage for a 3-stage chain, so that 1,000 draws
    take seconds), resamples the reported split and measures them there. The chain itself is the
    one chosen on the full calibration split (the intervals are conditional on it).

    Args:
        calib: The chain (base last) on the calibration split.
        report: The same chain on the reported split.
        drops: Allowed drops in points.
        level: Interval level, e.g. 0.95.
        draws: Bootstrap draws.
        seed: Random seed.
        grid: Quantile grid size where the chain is too large for exact tables.
        max_cells: Largest per-draw table.

    Returns:
        Per drop ``{"level", "draws", "draws_reached", "acc": [lo, hi], "gmacs": [lo, hi], "grid"}``,
        or None when no draw reached the drop.
    """
    if not 0 < level < 1:
        raise TinySaverError(f"--ci must be a level in (0, 1), got {level}")
    if draws < 2:
        raise TinySaverError(f"bootstrap needs >= 2 draws, got {draws}")
    n = len(calib) - 1
    grids, exact = [threshold_grid(s.conf) for s in calib[:-1]], True
    if grid_cells(grids) > max_cells:
        grids, exact = [threshold_grid(s.conf, grid) for s in calib[:-1]], False
    if grid_cells(grids) > max_cells:
        size = max(2, int(max_cells ** (1.0 / n)) - 1)
        grids, exact = [threshold_grid(s.conf, size) for s in calib[:-1]], False
    ranks = [grid_ranks(s.conf, g) for s, g in zip(calib, grids)]
    sizes = [len(g) for g in grids]
    corrects, gmacs = [s.correct for s in calib], [s.gmacs for s in calib]
    rng = np.random.default_rng(seed)
    mc, mr = calib[0].num_samples, report[0].num_samples
    drops = [float(d) for d in drops]
    chosen = {d: np.full((draws, n), np.nan) for d in drops}
    reached = {d: np.zeros(draws, dtype=bool) for d in drops}
    for b in range(draws):
        w = _resample(rng, mc)
        correct, cost = chain_table(ranks, sizes, corrects, gmacs, weights=w)
        base_total = float((w * calib[-1].correct).sum())
        for d in drops:
            ok = correct >= base_total - d / 100.0 * mc - COUNT_TOL
            if ok.any():
                cell = int(np.argmin(np.where(ok, cost, np.inf)))
                chosen[d][b] = cell_thresholds(grids, [cell])[0]
                reached[d][b] = True
    acc = {d: np.full(draws, np.nan) for d in drops}
    cost_b = {d: np.full(draws, np.nan) for d in drops}
    rows = max(1, CHUNK_CELLS // mr)
    for start in range(0, draws, rows):
        sl = slice(start, min(draws, start + rows))
        weights = np.stack([_resample(rng, mr) for _ in range(sl.stop - sl.start)])
        for d in drops:
            hit = reached[d][sl]
            if hit.any():
                ev = simulate_chain(report, chosen[d][sl][hit], weights=weights[hit])
                acc[d][sl][hit], cost_b[d][sl][hit] = ev.acc, ev.gmacs
    tails = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    out: Dict[float, Optional[Dict[str, object]]] = {}
    for d in drops:
        k = int(reached[d].sum())
        if k == 0:
            out[d] = None
            continue
        out[d] = {"level": level, "draws": draws, "draws_reached": k,
                  "acc": np.quantile(acc[d][reached[d]], tails).tolist(),
                  "gmacs": np.quantile(cost_b[d][reached[d]], tails).tolist(),
                  "grid": "exact" if exact else f"grid-{max(sizes)}",
                  "method": "percentile bootstrap: calibration split resampled (thresholds re-chosen within "
                            "the chain), reported split resampled (re-measured)"}
    return out


def tradeoff_ci(calib_saver: Record, calib_base: Record, saver: Record, base: Record,
                drops: Sequence[float], *, level: float = 0.95, draws: int = 1000,
                seed: int = 0) -> Dict[float, Optional[Dict[str, object]]]:
    """:func:`bootstrap_chain_ci` for the 2-stage ``tinysaver tradeoff`` in its calibrated mode:
    intervals of the measured accuracy and GMACs of each ``required`` cell.

    Examples:
        >>> intervals = tradeoff_ci(s_holdout, b_holdout, s_test, b_test, [1.0, 0.5])  # doctest: +SKIP
        >>> intervals[0.5]["acc"], intervals[0.5]["gmacs"]  # doctest: +SKIP
    """
    check_pair(calib_saver, calib_base)
    check_pair(saver, base)
    calib = [ChainStage.from_record(calib_saver), ChainStage.from_record(calib_base)]
    report = [ChainStage.from_record(saver), ChainStage.from_record(base)]
    return bootstrap_chain_ci(calib, report, drops, level=level, draws=draws, seed=seed)


__all__ = ["bootstrap_chain_ci", "tradeoff_ci"]
