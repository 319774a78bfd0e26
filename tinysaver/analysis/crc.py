"""Conformal risk control: thresholds whose *expected* accuracy drop on new data is within a target.

**The guarantee, in one sentence.** Averaged over the draw of the calibration set, the accuracy
drop versus the base on new data from the same distribution (i.i.d. with the calibration samples)
is at most the target: ``E[acc_base − acc_cascade(t̂)] <= drop``, the expectation being over both
the calibration draw and the new sample. This is weaker than Learn then Test's "with probability
``>= 1 − δ``" (:mod:`tinysaver.analysis.calibrate`): a single calibration draw may land above the target, but
on average it does not; in exchange it lets samples exit at drops where Learn then Test certifies
nothing.

**The procedure** is conformal risk control (Angelopoulos, Bates, Fisch, Lei, Schuster, "Conformal
Risk Control", ICLR 2024, arXiv:2208.02814, Theorem 1). Configurations are ordered from the most
conservative (the base alone) to the most aggressive; with ``n`` calibration samples, per-sample
losses ``L_i`` in ``[0, B]`` that never decrease along that order, and ``α = drop / 100``, it keeps
the most aggressive configuration ``k̂`` such that every configuration up to it satisfies

    (n / (n + 1)) · R̂_n(k) + B / (n + 1) <= α,      R̂_n(k) = mean of L_i(k) over the calibration set,

(the base alone when none does). Then ``E[L_{n+1}(k̂)] <= α``. The ``B / (n + 1)`` term is the
finite-sample correction: it stands for the new sample's unknown loss. It also means that ``n``
must be at least ``B / α − 1`` before anything can exit (:func:`min_samples`), and that a drop of
0 never lets anything exit (the answer is then the base alone, which is honest, not an error).

**The loss** is ``L_i = 1[base right and the answering stage wrong]`` (``B = 1``). It bounds the
per-sample drop ``1[base right] − 1[answering stage right]`` from above (the two differ only when
the base is wrong and the answering stage right, where the loss is 0 and the drop is −1), so
``E[L] <= α`` implies ``E[drop] <= α``. The drop itself cannot be used: CRC needs each sample's loss
to be monotone, and a sample the saver gets right and the base wrong *gains* when it exits.

- For a pair (:func:`crc_pair_threshold`) the threshold ``t`` is the parameter and the loss
  ``1[c_i >= t] · 1[base right, saver wrong]`` is non-increasing in ``t``: raising the threshold
  only removes samples from the exited set, and a sample that does not exit is answered by the base
  (loss 0). The candidates are the distinct calibration confidences (and ``+inf``: nothing exits).
  Because they come from the data, the proof uses the candidate set of the ``n + 1`` samples,
  which is symmetric in them: the threshold chosen on ``n`` samples is admissible there (the new
  loss is at most ``B``), so it is at least as high as the threshold the ``n + 1`` samples would
  choose, whose mean loss is ``<= α`` by exchangeability.
- For a chain (:func:`crc_path`) the parameter is the position along a *fixed* path of
  configurations (threshold vectors), most conservative first: chosen before looking at these
  samples, e.g. on another half of the calibration set (data splitting). Along a path the loss
  above need not be monotone (lowering an earlier stage's threshold can move a sample from a
  wrong later saver to a right earlier one), so each sample's loss is monotonised: ``L̃_i(k) =
  max_{j <= k} L_i(j)`` — 1 once the sample has been harmed at any configuration up to ``k``. It is
  non-decreasing along the path, ``>= L_i``, equals ``L_i`` for a pair, and is exactly ``L_i`` along
  a path whose thresholds all only go down when the stages' correctness is nested (a weaker stage
  is right only where the stronger ones are).

Everything here is numpy only: functions over arrays, no records, no models.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> conf = rng.random(2000)
    >>> base = (rng.random(2000) < 0.9).astype(float)
    >>> saver = base * (rng.random(2000) < 0.6 + 0.4 * conf)
    >>> r = crc_pair_threshold(conf, saver, base, drop=2.0)
    >>> 0 < r.exit_ratio < 1 and r.calib_loss <= 0.02
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from ..errors import TinySaverError

#: Upper bound ``B`` of the per-sample loss ``1[base right and the answering stage wrong]``.
LOSS_BOUND = 1.0
#: Relative tolerance of the rule's comparison (loss sums are integers, ``α (n + 1)`` is a float).
_TOL = 1e-9
_CHUNK_CELLS = 2 ** 22

#: What the JSON's ``"guarantee"`` field holds for this procedure.
GUARANTEE = "expected"
#: The procedure, in words.
PROCEDURE = ("conformal risk control (Angelopoulos et al.) on the loss 1[base right and the answering stage "
             "wrong], which bounds the drop from above and never decreases as thresholds go down")


def promise(drop: float) -> str:
    """The guarantee of a CRC choice at ``drop`` points, in one sentence."""
    return (f"averaged over the draw of the calibration set, the accuracy drop vs the base on new i.i.d. data "
            f"is <= {drop:g} points (one calibration draw may land above it; a finite test set adds its own "
            "sampling noise)")


def check_drop(drop: float) -> float:
    """``α = drop / 100`` for a drop in ``[0, 100)`` percentage points; else :class:`TinySaverError`."""
    drop = float(drop)
    if not 0 <= drop < 100:
        raise TinySaverError(f"the drop must be in [0, 100) percentage points, got {drop:g}")
    return drop / 100.0


def min_samples(drop: float, bound: float = LOSS_BOUND) -> Optional[int]:
    """Fewest calibration samples with which conformal risk control can let anything exit at
    ``drop`` points: the smallest ``n`` with ``B / (n + 1) <= α`` (None at a drop of 0: no ``n``)."""
    alpha = check_drop(drop)
    if alpha == 0:
        return None
    return max(1, math.ceil(bound / alpha * (1 - _TOL) - 1))


def check_samples(num_samples: int, drop: float, bound: float = LOSS_BOUND) -> None:
    """Raises :class:`TinySaverError` when ``num_samples`` calibration samples are too few for
    anything to exit at ``drop > 0`` points whatever the data (a drop of 0 is not an error: the
    answer is the base alone)."""
    need = min_samples(drop, bound)
    if need is not None and num_samples < need:
        raise TinySaverError(
            f"{num_samples} calibration samples are too few for conformal risk control at a {drop:g}-point drop: "
            f"it needs at least {need} (the new sample's loss counts as 1/(n+1) <= {drop:g}/100)")


def crc_admissible(loss_sums: np.ndarray, num_samples: int, alpha: float,
                   bound: float = LOSS_BOUND) -> np.ndarray:
    """The conformal risk control rule ``(n / (n + 1)) · R̂_n + B / (n + 1) <= α`` for each
    configuration, given its loss sum ``n · R̂_n`` over the ``n`` calibration samples."""
    loss_sums = np.asarray(loss_sums, dtype=np.float64)
    return loss_sums + bound <= alpha * (num_samples + 1) * (1 + _TOL)


def _leading(ok: np.ndarray) -> int:
    """How many leading entries are True."""
    return int(ok.size if ok.all() else np.argmin(ok))


@dataclass(frozen=True)
class CRCPair:
    """The CRC threshold of a saver/base pair and what it did on the calibration samples.

    Attributes:
        threshold: Exit when the saver's confidence is ``>= threshold`` (``inf``: nothing exits).
        tested: Candidate thresholds (distinct calibration confidences).
        admissible: Candidates the rule admits (the threshold is the lowest of them).
        samples: Calibration samples ``n``.
        calib_loss: Mean loss ``R̂_n`` at the threshold.
        exit_ratio: Share of the calibration samples that exit there.
    """

    threshold: float
    tested: int
    admissible: int
    samples: int
    calib_loss: float
    exit_ratio: float


def pair_loss(saver_correct, base_correct) -> np.ndarray:
    """``1[base right and saver wrong]`` per sample: the loss of a sample that exits."""
    base = np.asarray(base_correct, dtype=np.float64)
    saver = np.asarray(saver_correct, dtype=np.float64)
    return ((base > 0) & (saver <= 0)).astype(np.float64)


def crc_pair_threshold(conf, saver_correct, base_correct, drop: float,
                       bound: float = LOSS_BOUND) -> CRCPair:
    """The lowest threshold that conformal risk control admits for a saver/base pair.

    Args:
        conf: Saver confidence per calibration sample ``[n]``.
        saver_correct: 1/0 per sample.
        base_correct: 1/0 per sample.
        drop: Allowed expected accuracy drop in points, ``[0, 100)``.
        bound: The loss bound ``B`` (1 for this loss; the guarantee needs ``B >=`` the largest loss).

    Returns:
        A :class:`CRCPair` (threshold ``inf`` when nothing can exit).
    """
    alpha = check_drop(drop)
    conf = np.asarray(conf, dtype=np.float64)
    loss = pair_loss(saver_correct, base_correct)
    n = conf.shape[0]
    if loss.shape != conf.shape:
        raise TinySaverError(f"{n} confidences but {loss.shape[0]} correctness values")
    if n == 0:
        raise TinySaverError("no calibration samples")
    if np.isnan(conf).any():
        raise TinySaverError("a confidence is NaN")
    order = np.argsort(-conf, kind="stable")
    conf_desc = conf[order]
    group_end = np.flatnonzero(np.append(conf_desc[1:] != conf_desc[:-1], True))
    loss_sums = np.cumsum(loss[order])[group_end]   # loss of the samples exiting at each candidate
    ok = crc_admissible(loss_sums, n, alpha, bound)
    k = _leading(ok)                                  # loss sums never decrease: the rule admits a prefix
    if k == 0:
        return CRCPair(math.inf, len(group_end), 0, n, 0.0, 0.0)
    end = group_end[k - 1]
    return CRCPair(float(conf_desc[end]), len(group_end), k, n, float(loss_sums[k - 1]) / n, (end + 1) / n)


def exit_share_family(confs, end, num: int = 64) -> np.ndarray:
    """A path from the base alone to the configuration ``end``: every stage's exit share scaled.

    Configuration ``j`` (of ``num``, most conservative first) lets each stage of ``end`` exit the
    ``(j + 1) / num`` fraction of the samples (of ``confs``) that it lets exit at ``end``; the last is
    ``end`` itself. Every threshold only goes down along the path. Plan it on data other than the
    samples CRC runs on (``confs`` from the planning half).

    Args:
        confs: Per stage before the base, its confidences on the planning samples.
        end: ``[S]`` thresholds of the configuration to approach (``inf``: the stage is not used).
        num: Configurations on the path.

    Returns:
        ``[num, S]`` thresholds.
    """
    end = np.asarray(end, dtype=np.float64)
    if num < 1:
        raise TinySaverError(f"a path needs >= 1 configuration, got {num}")
    out = np.full((num, end.shape[0]), np.inf)
    for k, t in enumerate(end):
        if not np.isfinite(t):
            continue
        desc = np.sort(np.asarray(confs[k], dtype=np.float64))[::-1]
        exits = int(np.count_nonzero(desc >= t))
        counts = (np.arange(1, num + 1) * exits) // num          # samples exiting at each configuration
        out[counts > 0, k] = desc[counts[counts > 0] - 1]
        out[-1, k] = t
    return out


AnswerColumns = Union[np.ndarray, Callable[[slice], np.ndarray]]


@dataclass(frozen=True)
class CRCPath:
    """How far along a path conformal risk control goes.

    Attributes:
        admissible: Leading configurations the rule admits (0: the base alone); the choice is the
            last of them, ``admissible - 1``.
        tested: Configurations on the path.
        samples: Calibration samples ``n``.
        calib_loss: Mean monotonised loss at the choice (0 for the base alone).
    """

    admissible: int
    tested: int
    samples: int
    calib_loss: float


def monotone_loss(answer_correct: np.ndarray, base_correct) -> np.ndarray:
    """``[K, n]`` monotonised loss along a path: ``L̃_i(k) = max_{j <= k} 1[base right and the
    answering stage of configuration j wrong]``.

    Args:
        answer_correct: ``[K, n]`` 1/0: is the stage that answers sample i under configuration k right.
        base_correct: ``[n]`` 1/0.
    """
    answer = np.asarray(answer_correct, dtype=np.float64)
    base = np.asarray(base_correct, dtype=np.float64) > 0
    return np.maximum.accumulate((base[None, :] & (answer <= 0)).astype(np.float64), axis=0)


def crc_path(answer_correct: AnswerColumns, base_correct, num: int, drop: float,
             bound: float = LOSS_BOUND) -> CRCPath:
    """Conformal risk control along a fixed path of configurations, most conservative first.

    The path must not depend on these samples (plan it on other data); configuration ``k`` is
    admitted when the rule holds for the monotonised loss (:func:`monotone_loss`) at ``k`` and at
    every configuration before it.

    Args:
        answer_correct: ``[num, n]`` 1/0 correctness of the answering stage per configuration and
            sample, or ``answer_correct(slice)`` returning those rows (computed in chunks; those after
            the first configuration the rule refuses are never asked for).
        base_correct: ``[n]`` 1/0.
        num: Configurations on the path.
        drop: Allowed expected accuracy drop in points, ``[0, 100)``.
        bound: The loss bound ``B``.

    Returns:
        A :class:`CRCPath`.
    """
    alpha = check_drop(drop)
    base = np.asarray(base_correct, dtype=np.float64) > 0
    n = base.shape[0]
    if n == 0:
        raise TinySaverError("no calibration samples")
    columns = answer_correct if callable(answer_correct) else (lambda sl: np.asarray(answer_correct)[sl])
    harmed = np.zeros(n, dtype=bool)   # harmed at some configuration so far (the running max)
    last_sum = 0.0
    step = max(1, min(32, _CHUNK_CELLS // n))
    start = 0
    while start < num:
        stop = min(num, start + step)
        rows = np.asarray(columns(slice(start, stop)))
        if rows.shape != (stop - start, n):
            raise TinySaverError(f"answer correctness rows of shape {rows.shape}, expected {(stop - start, n)}")
        now = np.logical_or.accumulate(base[None, :] & (rows <= 0), axis=0) | harmed[None, :]
        sums = now.sum(axis=1).astype(np.float64)
        ok = crc_admissible(sums, n, alpha, bound)
        if not ok.all():
            k = _leading(ok)
            if k:
                last_sum = float(sums[k - 1])
            return CRCPath(start + k, num, n, last_sum / n)
        harmed, last_sum = now[-1], float(sums[-1])
        start, step = stop, min(2 * step, max(1, _CHUNK_CELLS // n))
    return CRCPath(num, num, n, last_sum / n)
