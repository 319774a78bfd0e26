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

**Bootstrap intervals** (:func:`bootstrap_chain_ci`, :func:`tradeoff_ci`): in the calibrated mode
the reported accuracy and GMACs come from a threshold chosen on one split and measured on another;
each bootstrap draw resamples the calibration split (re-choosing the thresholds, within the chosen
chain) and the reported split (re-measuring) with multinomial counts, and percentile intervals are
reported. They describe the sampling variability of the numbers, not a guarantee.

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

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .analysis import threshold_to_json
from .chain import (DEFAULT_EXACT_CELLS, DEFAULT_GRID, Stage, _cells, answering_stage, cell_thresholds,
                    chain_table, grid_ranks, search_chains, simulate_chain, threshold_grid)
from .errors import TinySaverError
from .records import Record

#: Upper-bound methods for ``H_t: E[loss] > α`` (see the module docstring).
METHODS = ("wsr", "bernstein", "hoeffding-bentkus")
_CHUNK_CELLS = 2 ** 22
_COUNT_TOL = 1e-6
#: Largest table a chain's calibration path is read from (long chains get coarser grids).
PATH_CELLS = 2 ** 22


def check_target(drop: float, delta: float, method: str = "wsr") -> None:
    """Raises :class:`TinySaverError` for a drop outside [0, 100) points, δ outside (0, 1) or an
    unknown method."""
    if not 0 <= drop < 100:
        raise TinySaverError(f"--drop must be in [0, 100) percentage points, got {drop:g}")
    if not 0 < delta < 1:
        raise TinySaverError(f"--delta must be in (0, 1), e.g. 0.1, got {delta:g}")
    if method not in METHODS:
        raise TinySaverError(f"unknown --method {method!r} (known: {', '.join(METHODS)})")


# --- the tests: reject H: E[L] > alpha for each column of a loss matrix ---------------------------

def _reject_bernstein(loss: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """Maurer & Pontil (2009) Thm 4 for L in [-1, 1] (range 2): E L <= mean + sqrt(2 V ln(2/δ)/n)
    + 14 ln(2/δ) / (3 (n-1)), V the unbiased sample variance."""
    n = loss.shape[1]
    if n < 2:
        return np.zeros(loss.shape[0], dtype=bool)
    log_term = math.log(2.0 / delta)
    ucb = (loss.mean(axis=1) + np.sqrt(2.0 * loss.var(axis=1, ddof=1) * log_term / n)
           + 14.0 * log_term / (3.0 * (n - 1)))
    return ucb <= alpha


def _binom_cdf(n: int, p: float) -> np.ndarray:
    """``P(Bin(n, p) <= k)`` for ``k = 0..n`` (log-space recursion of the pmf; numpy only)."""
    k = np.arange(n)
    log_pmf = n * math.log1p(-p) + np.concatenate(
        ([0.0], np.cumsum(np.log((n - k) / (k + 1.0)) + math.log(p / (1.0 - p)))))
    return np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)


def _reject_hoeffding_bentkus(loss: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """Hoeffding–Bentkus p-value (Bates et al. 2021, RCPS) on the loss rescaled to [0, 1]."""
    n = loss.shape[1]
    a = (alpha + 1.0) / 2.0
    half_units = np.rint(loss.sum(axis=1) + n).astype(np.int64)  # 2 · Σ (L + 1) / 2, an integer
    mean = half_units / (2.0 * n)
    q = np.minimum(mean, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = (np.where(q > 0, q * np.log(q / a), 0.0)
              + np.where(q < 1, (1 - q) * np.log((1 - q) / (1 - a)), 0.0))
    p_hoeffding = np.exp(-n * h1)
    k = np.minimum((half_units + 1) // 2, n)  # ceil(n · mean)
    p_bentkus = math.e * _binom_cdf(n, a)[k]
    return np.minimum(p_hoeffding, p_bentkus) <= delta


def _reject_wsr(loss: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """Waudby-Smith & Ramdas (2024) betting test of ``E[x] > μ0`` for x = (L + 1)/2 in [0, 1]:
    capital ``Π (1 − ν_i (x_i − μ0))`` with predictable ``ν_i = min(1, sqrt(2 ln(1/δ) / (n σ̂²_{i−1})))``
    (the RCPS reference code's choice); reject when its running maximum reaches 1/δ (Ville)."""
    n = loss.shape[1]
    x = (loss + 1.0) / 2.0
    mu0 = (alpha + 1.0) / 2.0
    i = np.arange(1, n + 1, dtype=np.float64)
    mu_hat = (np.cumsum(x, axis=1) + 0.5) / (i + 1.0)
    var_hat = (np.cumsum((x - mu_hat) ** 2, axis=1) + 0.25) / (i + 1.0)
    var_pred = np.concatenate([np.full((x.shape[0], 1), 0.25), var_hat[:, :-1]], axis=1)  # samples < i only
    nu = np.minimum(np.sqrt(2.0 * math.log(1.0 / delta) / (n * var_pred)), 1.0)
    log_capital = np.cumsum(np.log1p(-nu * (x - mu0)), axis=1)
    return log_capital.max(axis=1) >= math.log(1.0 / delta)


_TESTS: Dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "wsr": _reject_wsr, "bernstein": _reject_bernstein, "hoeffding-bentkus": _reject_hoeffding_bentkus}


def fixed_sequence(columns: Callable[[slice], np.ndarray], num: int, num_samples: int, alpha: float,
                   delta: float, method: str) -> int:
    """Fixed-sequence testing: how many of the ``num`` ordered hypotheses are rejected before the
    first that is not.

    Args:
        columns: ``columns(slice)`` returns the losses ``[len(slice), num_samples]`` of those
            hypotheses, samples in the fixed order the test runs in.
        num: Number of hypotheses.
        num_samples: Rows of every loss matrix.
        alpha: Risk target (the null is ``E[L] > alpha``).
        delta: Error level.
        method: One of :data:`METHODS`.

    Returns:
        The number of leading rejected hypotheses. Hypotheses are tested in chunks of doubling
        size, so those after the first failure are mostly never computed.
    """
    test = _TESTS[method]
    cap = max(1, _CHUNK_CELLS // max(num_samples, 1))
    start, step = 0, min(32, cap)
    while start < num:
        stop = min(num, start + step)
        rejected = test(columns(slice(start, stop)), alpha, delta)
        if not rejected.all():
            return start + int(np.argmin(rejected))
        start, step = stop, min(2 * step, cap)
    return num


# --- results ------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """A calibrated threshold (or one per stage) and what it did on the calibration split."""

    stages: List[str]
    thresholds: List[float]
    drop: float
    delta: float
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

    def to_json(self) -> Dict[str, object]:
        out: Dict[str, object] = {"stages": self.stages}
        if len(self.thresholds) == 1:
            out["threshold"] = threshold_to_json(self.thresholds[0])
        else:
            out["thresholds"] = [threshold_to_json(t) for t in self.thresholds]
        out.update(drop=self.drop, delta=self.delta, method=self.method, samples=self.samples,
                   calib_exit_ratio=self.calib_exit_ratio, calib_acc=self.calib_acc,
                   calib_base_acc=self.calib_base_acc, calib_answered=self.calib_answered,
                   calib_gmacs=self.calib_gmacs, hypotheses_tested=self.tested,
                   hypotheses_rejected=self.rejected, procedure=self.procedure,
                   guarantee=f"with probability >= {1 - self.delta:g} over the calibration draw, the expected "
                             f"accuracy drop vs the base on new i.i.d. data is <= {self.drop:g} points (a finite "
                             f"test set adds its own sampling noise)")
        out.update(self.extra)
        return out


def _describe(stages: Sequence[Stage], t: np.ndarray, **kw) -> Dict[str, object]:
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
    stages = [Stage(names[0], float(saver_gmacs), np.asarray(conf, dtype=np.float64),
                    np.asarray(saver_correct, dtype=np.float64)),
              Stage(names[1], float(base_gmacs), np.ones(len(conf)), np.asarray(base_correct, dtype=np.float64))]
    t, tested, rejected = ltt_pair_threshold(conf, saver_correct, base_correct, drop, delta, method, seed)
    return Calibration(stages=list(names), thresholds=[t], drop=drop, delta=delta, method=method,
                       tested=tested, rejected=rejected,
                       procedure="Learn then Test, fixed-sequence from the most confident threshold down",
                       **_describe(stages, np.array([t])))


# --- N stages ---------------------------------------------------------------------------------------

def _split_halves(stages: Sequence[Stage], seed: int) -> Tuple[List[Stage], List[Stage]]:
    """The calibration samples split at random into a search half (in sample order) and a test
    half (in its random order, which the wsr bound's betting runs through)."""
    n = stages[0].num_samples
    if n < 4:
        raise TinySaverError(f"{n} calibration samples are too few to split in two halves")
    perm = np.random.default_rng(seed).permutation(n)
    half_a, half_b = np.sort(perm[: n // 2]), perm[n // 2:]
    return ([Stage(s.name, s.gmacs, s.conf[half_a], s.correct[half_a]) for s in stages],
            [Stage(s.name, s.gmacs, s.conf[half_b], s.correct[half_b]) for s in stages])


def calibrate_chain(stages: Sequence[Stage], drop: float, delta: float, method: str = "wsr", seed: int = 0,
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
    search_half, test_half = _split_halves(stages, seed)
    n_search, n_test = search_half[0].num_samples, test_half[0].num_samples
    # a long chain's table on grids of `grid` values would not fit: coarser grids for its path
    savers = len(stages) - 1
    if _cells([threshold_grid(s.conf) for s in search_half[:-1]]) > max_exact_cells:
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
        **_describe(stages, t[None, :]))


def certify_plan(calib: Sequence[Stage], report: Optional[Sequence[Stage]], drops: Sequence[float], delta: float,
                 *, max_stages: int = 3, method: str = "wsr", seed: int = 0, ladder: int = 16,
                 grid: int = DEFAULT_GRID, max_exact_cells: int = DEFAULT_EXACT_CELLS, descent: bool = True,
                 starts: int = 1, pair_grid: Optional[int] = None, sweep: int = 16) -> Dict[float, Calibration]:
    """The planner with a guarantee: for each drop, a chain *and* thresholds whose accuracy drop on
    new data is <= ``drop`` points with probability >= 1 − δ over the draw of the calibration split.

    Learn then Test with data splitting, over configurations of any chain of the pool:

    1. The calibration split is halved at random (``seed``).
    2. On half A the planner (:func:`tinysaver.chain.search_plan`: tables, then the descent) finds
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
        grid: As in :func:`tinysaver.chain.search_plan`.
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
    from .chain import search_plan, search_tables

    drops = [float(d) for d in drops]
    for d in drops:
        check_target(d, delta, method)
    if ladder < 1:
        raise TinySaverError(f"the certification ladder needs >= 1 step, got {ladder}")
    search_half, test_half = _split_halves(calib, seed)
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
            ev = simulate_chain([report[k] for k in chain], t[None, :])
            m = report[0].num_samples
            extra.update(acc=float(ev.acc[0]), gmacs=float(ev.gmacs[0]), answered=ev.answered[0].tolist(),
                         meets_target=bool(ev.acc[0] * m >= report[-1].correct.sum() - d / 100.0 * m - _COUNT_TOL))
        out[d] = Calibration(
            stages=[calib[k].name for k in chain], thresholds=t.tolist(), drop=d, delta=delta, method=method,
            tested=len(path_arr), rejected=rejected,
            procedure="Learn then Test with data splitting: half the calibration set runs the planner at targets "
                      "from 0 to the drop (the path, most to least expensive), the other half tests along it "
                      "with fixed-sequence testing",
            extra=extra, **_describe([calib[k] for k in chain], t[None, :]))
    return out


def calibrate_records(records: Sequence[Record], drop: float, delta: float, method: str = "wsr",
                      seed: int = 0) -> Calibration:
    """:func:`calibrate_chain` on records (savers by increasing cost, base last)."""
    from .chain import check_chain_records

    check_target(drop, delta, method)
    check_chain_records(records)
    return calibrate_chain([Stage.from_record(r) for r in records], drop, delta, method, seed)


# --- bootstrap intervals --------------------------------------------------------------------------

def _resample(rng: np.random.Generator, n: int) -> np.ndarray:
    """Multinomial bootstrap counts: how often each of n samples is drawn in n draws."""
    return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def bootstrap_chain_ci(calib: Sequence[Stage], report: Sequence[Stage], drops: Sequence[float], *,
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
    if _cells(grids) > max_cells:
        grids, exact = [threshold_grid(s.conf, grid) for s in calib[:-1]], False
    if _cells(grids) > max_cells:
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
            ok = correct >= base_total - d / 100.0 * mc - _COUNT_TOL
            if ok.any():
                cell = int(np.argmin(np.where(ok, cost, np.inf)))
                chosen[d][b] = cell_thresholds(grids, [cell])[0]
                reached[d][b] = True
    acc = {d: np.full(draws, np.nan) for d in drops}
    cost_b = {d: np.full(draws, np.nan) for d in drops}
    rows = max(1, _CHUNK_CELLS // mr)
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
    from .records import check_pair

    check_pair(calib_saver, calib_base)
    check_pair(saver, base)
    calib = [Stage.from_record(calib_saver), Stage.from_record(calib_base)]
    report = [Stage.from_record(saver), Stage.from_record(base)]
    return bootstrap_chain_ci(calib, report, drops, level=level, draws=draws, seed=seed)
