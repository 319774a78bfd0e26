"""A deliberately naive reference for chains: every chain, every threshold combination, one Python
pass over the samples each (tests only, tiny data)."""
from __future__ import annotations

import itertools
import math


def simulate(chain, thresholds):
    """``(correct, reach)`` of a chain of ``(name, gmacs, conf, correct)`` stages at ``thresholds``:
    right answers, and how many samples reached each stage."""
    m = len(chain[0][2])
    correct, reach = 0, [0] * len(chain)
    for i in range(m):
        for k, (_, _, conf, right) in enumerate(chain):
            reach[k] += 1
            if k == len(chain) - 1 or conf[i] >= thresholds[k]:
                correct += right[i]
                break
    return correct, reach


def cost_of(chain, reach, m):
    # the same arithmetic as the planner: (M·g_1 + reach_2·g_2 + …) / M
    cost = float(m) * chain[0][1]
    for k in range(1, len(chain)):
        cost = cost + reach[k] * chain[k][1]
    return cost / m


def all_points(pool, base, max_stages):
    """Every (chain, thresholds) with its correct count and cost. ``pool``/``base`` are
    ``(name, gmacs, conf, correct)`` tuples; savers as costly as the base are left out."""
    m = len(base[2])
    usable = sorted([s for s in pool if s[1] < base[1]], key=lambda s: s[1])
    points = []
    for size in range(0, min(max_stages - 1, len(usable)) + 1):
        for combo in itertools.combinations(usable, size):
            chain = list(combo) + [base]
            candidates = [sorted(set(s[2])) + [math.inf] for s in combo]
            for ts in itertools.product(*candidates):
                correct, reach = simulate(chain, list(ts))
                points.append(dict(stages=[s[0] for s in chain], thresholds=list(ts), correct=correct,
                                   cost=cost_of(chain, reach, m), reach=reach))
    return points


def front(points):
    """Pareto front as sorted unique ``(correct, cost)``: nothing as cheap with as many right."""
    pairs = sorted({(p["correct"], p["cost"]) for p in points})
    out = []
    for c, g in pairs:
        dominated = any(g2 <= g and c2 >= c and (g2 < g or c2 > c) for c2, g2 in pairs)
        if not dominated:
            out.append((c, g))
    return sorted(out, key=lambda x: x[1])


def required(points, base_correct, m, drop):
    ok = [p for p in points if p["correct"] >= base_correct - drop / 100 * m - 1e-6]
    return min(ok, key=lambda p: p["cost"]) if ok else None
