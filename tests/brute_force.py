"""A deliberately naive reference: one Python pass per candidate threshold (tests only)."""
from __future__ import annotations

import numpy as np


def brute_force(conf, sc, bc, cs, cb, drops):
    conf, sc, bc = (np.asarray(a, dtype=float) for a in (conf, sc, bc))
    m = len(conf)
    base_correct = sum(bc)
    points = []
    for t in sorted(set(conf.tolist())) + [float("inf")]:
        exited = [i for i in range(m) if conf[i] >= t]
        s = sum(sc[i] for i in exited)
        b = sum(bc[i] for i in exited)
        system = s + base_correct - b
        r = len(exited) / m
        points.append(dict(t=t, r=r, s=s, b=b, acc=system / m, cost=cs + (1 - r) * cb))
    r_match = max(p["r"] for p in points if p["s"] >= p["b"])
    required = {}
    for d in drops:
        ok = [p for p in points if p["acc"] * m >= base_correct - d / 100 * m - 1e-6]
        required[d] = min(ok, key=lambda p: p["cost"]) if ok else None
    best = max(p["acc"] for p in points)
    max_perf = min((p for p in points if p["acc"] >= best - 1e-12), key=lambda p: p["cost"])
    return dict(points=points, r_match=r_match, delta_c=cs / cb - r_match, required=required,
                max_perf=max_perf, base_acc=base_correct / m)
