"""Exact TinySaver analysis over every distinct threshold (paper sections 3.2–3.3).

A sample exits at the saver when ``conf >= t``. Only the distinct confidence values matter: between
two of them the exit set does not change, and samples with equal confidence exit together. So one
sort of the confidences plus cumulative sums of the correctness arrays give, for *every* threshold at
once, the exit ratio, the accuracy of each model on the exited samples and the system accuracy —
no grid, no loop over thresholds, O(M log M).

Point 0 of a curve is the threshold +inf (nothing exits on any split, cost C_S + C_B); point
k >= 1 is the k-th highest distinct confidence. JSON has no infinity: +inf is written as the string
``"inf"`` (see :func:`threshold_to_json`).

Examples:
    >>> import numpy as np
    >>> conf = np.array([0.9, 0.8, 0.8, 0.3])
    >>> curve = exit_curve(conf, saver_correct=[1, 1, 0, 0], base_correct=[1, 0, 1, 1],
    ...                    saver_gmacs=1.0, base_gmacs=10.0)
    >>> curve.n_exit.tolist()          # nothing, the 0.9 sample, both 0.8 samples, all
    [0, 1, 3, 4]
    >>> match_point(curve).r_match     # saver correct >= base correct on the exited samples
    0.75
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import TinySaverError
from ..records import Record, check_pair
from ..thresholds import threshold_to_json
from .pools import check_calibration

#: Accuracy drops (percentage points) of the paper's Tables 1 and 5.
PAPER_DROPS = (1.0, 0.5, 0.1, 0.0)
# Correct counts are sums of 0/1 (exact in float64); the tolerance only absorbs the rounding of
# ``drop / 100 * M`` so that, e.g., a 0.1-point drop on 1000 samples allows exactly 1 sample.
COUNT_TOL = 1e-6


@dataclass(frozen=True)
class ExitCurve:
    """Exit statistics at every distinct threshold, ordered by increasing exit ratio.

    Attributes:
        threshold: ``[K+1]`` thresholds, decreasing; ``threshold[0]`` is +inf: nothing exits.
        n_exit: ``[K+1]`` number of samples with ``conf >= threshold``, increasing.
        saver_correct: ``[K+1]`` saver's correct count on the exited samples.
        base_correct: ``[K+1]`` base's correct count on the exited samples.
        num_samples: M.
        saver_total: Saver's correct count on all samples.
        base_total: Base's correct count on all samples.
        saver_gmacs: C_S.
        base_gmacs: C_B.
    """

    threshold: np.ndarray
    n_exit: np.ndarray
    saver_correct: np.ndarray
    base_correct: np.ndarray
    num_samples: int
    saver_total: float
    base_total: float
    saver_gmacs: float
    base_gmacs: float

    @property
    def exit_ratio(self) -> np.ndarray:
        return self.n_exit / self.num_samples

    @property
    def system_correct(self) -> np.ndarray:
        # Exited samples are answered by the saver, the rest by the base.
        return self.saver_correct + (self.base_total - self.base_correct)

    @property
    def system_acc(self) -> np.ndarray:
        return self.system_correct / self.num_samples

    @property
    def expected_gmacs(self) -> np.ndarray:
        """Eq. (1): every sample pays C_S, the ones that do not exit also pay C_B."""
        return self.saver_gmacs + (1.0 - self.exit_ratio) * self.base_gmacs

    @property
    def saver_acc_exited(self) -> np.ndarray:
        """Saver accuracy on the exited samples (NaN where nothing exits)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_exit > 0, self.saver_correct / np.maximum(self.n_exit, 1), np.nan)

    @property
    def base_acc_exited(self) -> np.ndarray:
        """Base accuracy on the samples the saver would answer (NaN where nothing exits)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_exit > 0, self.base_correct / np.maximum(self.n_exit, 1), np.nan)

    @property
    def saver_acc(self) -> float:
        return self.saver_total / self.num_samples

    @property
    def base_acc(self) -> float:
        return self.base_total / self.num_samples

    def index_at(self, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
        """Curve point reached by arbitrary thresholds (e.g. chosen on another split).

        ``conf >= t`` exits exactly the groups whose confidence is ``>= t``; their number is the
        point index, found by binary search.
        """
        t = np.asarray(thresholds, dtype=np.float64)
        ascending = self.threshold[:0:-1]  # distinct confidences, increasing
        return len(ascending) - np.searchsorted(ascending, t, side="left")

    @classmethod
    def from_records(cls, saver: Record, base: Record) -> "ExitCurve":
        """Curve of ``saver`` in front of ``base`` (same samples, same order)."""
        check_pair(saver, base)
        return exit_curve(saver.conf, saver.correct, base.correct, saver.gmacs, base.gmacs)


def exit_curve(conf: Sequence[float] | np.ndarray, saver_correct: Sequence[float] | np.ndarray,
               base_correct: Sequence[float] | np.ndarray, saver_gmacs: float,
               base_gmacs: float) -> ExitCurve:
    """Computes the exact exit curve.

    Args:
        conf: Saver confidence per sample ``[M]``.
        saver_correct: 1/0 (or any per-sample score) for the saver ``[M]``.
        base_correct: Same for the base ``[M]``.
        saver_gmacs: Saver cost C_S.
        base_gmacs: Base cost C_B.

    Returns:
        The :class:`ExitCurve` over all distinct thresholds.
    """
    conf = np.asarray(conf, dtype=np.float64)
    sc = np.asarray(saver_correct, dtype=np.float64)
    bc = np.asarray(base_correct, dtype=np.float64)
    if conf.ndim != 1 or conf.shape != sc.shape or conf.shape != bc.shape:
        raise TinySaverError(f"conf, saver_correct and base_correct must be 1-D of one length, got "
                             f"{conf.shape}, {sc.shape}, {bc.shape}")
    if conf.size == 0:
        raise TinySaverError("no samples")
    if not np.isfinite(conf).all():
        raise TinySaverError("conf holds NaN or inf")
    # No stable sort needed: tied samples form one group whatever their order (and quicksort is
    # ~5x faster than the stable sort on 500k softmax values).
    order = np.argsort(-conf)
    conf_desc = conf[order]
    # The last sample of each run of equal confidences closes one exit group.
    group_end = np.flatnonzero(np.append(conf_desc[1:] != conf_desc[:-1], True))
    cum_saver = np.cumsum(sc[order])[group_end]
    cum_base = np.cumsum(bc[order])[group_end]
    # +inf, not "just above the highest confidence seen": a threshold chosen on one split must let
    # nothing exit on any other split either.
    return ExitCurve(
        threshold=np.concatenate(([np.inf], conf_desc[group_end])),
        n_exit=np.concatenate(([0], group_end + 1)),
        saver_correct=np.concatenate(([0.0], cum_saver)),
        base_correct=np.concatenate(([0.0], cum_base)),
        num_samples=int(conf.size),
        saver_total=float(sc.sum()),
        base_total=float(bc.sum()),
        saver_gmacs=float(saver_gmacs),
        base_gmacs=float(base_gmacs),
    )


@dataclass(frozen=True)
class MatchPoint:
    """r_match (eq. 7) and ΔC (eq. 10) of a saver/base pair."""

    r_match: float
    threshold: float
    delta_c: float
    index: int


def match_point(curve: ExitCurve) -> MatchPoint:
    """The largest exit ratio at which the saver is right on at least as many exited samples as
    the base (eq. 7), and ΔC = C_S / C_B − r_match (eq. 10). r_match is 0 when no exit qualifies.
    """
    ok = curve.saver_correct >= curve.base_correct - COUNT_TOL
    k = int(np.flatnonzero(ok)[-1])  # point 0 (nothing exits: 0 >= 0) always qualifies
    r = float(curve.exit_ratio[k])
    ratio = curve.saver_gmacs / curve.base_gmacs if curve.base_gmacs > 0 else np.inf
    return MatchPoint(r_match=r, threshold=float(curve.threshold[k]), delta_c=float(ratio - r), index=k)


def cheapest_within_drop(curve: ExitCurve, drop_pct: float) -> Optional[int]:
    """Index of the lowest-cost point whose system accuracy is >= base accuracy − ``drop_pct``
    percentage points (None when none is). Cost falls as the exit ratio grows, so it is the
    qualifying point with the most exits."""
    required = curve.base_total - drop_pct / 100.0 * curve.num_samples
    qualifying = np.flatnonzero(curve.system_correct >= required - COUNT_TOL)
    return int(qualifying[-1]) if qualifying.size else None


def max_performance_index(curve: ExitCurve) -> int:
    """Index of the highest system accuracy, at the lowest cost that reaches it."""
    best = curve.system_correct.max()
    return int(np.flatnonzero(curve.system_correct >= best - COUNT_TOL)[-1])


@dataclass
class OperatingPoint:
    """One cell of Tables 1/5: a threshold and what it did on the reported split.

    In the honest (calibrated) mode the threshold was chosen on a calibration split; ``acc``,
    ``exit_ratio`` and ``gmacs`` are what it *measured* on the reported split, ``calib_acc`` and
    ``calib_exit_ratio`` what it did on the calibration split, and ``meets_target`` whether the
    measured accuracy is within the allowed drop of the reported split's base accuracy.
    """

    gmacs: float
    threshold: float
    acc: float
    exit_ratio: float
    calib_acc: Optional[float] = None
    calib_exit_ratio: Optional[float] = None
    meets_target: Optional[bool] = None
    #: bootstrap intervals of the measured ``acc``/``gmacs`` (``tinysaver tradeoff --ci``)
    ci: Optional[Dict[str, object]] = None

    def to_json(self) -> Dict[str, object]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["threshold"] = threshold_to_json(self.threshold)
        return out


@dataclass
class Tradeoff:
    """The trade-off of one saver/base pair, in the layout of the paper's Tables 1 and 5.

    ``r_match``/``delta_c`` are measured on the reported split (``split``); in the calibrated mode
    ``calib_r_match``/``calib_delta_c`` are those of the calibration split (``calib_split``), the
    one the thresholds were chosen on.
    """

    saver: str
    base: str
    saver_acc: float
    saver_gmacs: float
    base_acc: float
    base_gmacs: float
    required: Dict[float, Optional[OperatingPoint]]
    max_performance: OperatingPoint
    r_match: float
    delta_c: float
    mode: str = "same-split"
    num_samples: int = 0
    split: str = "report"
    calib_split: Optional[str] = None
    calib_r_match: Optional[float] = None
    calib_delta_c: Optional[float] = None
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def missed(self) -> List[float]:
        """Drops whose chosen threshold did not meet its target on the reported split."""
        return [d for d, p in self.required.items() if p is not None and p.meets_target is False]

    def to_json(self) -> Dict[str, object]:
        out: Dict[str, object] = {
            "saver": self.saver, "base": self.base, "mode": self.mode, "num_samples": self.num_samples,
            "split": self.split, "base_acc": self.base_acc, "base_gmacs": self.base_gmacs,
            "saver_acc": self.saver_acc, "saver_gmacs": self.saver_gmacs,
            "required": {repr(float(d)): (p.to_json() if p else None) for d, p in self.required.items()},
            "max_performance": self.max_performance.to_json(),
            "r_match": self.r_match, "delta_c": self.delta_c, "delta_c_split": self.split,
        }
        if self.calib_split is not None:
            out.update(calib_split=self.calib_split, calib_r_match=self.calib_r_match,
                       calib_delta_c=self.calib_delta_c)
        out.update(self.extra)
        return out


def _point(curve: ExitCurve, k: int, threshold: Optional[float] = None) -> OperatingPoint:
    return OperatingPoint(gmacs=float(curve.expected_gmacs[k]),
                          threshold=float(curve.threshold[k] if threshold is None else threshold),
                          acc=float(curve.system_acc[k]), exit_ratio=float(curve.exit_ratio[k]))


def meets_drop(curve: ExitCurve, k: int, drop_pct: float) -> bool:
    """Whether point ``k`` of ``curve`` is within ``drop_pct`` points of the curve's base accuracy
    (counted in samples, as :func:`cheapest_within_drop` chooses)."""
    required = curve.base_total - drop_pct / 100.0 * curve.num_samples
    return bool(curve.system_correct[k] >= required - COUNT_TOL)


def tradeoff(curve: ExitCurve, drops: Sequence[float] = PAPER_DROPS, *, saver: str = "saver",
             base: str = "base", calibration: Optional[ExitCurve] = None, split: str = "report",
             calib_split: str = "calibration") -> Tradeoff:
    """The Tables 1/5 row of a pair.

    Args:
        curve: Exit curve of the split the numbers are reported on.
        drops: Allowed accuracy drops in percentage points.
        saver: Saver name for the report.
        base: Base name for the report.
        calibration: If given, the honest mode: each threshold is chosen on this curve (e.g. the
            train or a held-out split) and its accuracy, exit ratio and cost are *measured* on
            ``curve``, with ``meets_target`` telling whether the measured accuracy kept the drop.
            Without it, thresholds are chosen on ``curve`` itself, as in the paper.
        split: Name of the reported split (tables say where ΔC comes from).
        calib_split: Name of the calibration split.

    Returns:
        A :class:`Tradeoff`; ``required[d]`` is None when no threshold meets the drop ``d`` on the
        split it is chosen on.

    Examples:
        >>> row = tradeoff(test_curve, calibration=holdout_curve, split="test",
        ...                calib_split="holdout")  # doctest: +SKIP
        >>> row.required[0.5].acc, row.required[0.5].meets_target  # doctest: +SKIP
    """
    if calibration is not None:
        _check_same_costs(curve, calibration)
    chooser = calibration if calibration is not None else curve
    picks = {float(d): cheapest_within_drop(chooser, d) for d in drops}
    match = match_point(curve)

    def measured(k: Optional[int], drop: Optional[float]) -> Optional[OperatingPoint]:
        if k is None:
            return None
        if calibration is None:
            point = _point(curve, k)
            point.meets_target = True if drop is not None else None  # chosen on this very split
            return point
        t = float(calibration.threshold[k])
        k_report = int(curve.index_at([t])[0])
        point = _point(curve, k_report, threshold=t)
        point.calib_acc = float(calibration.system_acc[k])
        point.calib_exit_ratio = float(calibration.exit_ratio[k])
        if drop is not None:
            point.meets_target = meets_drop(curve, k_report, drop)
        return point

    row = Tradeoff(
        saver=saver, base=base, saver_acc=curve.saver_acc, saver_gmacs=curve.saver_gmacs,
        base_acc=curve.base_acc, base_gmacs=curve.base_gmacs,
        required={d: measured(k, d) for d, k in picks.items()},
        max_performance=measured(max_performance_index(chooser), None),
        r_match=match.r_match, delta_c=match.delta_c,
        mode="same-split" if calibration is None else "calibrated", num_samples=curve.num_samples,
        split=split)
    if calibration is not None:
        calib_match = match_point(calibration)
        row.calib_split, row.calib_r_match, row.calib_delta_c = calib_split, calib_match.r_match, calib_match.delta_c
    return row


def _check_same_costs(curve: ExitCurve, calibration: ExitCurve) -> None:
    # A model's cost per sample does not depend on the split: other costs mean other models, whose
    # confidences say nothing about where this saver's threshold should be.
    for role, mine, theirs in (("saver", curve.saver_gmacs, calibration.saver_gmacs),
                               ("base", curve.base_gmacs, calibration.base_gmacs)):
        if not np.isclose(mine, theirs, rtol=1e-9, atol=0.0):
            raise TinySaverError(f"the calibration {role} costs {theirs:g} GMACs but the reported {role} "
                                 f"{mine:g}: choose the thresholds on records of the same saver and base")


def tradeoff_from_records(saver: Record, base: Record, drops: Sequence[float] = PAPER_DROPS,
                          calib_saver: Optional[Record] = None,
                          calib_base: Optional[Record] = None) -> Tradeoff:
    """:func:`tradeoff` for records; the calibration pair is optional but comes as a pair."""
    if (calib_saver is None) != (calib_base is None):
        raise TinySaverError("the honest mode needs both calibration records (saver and base)")
    curve = ExitCurve.from_records(saver, base)
    calib = None
    if calib_saver is not None:
        check_calibration([saver], [calib_saver], base, calib_base)  # same models, same costs, same roles
        calib = ExitCurve.from_records(calib_saver, calib_base)
    result = tradeoff(curve, drops, saver=saver.name, base=base.name, calibration=calib,
                      split=base.split_name("report"),
                      calib_split=calib_base.split_name("calibration") if calib_base is not None else "calibration")
    if calib is not None:
        result.extra["calibration_samples"] = calib.num_samples
    return result


@dataclass
class SaverScore:
    """One candidate's row of the saver selection (section 3.3)."""

    saver: str
    r_match: float
    threshold: float
    delta_c: float
    saver_gmacs: float
    base_gmacs: float
    saver_acc: float = float("nan")
    path: Optional[str] = None

    @property
    def compresses(self) -> bool:
        """ΔC < 0: the saver reduces the base's cost at no accuracy loss on this split."""
        return self.delta_c < 0

    def to_json(self) -> Dict[str, object]:
        return {"saver": self.saver, "r_match": self.r_match, "threshold": threshold_to_json(self.threshold),
                "delta_c": self.delta_c, "saver_gmacs": self.saver_gmacs, "base_gmacs": self.base_gmacs,
                "saver_acc": self.saver_acc, "compresses": self.compresses}


def rank_savers(base: Record, savers: Sequence[Record]) -> List[SaverScore]:
    """Scores each candidate saver against ``base`` by ΔC and sorts them, best (lowest) first.

    Examples:
        >>> ranking = rank_savers(base_train, [saver_a_train, saver_b_train])  # doctest: +SKIP
        >>> ranking[0].saver, ranking[0].delta_c  # doctest: +SKIP
    """
    scores = []
    for saver in savers:
        curve = ExitCurve.from_records(saver, base)
        m = match_point(curve)
        scores.append(SaverScore(saver=saver.name, r_match=m.r_match, threshold=m.threshold,
                                 delta_c=m.delta_c, saver_gmacs=saver.gmacs, base_gmacs=base.gmacs,
                                 saver_acc=curve.saver_acc, path=saver.path))
    return sorted(scores, key=lambda s: s.delta_c)
