"""Thresholds users can trust: a distribution-free bound on the accuracy drop, and bootstrap intervals.

**The guarantee.** :func:`calibrate_pair` returns a threshold ``t̂`` such that, with probability at
least ``1 − δ`` over the draw of the calibration set, the accuracy drop of the cascade on new data
from the same distribution (i.i.d. with the calibration samples) is at most the target:
``acc_base − acc_cascade(t̂) <= drop``, accuracies being expectations over that distribution. A
finite test set measures them with its own sampling noise (standard error of the measured drop:
``sqrt(Var(L) / n)``, ``L`` the per-sample loss below), so a certified threshold can read slightly
above its target there. It is Learn then Test (Angelopoulos, Bates, Candès, Jordan,
Lei, "Learn then Test: Calibrating predictive algorithms to achieve risk control", arXiv:2110.01052,
2021) with fixed-sequence testing:

- per-sample loss ``L_i(t) = 1[c_i >= t] · (1[base right] − 1[saver right]) ∈ {−1, 0, 1}``, whose
  mean is exactly the accuracy drop at ``t``; null hypothesis ``H_t: E[L(t)] > α`` with
  ``α = drop / 100``;
- hypotheses are tested from the most confident threshold down (every distinct calibration
  confidence; t = +∞, where nothing exits, has drop 0 <= α and needs no test); the first one not
  rejected stops the sequence and the lowest rejected threshold is returned (+inf when none is,
  and when the first is not: too few samples cannot certify anything). The statistics only
  change where a calibration sample enters, so this is fixed-sequence testing over *every* real
  threshold, and it controls the family-wise error at δ: the returned threshold violates the target
  only if the largest violating threshold was rejected, which has probability ``<= δ``;
- ``H_t`` is rejected when a valid ``1 − δ`` upper confidence bound of ``E[L(t)]`` is ``<= α``.
  Methods (losses rescaled to ``(L + 1) / 2 ∈ [0, 1]`` where a bound needs ``[0, 1]``):

  * ``wsr`` (default): the betting confidence sequence of Waudby-Smith & Ramdas, "Estimating means
    of bounded random variables by betting", JRSS-B 86(1), 2024 (arXiv:2010.09686), with the
    predictable plug-in bets used in the reference code of Bates et al. (RCPS); variance-adaptive:
    a loss that is mostly 0 (saver and base agree) gives a tight bound. The samples are taken in a
    fixed random order (``seed``); the guarantee holds for any order.
  * ``bernstein``: the empirical Bernstein bound of Maurer & Pontil, "Empirical Bernstein bounds
    and sample variance penalization", COLT 2009, Theorem 4 (variance-adaptive, closed form; its
    ``7 ln(2/δ) / 3(n−1)`` term needs a few thousand samples for drops under a point).
  * ``hoeffding-bentkus``: the Hoeffding–Bentkus p-value of Bates, Angelopoulos, Lei, Malik,
    Jordan, "Distribution-free, risk-controlling prediction sets", JACM 68(6), 2021
    (arXiv:2101.02703). Valid but not variance-adaptive: after rescaling, the mean sits near 1/2
    where it is so loose that realistic drops let nothing exit.

Limits worth knowing: the first hypotheses let only the most confident samples exit, where saver
and base mostly agree (loss 0); at ``drop = 0`` such a hypothesis carries no evidence against
``E[L] > 0``, so the sequence stops at once and nothing exits unless the drop target is positive.
With few calibration samples the bound's width decides: e.g. 2,000 samples certify a 0.5-point
drop only where the saver is *better* than the base on the exited samples (see the tests).

For a chain (:func:`calibrate_chain`) there is no natural order of threshold vectors, so the
calibration set is split at random in two halves (data splitting, as in LTT section 4): the first
half runs the planner on the chain and orders its Pareto front from the most to the least
expensive configuration; the second half tests along that path with fixed-sequence testing and the
loss ``1[base right] − 1[answering stage right]``. Conditional on the first half the path is fixed,
so the same ``1 − δ`` guarantee holds (with half the samples to test on).

Bootstrap intervals of the calibrated numbers are :mod:`tinysaver.analysis.bootstrap`'s.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> conf = rng.random(5000)
    >>> saver_right = (rng.random(5000) < 0.5 + 0.5 * conf).astype(float)
    >>> result = calibrate_pair(conf, saver_right, np.ones(5000) * 0.9 > rng.random(5000),
    ...                         drop=1.0, delta=0.1)
    >>> 0 < result.calib_exit_ratio < 1
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import TinySaverError
from ..records import Record
from ..thresholds import threshold_to_json
from .bounds import METHODS, check_target, fixed_sequence
from .crc import promise as crc_promise
from .pair import COUNT_TOL
from .search import DEFAULT_EXACT_CELLS, DEFAULT_GRID, search_chains, search_plan, search_tables
from .stages import ChainStage, answering_stage, check_chain_records, simulate_chain
from .tables import grid_cells, threshold_grid

#: Largest table a chain's calibration path is read from (long chains get coarser grids).
PATH_CELLS = 2 ** 22


# --- results ------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """A calibrated threshold (or one per stage) and what it did on the calibration split."""

    stages: List[str]
    thresholds: List[float]
    drop: float
    delta: Optional[float]
    method: str
    samples: int
    calib_acc: float
    calib_base_acc: float
    calib_exit_ratio: float
    calib_answered: List[float]
    calib_gmacs: float
    tested: int
    rejected: int
    procedure: str
    extra: Dict[str, object] = field(default_factory=dict)
    #: ``"high-probability"`` (Learn then Test: ``delta`` applies) or ``"expected"`` (conformal risk
    #: control, :mod:`tinysaver.analysis.crc_calibrate`: no ``delta``; ``tested``/``rejected`` count
    #: the configurations on its path and those the rule admits).
    guarantee: str = "high-probability"

    def promise(self) -> str:
        """What is guaranteed, in one sentence."""
        if self.guarantee == "expected":
            return crc_promise(self.drop)
        return (f"with probability >= {1 - self.delta:g} over the calibration draw, the expected accuracy drop vs "
                f"the base on new i.i.d. data is <= {self.drop:g} points (a finite test set adds its own sampling "
                "noise)")

    def to_json(self) -> Dict[str, object]:
        out: Dict[str, object] = {"stages": self.stages}
        if len(self.thresholds) == 1:
            out["threshold"] = threshold_to_json(self.thresholds[0])
        else:
            out["thresholds"] = [threshold_to_json(t) for t in self.thresholds]
        out.update(drop=self.drop, delta=self.delta, method=self.method, samples=self.samples,
                   calib_exit_ratio=self.calib_exit_ratio, calib_acc=self.calib_acc,
                   calib_base_acc=self.calib_base_acc, calib_answered=self.calib_answered,
                   calib_gmacs=self.calib_gmacs)
        if self.guarantee == "expected":
            del out["delta"]
            out.update(configurations_tested=self.tested, configurations_admitted=self.rejected)
        else:
            out.update(hypotheses_tested=self.tested, hypotheses_rejected=self.rejected)
        out.update(procedure=self.procedure, guarantee=self.guarantee, promise=self.promise())
        out.update(self.extra)
        return out


def describe(stages: Sequence[ChainStage], t: np.ndarray, **kw) -> Dict[str, object]:
    """The calibration-split fields of a :class:`Calibration` for thresholds ``t`` ``[1, K-1]``."""
    ev = simulate_chain(stages, t)
    return dict(calib_acc=float(ev.acc[0]), calib_answered=ev.answered[0].tolist(),
                calib_exit_ratio=float(1.0 - ev.answered[0, -1]), calib_gmacs=float(ev.gmacs[0]),
                calib_base_acc=float(stages[-1].correct.mean()), samples=stages[0].num_samples, **kw)


# --- 2 stages -------------------------------------------------------------------------------------

def ltt_pair_threshold(conf: np.ndarray, saver_correct: np.ndarray, base_correct: np.ndarray,
                       drop: float, delta: float, method: str = "wsr", seed: int = 0) -> tuple:
    """The LTT threshold of a saver/base pair (see the module docstring).

    Thresholds that add only samples on which saver and base agree leave the loss vector unchanged,
    so one test per *level* (number of exited samples with a nonzero loss) covers all of them.

    Returns:
        ``(threshold, tested, rejected)``: +inf when no threshold is rejected.
    """
    conf = np.asarray(conf, dtype=np.float64)
    loss = np.asarray(base_correct, dtype=np.float64) - np.asarray(saver_correct, dtype=np.float64)
    n = len(conf)
    order = np.argsort(-conf, kind="stable")
    conf_desc = conf[order]
    group_end = np.flatnonzero(np.append(conf_desc[1:] != conf_desc[:-1], True))
    nonzero_desc = loss[order] != 0
    level_at_group = np.cumsum(nonzero_desc)[group_end]   # nonzero losses exited at each threshold
    levels = np.unique(level_at_group)
    last_group = np.searchsorted(level_at_group, levels, side="right") - 1
    # rank of each nonzero-loss sample in the exit order (zero-loss samples never matter)
    rank = np.full(n, n + 1)
    rank[order[nonzero_desc]] = np.arange(int(nonzero_desc.sum()))
    perm = np.random.default_rng(seed).permutation(n)
    loss_p, rank_p = loss[perm], rank[perm]

    def columns(sl: slice) -> np.ndarray:
        return loss_p[None, :] * (rank_p[None, :] < levels[sl, None])

    rejected = fixed_sequence(columns, len(levels), n, drop / 100.0, delta, method)
    t = np.inf if rejected == 0 else float(conf_desc[group_end[last_group[rejected - 1]]])
    return t, len(levels), rejected


def calibrate_pair(conf, saver_correct, base_correct, drop: float, delta: float, method: str = "wsr",
                   seed: int = 0, saver_gmacs: float = 0.0, base_gmacs: float = 0.0,
                   names: Sequence[str] = ("saver", "base")) -> Calibration:
    """A threshold whose accuracy drop on new data is <= ``drop`` points with probability >= 1 − δ.

    Args:
        conf: Saver confidence on the calibration split ``[n]``.
        saver_correct: 1/0 per sample.
        base_correct: 1/0 per sample.
        drop: Allowed accuracy drop in percentage points (>= 0).
        delta: Allowed probability that the calibration draw breaks the guarantee.
        method: One of :data:`METHODS`.
        seed: Order of the samples for ``wsr``.
        saver_gmacs: Saver cost (for the reported ``calib_gmacs``).
        base_gmacs: Base cost.
        names: Saver and base names.

    Returns:
        A :class:`Calibration` (threshold +inf when no threshold can be certified).
    """
    check_target(drop, delta, method)
    stages = [ChainStage(names[0], float(saver_gmacs), np.asarray(conf, dtype=np.float64),
                    np.asarray(saver_correct, dtype=np.float64)),
              ChainStage(names[1], float(base_gmacs), np.ones(len(conf)), np.asarray(base_correct, dtype=np.float64))]
    t, tested, rejected = ltt_pair_threshold(conf, saver_correct, base_correct, drop, delta, method, seed)
    return Calibration(stages=list(names), thresholds=[t], drop=drop, delta=delta, method=method,
                       tested=tested, rejected=rejected,
                       procedure="Learn then Test, fixed-sequence from the most confident threshold down",
                       **describe(stages, np.array([t])))


# --- N stages ---------------------------------------------------------------------------------------

def on_report(report: Sequence[ChainStage], chain: Sequence[int], thresholds: np.ndarray, drop: float
              ) -> Dict[str, object]:
    """What a certified configuration (stage indices ``chain`` into ``report``, their thresholds) did
    on the reported split: accuracy, GMACs, share answered per stage and whether the drop held."""
    ev = simulate_chain([report[k] for k in chain], np.asarray(thresholds)[None, :])
    m = report[0].num_samples
    return dict(acc=float(ev.acc[0]), gmacs=float(ev.gmacs[0]), answered=ev.answered[0].tolist(),
                meets_target=bool(ev.acc[0] * m >= report[-1].correct.sum() - drop / 100.0 * m - COUNT_TOL))


def split_halves(stages: Sequence[ChainStage], seed: int) -> Tuple[List[ChainStage], List[ChainStage]]:
    """The calibration samples split at random into a search half (in sample order) and a test
    half (in its random order, which the wsr bound's betting runs through)."""
    n = stages[0].num_samples
    if n < 4:
        raise TinySaverError(f"{n} calibration samples are too few to split in two halves")
    perm = np.random.default_rng(seed).permutation(n)
    half_a, half_b = np.sort(perm[: n // 2]), perm[n // 2:]
    return ([ChainStage(s.name, s.gmacs, s.conf[half_a], s.correct[half_a]) for s in stages],
            [ChainStage(s.name, s.gmacs, s.conf[half_b], s.correct[half_b]) for s in stages])


def calibrate_chain(stages: Sequence[ChainStage], drop: float, delta: float, method: str = "wsr", seed: int = 0,
                    grid: int = DEFAULT_GRID, max_exact_cells: int = DEFAULT_EXACT_CELLS) -> Calibration:
    """Thresholds for every stage of a chain (base last) with the same guarantee, by data splitting
    (see the module docstring); a 2-stage chain uses :func:`calibrate_pair` (no split needed)."""
    check_target(drop, delta, method)
    if len(stages) == 2:
        s, b = stages
        return calibrate_pair(s.conf, s.correct, b.correct, drop, delta, method, seed, s.gmacs, b.gmacs,
                              (s.name, b.name))
    if len(stages) < 2:
        raise TinySaverError("a chain to calibrate needs at least one saver before the base")
    search_half, test_half = split_halves(stages, seed)
    n_search, n_test = search_half[0].num_samples, test_half[0].num_samples
    # a long chain's table on grids of `grid` values would not fit: coarser grids for its path
    savers = len(stages) - 1
    if grid_cells([threshold_grid(s.conf) for s in search_half[:-1]]) > max_exact_cells:
        grid = min(grid, max(2, int(PATH_CELLS ** (1.0 / savers)) - 1))
    search = search_chains(search_half, grid=grid, max_exact_cells=max_exact_cells,
                           chains=[tuple(range(len(stages)))], progress=False)
    merged = search.merged()
    path_counts = merged.front()[::-1]                 # most expensive (most accurate) first
    path = search.thresholds(0, merged.cell[path_counts])
    base_right = test_half[-1].correct
    correct = np.stack([s.correct for s in test_half])
    cols = np.arange(n_test)

    def columns(sl: slice) -> np.ndarray:
        stage = answering_stage(test_half, path[sl])
        return base_right[None, :] - correct[stage, cols]

    rejected = fixed_sequence(columns, len(path), n_test, drop / 100.0, delta, method)
    t = np.full(len(stages) - 1, np.inf) if rejected == 0 else path[rejected - 1]
    return Calibration(
        stages=[s.name for s in stages], thresholds=t.tolist(), drop=drop, delta=delta, method=method,
        tested=len(path), rejected=rejected,
        procedure="Learn then Test with data splitting: half the calibration set orders the chain's Pareto "
                  "front (most to least expensive), the other half tests along it with fixed-sequence testing",
        extra={"split": {"search": n_search, "test": n_test, "seed": seed, "search_mode": search.mode}},
        **describe(stages, t[None, :]))


def certify_plan(calib: Sequence[ChainStage], report: Optional[Sequence[ChainStage]], drops: Sequence[float],
                 delta: float, *, max_stages: int = 3, method: str = "wsr", seed: int = 0, ladder: int = 16,
                 grid: int = DEFAULT_GRID, max_exact_cells: int = DEFAULT_EXACT_CELLS, descent: bool = True,
                 starts: int = 1, pair_grid: Optional[int] = None, sweep: int = 16) -> Dict[float, Calibration]:
    """The planner with a guarantee: for each drop, a chain *and* thresholds whose accuracy drop on
    new data is <= ``drop`` points with probability >= 1 − δ over the draw of the calibration split.

    Learn then Test with data splitting, over configurations of any chain of the pool:

    1. The calibration split is halved at random (``seed``).
    2. On half A the planner (:func:`tinysaver.analysis.search_plan`: tables, then the descent) finds
       the cheapest configuration at targets evenly spaced (``ladder`` steps) from the most accurate
       configuration its tables find there (a gain over the base, when the pool allows one: the
       drop must be certified on half B, so the first hypotheses need a margin) to the largest
       drop; the path of a drop is the targets below it, then the drop itself; the chain may differ
       from target to target. Ordered from the most to the least expensive, they are the path; it
       depends on half A only.
    3. On half B, fixed-sequence testing along the path with the loss ``1[base right] −
       1[answering stage right]`` keeps the last configuration before the first one whose drop
       cannot be certified (nothing exits — the base alone — when the first cannot).

    Conditional on half A each path is fixed, so the ``1 − δ`` guarantee of :func:`calibrate_chain`
    holds for each drop whatever chains its path visits (the test is about the loss, not the chain).

    Args:
        calib: Pool by cost then the base, on the calibration split.
        report: The same models on the reported split (measured there when given), or None.
        drops: Allowed accuracy drops in points (>= 0).
        delta: Allowed probability that the calibration draw breaks the guarantee (per drop).
        max_stages: Longest chain.
        method: One of :data:`METHODS`.
        seed: Halves of the calibration split and the sample order of ``wsr``.
        ladder: Steps of the targets between the most accurate configuration and the largest drop.
        grid: As in :func:`tinysaver.analysis.search_plan`.
        max_exact_cells: As there.
        descent: As there.
        starts: As there (1 keeps the ladder fast; each target also starts from the stricter one).
        pair_grid: As there.
        sweep: As there.

    Returns:
        Per drop a :class:`Calibration` for the chain reached (``extra`` holds the path and, with
        ``report``, ``acc``, ``gmacs``, ``answered`` and ``meets_target`` measured there).

    Examples:
        >>> certified = certify_plan(holdout_stages, test_stages, [1.0, 0.5], delta=0.1,
        ...                          max_stages=5)  # doctest: +SKIP
        >>> certified[0.5].stages, certified[0.5].thresholds, certified[0.5].extra["meets_target"]  # doctest: +SKIP
    """
    drops = [float(d) for d in drops]
    for d in drops:
        check_target(d, delta, method)
    if ladder < 1:
        raise TinySaverError(f"the certification ladder needs >= 1 step, got {ladder}")
    search_half, test_half = split_halves(calib, seed)
    n_search, n_test = search_half[0].num_samples, test_half[0].num_samples
    savers = len(calib) - 1
    tables = search_tables(search_half, max_stages, grid=grid, max_exact_cells=max_exact_cells, progress=False)
    most = float(np.flatnonzero(np.isfinite(tables.merged().cost)).max())   # most right answers there
    gain = min(0.0, (tables.base_correct - most) / n_search * 100.0)  # <= 0: a drop in points
    # one ladder for all drops (evenly spaced up to the largest), each path ending at its own drop
    common = np.linspace(gain, max(drops), ladder + 1) if drops else np.zeros(0)
    ladders = {d: [float(x) for x in common if x < d] + [d] for d in drops}
    planned = search_plan(search_half, max_stages, sorted({x for xs in ladders.values() for x in xs}), grid=grid,
                          max_exact_cells=max_exact_cells, descent=descent, starts=starts, pair_grid=pair_grid,
                          sweep=sweep, progress=False, tables=tables)
    base_right = test_half[-1].correct
    correct = np.stack([s.correct for s in test_half])
    cols = np.arange(n_test)
    out: Dict[float, Calibration] = {}
    for d in drops:
        path, seen = [], set()
        for target in ladders[d]:  # strictest first: costs do not increase along it
            choice = planned.choices[target]
            if choice is None:
                continue
            vector = np.full(savers, np.inf)
            vector[list(choice.chain[:-1])] = choice.thresholds
            if vector.tobytes() not in seen:
                seen.add(vector.tobytes())
                path.append(vector)
        # (len, savers) even when there is no usable saver: every vector is then empty
        path_arr = np.array(path, dtype=np.float64).reshape(len(path), savers)

        def columns(sl: slice) -> np.ndarray:
            stage = answering_stage(test_half, path_arr[sl])
            return base_right[None, :] - correct[stage, cols]

        rejected = fixed_sequence(columns, len(path_arr), n_test, d / 100.0, delta, method)
        chosen = path_arr[rejected - 1] if rejected else np.full(savers, np.inf)
        chain = [k for k in range(savers) if np.isfinite(chosen[k])] + [savers]
        t = chosen[chain[:-1]]
        extra: Dict[str, object] = {
            "split": {"search": n_search, "test": n_test, "seed": seed, "search_mode": planned.mode},
            "path": [{"stages": [calib[k].name for k in range(savers) if np.isfinite(v[k])] + [calib[-1].name],
                      "thresholds": [float(x) for x in v[np.isfinite(v)]]} for v in path_arr]}
        if report is not None:
            extra.update(on_report(report, chain, t, d))
        out[d] = Calibration(
            stages=[calib[k].name for k in chain], thresholds=t.tolist(), drop=d, delta=delta, method=method,
            tested=len(path_arr), rejected=rejected,
            procedure="Learn then Test with data splitting: half the calibration set runs the planner at targets "
                      "from 0 to the drop (the path, most to least expensive), the other half tests along it "
                      "with fixed-sequence testing",
            extra=extra, **describe([calib[k] for k in chain], t[None, :]))
    return out


def calibrate_records(records: Sequence[Record], drop: float, delta: float, method: str = "wsr",
                      seed: int = 0) -> Calibration:
    """:func:`calibrate_chain` on records (savers by increasing cost, base last)."""
    check_target(drop, delta, method)
    check_chain_records(records)
    return calibrate_chain([ChainStage.from_record(r) for r in records], drop, delta, method, seed)


__all__ = ["METHODS", "PATH_CELLS", "Calibration", "ltt_pair_threshold", "calibrate_pair", "calibrate_chain",
           "certify_plan", "calibrate_records"]
