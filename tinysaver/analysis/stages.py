"""Chains of offline stages (recorded arrays): checks and the simulation at given thresholds.

A chain is an ordered list of models ``S1 → S2 → … → B`` on the same samples; the last stage is the
base. A sample is answered by the first stage ``k`` (not the last) with ``conf_k >= t_k`` (compared
in float64; ``t_k = +inf`` lets nothing exit there), else by the base.

Cost model: a sample answered at stage ``k`` paid the incremental costs of stages ``1..k`` (each
record's ``gmacs`` is that model's own cost), so the expected cost is
``Σ_k (fraction of samples reaching stage k) · gmacs_k``. Stages are ordered by increasing cost.

:class:`ChainStage` is one model of a chain on one split (confidence and correctness arrays); the
live model of a cascade is :class:`tinysaver.routing.Stage`.

Examples:
    >>> import numpy as np
    >>> s1 = ChainStage("tiny", 1.0, np.array([0.9, 0.4, 0.8]), np.array([1., 0., 1.]))
    >>> s2 = ChainStage("small", 2.0, np.array([0.7, 0.9, 0.2]), np.array([1., 1., 0.]))
    >>> b = ChainStage("base", 10.0, np.ones(3), np.array([1., 1., 1.]))
    >>> ev = simulate_chain([s1, s2, b], [0.85, 0.8])
    >>> ev.answered.tolist(), ev.acc.tolist()        # s1 takes sample 0, s2 sample 1, base sample 2
    ([[0.3333333333333333, 0.3333333333333333, 0.3333333333333333]], [1.0])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import TinySaverError
from ..records import Record, check_pair

# Simulations hold a [rows, samples] array; rows are processed in chunks of about this many cells.
CHUNK_CELLS = 2 ** 22


@dataclass(frozen=True)
class ChainStage:
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
    def from_record(cls, record: Record) -> "ChainStage":
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
                f"stages must be in order of increasing cost ({a.cost_unit}): {a.name} ({a.gmacs:g}) comes before "
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


def answering_stage(stages: Sequence[ChainStage], thresholds: np.ndarray) -> np.ndarray:
    """``[B, M]`` index of the stage that answers each sample, for a batch ``[B, K-1]`` of
    threshold vectors (the earliest stage whose confidence reaches its threshold, else the base)."""
    k_last = len(stages) - 1
    stage = np.full((thresholds.shape[0], stages[0].num_samples), k_last, dtype=np.int16)
    for k in reversed(range(k_last)):  # backwards, so that the earliest exit is written last
        exits = stages[k].conf[None, :] >= thresholds[:, k, None]
        stage[exits] = k
    return stage


def simulate_chain(stages: Sequence[ChainStage], thresholds, weights: Optional[np.ndarray] = None) -> ChainEval:
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
    rows = max(1, CHUNK_CELLS // m)
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


__all__ = ["CHUNK_CELLS", "ChainStage", "check_chain_records", "ChainEval", "answering_stage", "simulate_chain"]
