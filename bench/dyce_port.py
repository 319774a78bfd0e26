"""A port of DyCE's configuration search, run as a chain planner on TinySaver records (bench only).

DyCE (Q. Wang, B. Guo, L. Mei, Y. Ye, J. Li, Z. Wang, S. Li, S. Wan, "DyCE: Dynamically Configurable
Exiting for deep learning compression and real-time scaling", 2024) searches the exits of a
multi-exit network. This module is our own re-implementation of the search in the authors' public
code, repository ``QingyuanWang/dyce``, file ``dyce/config_search.py`` (classes ``ConfigEval`` /
``ConfigEvalAccelerated``: ``cost_func``, ``config_search_onepass``, ``config_search_circular``;
function ``search_and_eval``), read, not copied. What it keeps from that file:

- **Cost.** ``λ·(1 − acc) + (1 − λ)·macs`` with both terms normalised as the file's ``normalize``
  option does (``search_and_eval`` turns it on): ``acc`` rescaled from ``[acc_min, acc_max]`` (the
  first exit's accuracy, the base's) to ``[0, 1]`` and ``macs`` from ``[macs_min, macs_max]`` (the
  backbone cost before the first exit — 0 for a chain of separate models — and the base's).
- **Exit rule.** A sample leaves at an enabled position when its confidence is *strictly* above the
  threshold (``conf > t``); TinySaver uses ``conf >= t``, so a DyCE threshold ``t`` is reported as
  ``nextafter(t, +inf)`` (the same samples exit on any split).
- **One coordinate at a time, thresholds by ``scipy.optimize.fminbound`` on ``[0, 1]``** (default
  tolerance), each candidate evaluated against the current configuration of the other positions
  (samples not leaving at the changed position go on to the next enabled one, as in
  ``update_config``). A position is either enabled with a threshold or disabled (``exit_typei = -1``,
  costing nothing).
- **One-pass search**: from "every position disabled", each position in order picks, for good, the
  best of "enabled at the ``fminbound`` threshold" and "disabled" (``<=``: a tie disables it).
- **Circular search**: from "every position disabled", each round evaluates every position and
  option against the current configuration and applies the single best one if it lowers the cost
  below the best so far; it stops when no change does (or after ``max_rounds``). As published, its
  ``fminbound`` calls score the enabled option with the unnormalised cost while "disabled" uses the
  normalised one; the port does the same by default (``published_circular=False``: normalised).
- **The λ sweep**: one search per λ; every configuration found is measured on the search split
  and, for an accuracy target, the cheapest one within it is taken (then measured on the test split).

Mapping a TinySaver chain onto DyCE's positions: position ``k`` is pool model ``k`` (by increasing
cost) with one exit type (the model itself), its "exit MACs" the model's GMACs, the backbone MACs 0;
the final exit is the base (backbone MACs = the base's GMACs). DyCE's cost of a sample answered at
position ``k`` (backbone before ``k`` plus every *enabled* exit up to ``k``) is then exactly
TinySaver's chain cost, and a configuration is a chain (the enabled positions, then the base).

Not ported: DyCE's optional ``calibration`` (a conservative Beta-quantile accuracy, off by default),
its multi-exit-type positions, its torch/GPU evaluation (the evaluation here is the same incremental
update in numpy: each candidate threshold costs one pass over the samples that reach the position).

Examples:
    >>> from tinysaver.analysis import ChainStage
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> conf = rng.random(1000)
    >>> saver = ChainStage("saver", 1.0, conf, (rng.random(1000) < conf).astype(float))
    >>> base = ChainStage("base", 10.0, np.ones(1000), np.ones(1000))
    >>> search = DyceSearch([saver, base])
    >>> config = search.circular(0.9)
    >>> len(config.thresholds)
    1
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import fminbound

from tinysaver.analysis import ChainStage, simulate_chain

#: DyCE's ``search_and_eval`` default λ grid: ``np.arange(0.5, 1.01, 0.01)`` (51 values).
DYCE_DEFAULT_LAMBDAS = np.arange(0.5, 1.01, 0.01)


def default_lambdas() -> np.ndarray:
    """DyCE's default λ grid (0.50, 0.51, …, 1.00) plus 31 values approaching 1 geometrically
    (``1 − 10^-x``, x from 2.1 to 5): with normalised terms, small accuracy drops need λ very close
    to 1, which the default step of 0.01 barely samples. 82 values in all."""
    near_one = 1.0 - 10.0 ** -np.linspace(2.1, 5.0, 31)
    return np.unique(np.concatenate([np.round(DYCE_DEFAULT_LAMBDAS, 10), near_one]))


@dataclass
class DyceConfig:
    """One configuration found by a search: per pool position a threshold (``inf``: disabled)."""

    thresholds: np.ndarray   # DyCE's own (exit when conf > t), inf where disabled
    lam: float
    method: str
    cost: float              # the λ-weighted cost the search ended at


class DyceSearch:
    """DyCE's one-pass and circular searches over a pool (sorted by cost) in front of a base.

    Args:
        stages: Pool models by increasing cost, then the base (last), on the search split.
        normalize: Normalise accuracy and MACs in the cost (DyCE's ``search_and_eval`` does).
        xtol: ``fminbound``'s tolerance (scipy's default, which DyCE uses).
        published_circular: Score the circular search's enabled options as the file does
            (unnormalised, see :meth:`circular`); False normalises them like everything else.
    """

    def __init__(self, stages: Sequence[ChainStage], normalize: bool = True, xtol: float = 1e-5,
                 published_circular: bool = True) -> None:
        self.stages = list(stages)
        self.n = len(stages) - 1
        self.m = stages[0].num_samples
        self.conf = np.stack([s.conf for s in stages[:-1]]) if self.n else np.zeros((0, self.m))
        self.correct = np.stack([s.correct for s in stages])
        self.gmacs = np.array([s.gmacs for s in stages], dtype=np.float64)
        self.base_gmacs = float(self.gmacs[-1])
        self.base_acc = float(self.correct[-1].mean())
        # DyCE: macs_min = backbone MACs before the first exit (0 here), macs_max = base MACs,
        # acc_min = accuracy of the first exit, acc_max = base accuracy
        self.macs_min, self.macs_max = 0.0, self.base_gmacs
        self.acc_min = float(self.correct[0].mean()) if self.n else 0.0
        self.acc_max = self.base_acc
        self.normalize = normalize
        self.xtol = xtol
        self.published_circular = published_circular
        self.evaluations = 0
        self.reset()

    # -- state: the current configuration --------------------------------------------------------

    def reset(self) -> None:
        """Every position disabled: all samples go to the base."""
        self.t = np.full(self.n, np.inf)

    def _exit_position(self, t: np.ndarray) -> np.ndarray:
        """Position answering each sample under thresholds ``t`` (``n``: the base)."""
        pos = np.full(self.m, self.n, dtype=np.int64)
        for k in reversed(range(self.n)):
            if np.isfinite(t[k]):
                pos[self.conf[k] > t[k]] = k
        return pos

    def _paid(self, t: np.ndarray) -> np.ndarray:
        """Cost of a sample answered at each position: enabled exits up to it (+ base at the end)."""
        enabled = np.append(np.isfinite(t), True)
        return np.cumsum(np.where(enabled, self.gmacs, 0.0))

    def _weighted(self, acc: float, macs: float, lam: float) -> float:
        if self.normalize:
            macs = (macs - self.macs_min) / (self.macs_max - self.macs_min)
            span = self.acc_max - self.acc_min
            acc = (acc - self.acc_min) / span if span > 0 else acc
        else:
            macs, acc = macs / self.base_gmacs, acc / self.base_acc
        return lam * (1.0 - acc) + (1.0 - lam) * macs

    def _candidate(self, k: int):
        """The cost of changing position ``k`` alone, as a function ``(t, lam) -> cost`` (``t =
        inf``: disabled), against the current configuration: the samples that reach ``k`` either
        leave there or go on to the next enabled position, as in DyCE's ``update_config``."""
        pos = self._exit_position(self.t)
        arrived = pos >= k
        before_correct = float(self.correct[pos[~arrived], np.flatnonzero(~arrived)].sum())
        paid_now = self._paid(self.t)
        before_macs = float(paid_now[pos[~arrived]].sum())
        rest = self.t.copy()
        rest[k] = np.inf
        later = self._exit_position(rest)[arrived]                   # where they go if not leaving at k
        idx = np.flatnonzero(arrived)
        later_correct = self.correct[later, idx]
        paid_without = self._paid(rest)
        prior = paid_without[k - 1] if k > 0 else 0.0                 # enabled exits before k
        later_macs = paid_without[later]                              # without k's own cost
        conf_k = self.conf[k, idx]
        own_correct = self.correct[k, idx]
        g_k = self.gmacs[k]

        def cost(t: float, lam: float) -> float:
            self.evaluations += 1
            if math.isinf(t):
                correct = before_correct + later_correct.sum()
                macs = before_macs + later_macs.sum()
            else:
                leave = conf_k > t
                correct = before_correct + own_correct[leave].sum() + later_correct[~leave].sum()
                macs = (before_macs + leave.sum() * (prior + g_k) + (later_macs[~leave].sum()
                                                                     + (~leave).sum() * g_k))
            return self._weighted(correct / self.m, macs / self.m, lam)

        return cost

    def _best_option(self, k: int, lam: float, normalize_enabled: bool = True) -> List[Tuple[float, float]]:
        """``[(t, cost)]`` of position ``k``: enabled at ``fminbound``'s threshold, then disabled.
        ``normalize_enabled=False`` scores the enabled option (its ``fminbound`` search and the
        value it returns) with the unnormalised cost, as the file's circular search does."""
        cost = self._candidate(k)
        normalize = self.normalize
        self.normalize = normalize and normalize_enabled
        try:
            t, value, _, _ = fminbound(cost, 0.0, 1.0, args=(lam,), xtol=self.xtol, full_output=True)
        finally:
            self.normalize = normalize
        return [(float(t), float(value)), (np.inf, cost(np.inf, lam))]

    # -- the two searches -------------------------------------------------------------------------

    def onepass(self, lam: float) -> DyceConfig:
        """DyCE's ``config_search_onepass``: each position once, in order, keeps its best option."""
        self.reset()
        cost_min = math.inf
        for k in range(self.n):
            cost_min = math.inf
            best = None
            for t, value in self._best_option(k, lam):
                if value <= cost_min:  # DyCE's comparison: the later option (disabled) wins a tie
                    cost_min, best = value, t
            self.t[k] = best
        return DyceConfig(self.t.copy(), float(lam), "onepass", cost_min)

    def circular(self, lam: float, max_rounds: int = 1000) -> DyceConfig:
        """DyCE's ``config_search_circular``: apply the single best change over all positions and
        options while it lowers the cost below the best so far.

        As published, its ``fminbound`` calls pass ``normalize=False`` (the 5th extra argument of
        ``cost_func``) while "disabled" is scored with the search's ``normalize``: unless
        ``published_circular`` was turned off, this port does the same."""
        self.reset()
        cost_min = math.inf
        for _ in range(max_rounds):
            candidate = None
            for k in range(self.n):
                for t, value in self._best_option(k, lam, normalize_enabled=not self.published_circular):
                    if value < cost_min:
                        cost_min, candidate = value, (k, t)
            if candidate is None:
                break
            self.t[candidate[0]] = candidate[1]
        return DyceConfig(self.t.copy(), float(lam), "circular", cost_min)


def to_chain(config: DyceConfig, stages: Sequence[ChainStage]) -> Tuple[List[int], List[float]]:
    """A DyCE configuration as a TinySaver chain: indices of the enabled pool models then the base,
    and thresholds for ``conf >= t`` (``nextafter`` of DyCE's strict ones)."""
    n = len(stages) - 1
    idx = [k for k in range(n) if np.isfinite(config.thresholds[k])]
    return idx + [n], [float(np.nextafter(config.thresholds[k], np.inf)) for k in idx]


def evaluate(config: DyceConfig, stages: Sequence[ChainStage]) -> Tuple[float, float, List[str], List[float]]:
    """``(acc, gmacs, chain names, thresholds)`` of a configuration on ``stages`` (any split)."""
    idx, t = to_chain(config, stages)
    ev = simulate_chain([stages[i] for i in idx], t)
    return float(ev.acc[0]), float(ev.gmacs[0]), [stages[i].name for i in idx], t


def sweep(stages: Sequence[ChainStage], lambdas: Optional[Sequence[float]] = None,
          methods: Sequence[str] = ("onepass", "circular"), progress: bool = False,
          published_circular: bool = True) -> Dict[str, object]:
    """DyCE's λ sweep on one split: every λ with every method; returns the configurations with
    their accuracy and GMACs on that split, and the number of cost evaluations."""
    from tqdm import tqdm

    lambdas = default_lambdas() if lambdas is None else np.asarray(lambdas, dtype=np.float64)
    search = DyceSearch(stages, published_circular=published_circular)
    configs: List[DyceConfig] = []
    for lam in tqdm(lambdas, desc="DyCE λ sweep", unit="λ", disable=not progress, leave=False):
        for method in methods:
            configs.append(getattr(search, method)(float(lam)))
    return {"configs": configs, "lambdas": [float(x) for x in lambdas], "methods": list(methods),
            "evaluations": search.evaluations}


def pick(configs: Sequence[DyceConfig], search_stages: Sequence[ChainStage], drop: float) -> Optional[DyceConfig]:
    """The cheapest configuration (on the search split) whose accuracy there is within ``drop``
    points of the base's (ties: the more accurate one)."""
    m = search_stages[0].num_samples
    base_correct = float(search_stages[-1].correct.sum())
    best, key = None, None
    for config in configs:
        acc, gmacs, _, _ = evaluate(config, search_stages)
        if acc * m >= base_correct - drop / 100.0 * m - 1e-6:
            k = (gmacs, -acc)
            if key is None or k < key:
                best, key = config, k
    return best
