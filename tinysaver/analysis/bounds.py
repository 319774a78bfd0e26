"""Upper confidence bounds for Learn then Test: tests of ``H: E[L] > α`` on a loss matrix, and
fixed-sequence testing along ordered hypotheses (the methods are described in
:mod:`tinysaver.analysis.calibrate`)."""
from __future__ import annotations

import math
from typing import Callable, Dict

import numpy as np

from ..errors import TinySaverError
from .stages import CHUNK_CELLS

#: Upper-bound methods for ``H_t: E[loss] > α`` (see :mod:`tinysaver.analysis.calibrate`).
METHODS = ("wsr", "bernstein", "hoeffding-bentkus")


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
    cap = max(1, CHUNK_CELLS // max(num_samples, 1))
    start, step = 0, min(32, cap)
    while start < num:
        stop = min(num, start + step)
        rejected = test(columns(slice(start, stop)), alpha, delta)
        if not rejected.all():
            return start + int(np.argmin(rejected))
        start, step = stop, min(2 * step, cap)
    return num


__all__ = ["METHODS", "check_target", "fixed_sequence"]
