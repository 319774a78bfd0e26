"""Thresholds and plans with the *expected*-drop guarantee: conformal risk control on records.

:mod:`tinysaver.analysis.crc` is the rule on arrays; this module runs it on a pair, on a chain and
over the planner's answers, and reports a :class:`~tinysaver.analysis.calibrate.Calibration` with
``guarantee="expected"``: averaged over the draw of the calibration set, the accuracy drop vs the
base on new data from the same distribution is at most the target (the loss, its monotonicity and
the proof: :mod:`tinysaver.analysis.crc`).

- A pair (:func:`crc_calibrate_pair`) uses every calibration sample: its candidate thresholds are
  the distinct calibration confidences.
- A chain (:func:`crc_calibrate_chain`) and the planner (:func:`crc_certify_plan`) split the
  calibration set at random in two halves (as Learn then Test does, same ``seed``): on the first,
  the cheapest configuration within the drop (of that chain, or of any chain of the pool) is
  found; the path runs from the base alone to it, every stage's exit share scaled
  (:func:`~tinysaver.analysis.crc.exit_share_family`, 64 configurations); CRC runs along it on the
  second half. Conditional on the first half the path is fixed, so the guarantee holds.

May import: numpy, the tinysaver core, and the analysis modules below it.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import TinySaverError
from ..records import Record
from .calibrate import PATH_CELLS, Calibration, describe, on_report, split_halves
from .crc import check_drop, check_samples, crc_pair_threshold, crc_path, exit_share_family, min_samples
from .search import DEFAULT_EXACT_CELLS, DEFAULT_GRID, search_chains, search_plan
from .stages import ChainStage, answering_stage, check_chain_records
from .tables import grid_cells, threshold_grid

#: Configurations on a chain's path (base alone excluded).
FAMILY = 64

_PAIR = "conformal risk control over every distinct calibration confidence (no split)"
_SPLIT = ("conformal risk control with data splitting: half the calibration set finds the cheapest {what} within the "
          "drop, the other half runs the rule along a path from the base alone to it (each stage's exit share "
          "scaled, {num} configurations)")


def crc_calibrate_pair(conf, saver_correct, base_correct, drop: float, *, saver_gmacs: float = 0.0,
                       base_gmacs: float = 0.0, names: Sequence[str] = ("saver", "base")) -> Calibration:
    """The lowest threshold whose expected accuracy drop on new data is <= ``drop`` points.

    Args:
        conf: Saver confidence on the calibration split ``[n]``.
        saver_correct: 1/0 per sample.
        base_correct: 1/0 per sample.
        drop: Allowed expected drop in points, ``[0, 100)``.
        saver_gmacs: Saver cost (for ``calib_gmacs``).
        base_gmacs: Base cost.
        names: Saver and base names.

    Returns:
        A :class:`Calibration` (threshold ``inf``: nothing could be certified).
    """
    check_drop(drop)
    check_samples(len(conf), drop)
    r = crc_pair_threshold(conf, saver_correct, base_correct, drop)
    stages = [ChainStage(names[0], float(saver_gmacs), np.asarray(conf, dtype=np.float64),
                         np.asarray(saver_correct, dtype=np.float64)),
              ChainStage(names[1], float(base_gmacs), np.ones(len(conf)), np.asarray(base_correct, dtype=np.float64))]
    return Calibration(stages=list(names), thresholds=[r.threshold], drop=drop, delta=None, method="crc",
                       tested=r.tested, rejected=r.admissible, procedure=_PAIR, guarantee="expected",
                       extra={"calib_loss": r.calib_loss}, **describe(stages, np.array([r.threshold])))


def _along(path: np.ndarray, test_half: Sequence[ChainStage], drop: float):
    """CRC along ``path`` ``[K, S]`` on ``test_half``: (admissible count, chosen vector, mean loss)."""
    correct = np.stack([s.correct for s in test_half])
    cols = np.arange(test_half[0].num_samples)

    def columns(sl: slice) -> np.ndarray:
        return correct[answering_stage(test_half, path[sl]), cols]

    r = crc_path(columns, test_half[-1].correct, len(path), drop)
    chosen = path[r.admissible - 1] if r.admissible else np.full(path.shape[1], np.inf)
    return r, chosen


def crc_calibrate_chain(stages: Sequence[ChainStage], drop: float, seed: int = 0, *, grid: int = DEFAULT_GRID,
                        max_exact_cells: int = DEFAULT_EXACT_CELLS, family: int = FAMILY) -> Calibration:
    """Thresholds for every stage of a chain (base last) with the expected-drop guarantee; a pair
    uses :func:`crc_calibrate_pair` (every sample, no split)."""
    check_drop(drop)
    if len(stages) < 2:
        raise TinySaverError("a chain to calibrate needs at least one saver before the base")
    if len(stages) == 2:
        s, b = stages
        return crc_calibrate_pair(s.conf, s.correct, b.correct, drop, saver_gmacs=s.gmacs, base_gmacs=b.gmacs,
                                  names=(s.name, b.name))
    search_half, test_half = split_halves(stages, seed)
    check_samples(test_half[0].num_samples, drop)
    savers = len(stages) - 1
    if grid_cells([threshold_grid(s.conf) for s in search_half[:-1]]) > max_exact_cells:
        grid = min(grid, max(2, int(PATH_CELLS ** (1.0 / savers)) - 1))   # as Learn then Test's path
    search = search_chains(search_half, grid=grid, max_exact_cells=max_exact_cells,
                           chains=[tuple(range(len(stages)))], progress=False)
    merged = search.merged()
    cheapest = merged.cheapest(search.base_correct - drop / 100.0 * search.num_samples)
    end = (np.full(savers, np.inf) if cheapest is None
           else search.thresholds(0, merged.cell[[cheapest]])[0].astype(np.float64))
    path = exit_share_family([s.conf for s in search_half[:-1]], end, family)
    r, t = _along(path, test_half, drop)
    return Calibration(
        stages=[s.name for s in stages], thresholds=t.tolist(), drop=drop, delta=None, method="crc",
        tested=len(path), rejected=r.admissible, guarantee="expected",
        procedure=_SPLIT.format(what="configuration of this chain", num=len(path)),
        extra={"calib_loss": r.calib_loss, "end": [float(x) for x in end],
               "split": {"search": search_half[0].num_samples, "test": test_half[0].num_samples, "seed": seed,
                         "search_mode": search.mode}},
        **describe(stages, t[None, :]))


def crc_certify_plan(calib: Sequence[ChainStage], report: Optional[Sequence[ChainStage]], drops: Sequence[float], *,
                     max_stages: int = 3, seed: int = 0, family: int = FAMILY, grid: int = DEFAULT_GRID,
                     max_exact_cells: int = DEFAULT_EXACT_CELLS, descent: bool = True, starts: int = 1,
                     pair_grid: Optional[int] = None, sweep: int = 16) -> Dict[float, Calibration]:
    """The planner with the expected-drop guarantee: per drop, a chain and thresholds whose
    accuracy drop on new data is <= ``drop`` points on average over the calibration draw.

    Half A of the calibration split (``seed``, the halves of Learn then Test's
    :func:`~tinysaver.analysis.calibrate.certify_plan`) runs the planner
    (:func:`~tinysaver.analysis.search.search_plan`) at each drop; CRC runs on half B along the
    path from the base alone to that answer (:func:`~tinysaver.analysis.crc.exit_share_family`). A
    drop where nothing is admitted gets the base alone (an honest answer, not an error).

    Args:
        calib: Pool by cost then the base, on the calibration split.
        report: The same models on the reported split (measured there when given), or None.
        drops: Allowed expected drops in points, ``[0, 100)``.
        max_stages: Longest chain.
        seed: Halves of the calibration split.
        family: Configurations on each path.
        grid: As in :func:`~tinysaver.analysis.search.search_plan`.
        max_exact_cells: As there.
        descent: As there.
        starts: As there.
        pair_grid: As there.
        sweep: As there.

    Returns:
        Per drop a :class:`Calibration` (``extra``: the path's end and, with ``report``, ``acc``,
        ``gmacs``, ``answered`` and ``meets_target`` measured there).
    """
    drops = [float(d) for d in drops]
    for d in drops:
        check_drop(d)
    search_half, test_half = split_halves(calib, seed)
    n_search, n_test = search_half[0].num_samples, test_half[0].num_samples
    # a drop no data of this size can certify (0, or below 1/(n+1)) gets the base alone; an error
    # only when that is true of every positive drop asked for
    possible = [d for d in drops if d > 0 and n_test >= min_samples(d)]
    positive = [d for d in drops if d > 0]
    if positive and not possible:
        check_samples(n_test, max(positive))
    savers = len(calib) - 1
    planned = search_plan(search_half, max_stages, sorted(set(possible)), grid=grid, max_exact_cells=max_exact_cells,
                          descent=descent, starts=starts, pair_grid=pair_grid, sweep=sweep,
                          progress=False) if possible else None
    out: Dict[float, Calibration] = {}
    for d in drops:
        choice = planned.choices[d] if d in possible else None
        end = np.full(savers, np.inf)
        if choice is not None:
            end[list(choice.chain[:-1])] = choice.thresholds
        path = exit_share_family([s.conf for s in search_half[:-1]], end, family)
        r, chosen = _along(path, test_half, d)
        chain = [k for k in range(savers) if np.isfinite(chosen[k])] + [savers]
        t = chosen[chain[:-1]]
        extra: Dict[str, object] = {
            "calib_loss": r.calib_loss,
            "split": {"search": n_search, "test": n_test, "seed": seed,
                      "search_mode": planned.mode if planned is not None else None},
            "end": {"stages": [calib[k].name for k in range(savers) if np.isfinite(end[k])] + [calib[-1].name],
                    "thresholds": [float(x) for x in end[np.isfinite(end)]]}}
        if d not in possible:
            extra["why"] = ("a drop of 0 cannot be certified: the new sample's loss counts 1/(n+1) > 0" if d == 0 else
                            f"the test half has {n_test} samples, a {d:g}-point drop needs at least {min_samples(d)}")
        if report is not None:
            extra.update(on_report(report, chain, t, d))
        out[d] = Calibration(
            stages=[calib[k].name for k in chain], thresholds=t.tolist(), drop=d, delta=None, method="crc",
            tested=len(path), rejected=r.admissible, guarantee="expected",
            procedure=_SPLIT.format(what="configuration of any chain (the planner)", num=len(path)),
            extra=extra, **describe([calib[k] for k in chain], t[None, :]))
    return out


def crc_calibrate_records(records: Sequence[Record], drop: float, seed: int = 0) -> Calibration:
    """:func:`crc_calibrate_chain` on records (savers by increasing cost, base last)."""
    check_drop(drop)
    check_chain_records(records)
    return crc_calibrate_chain([ChainStage.from_record(r) for r in records], drop, seed)
