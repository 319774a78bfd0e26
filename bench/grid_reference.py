"""The paper code's approach, kept as the benchmark's reference: a Python loop over a 0.001
threshold grid, one boolean mask per threshold. Approximate (only 1001 thresholds) and slow.

Usage: python bench/grid_reference.py SAVER.npz BASE.npz
"""
from __future__ import annotations

import json
import sys

import numpy as np


def main(saver_path: str, base_path: str) -> None:
    s, b = np.load(saver_path), np.load(base_path)
    conf, sc, bc = s["conf"], s["pred"] == s["label"], b["pred"] == b["label"]
    cs, cb = float(s["gmacs"]), float(b["gmacs"])
    m = len(conf)
    base_acc = bc.mean()
    rows = []
    for t in np.arange(0, 1.001, 0.001):
        exited = conf >= t
        r = exited.sum() / m
        acc = (sc[exited].sum() + bc[~exited].sum()) / m
        saver_exit_acc = sc[exited].mean() if exited.any() else float("nan")
        base_exit_acc = bc[exited].mean() if exited.any() else float("nan")
        rows.append((t, r, acc, cs + (1 - r) * cb, saver_exit_acc, base_exit_acc))
    out = {}
    for drop in (1.0, 0.5, 0.1, 0.0):
        ok = [row for row in rows if row[2] >= base_acc - drop / 100]
        best = min(ok, key=lambda row: row[3]) if ok else None
        out[str(drop)] = None if best is None else {"threshold": best[0], "acc": best[2], "gmacs": best[3]}
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
