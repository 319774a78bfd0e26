"""Benchmark (not a test): exact `tinysaver tradeoff` vs the paper-style 0.001-grid loop.

Both run as whole commands (interpreter start, imports, record loading, analysis, JSON), best of
N runs each, on 500k synthetic records (the content does not matter for speed, only the size).
Prints and writes the measured times and their ratio; the goal is a ratio >= 20.

Usage: python bench/bench_tradeoff.py [--samples 500000] [--repeats 5] [--out bench/results/tradeoff.json]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tinysaver import Record, save_record
from tinysaver.io import write_json

HERE = Path(__file__).resolve().parent


def make_records(folder: Path, m: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 1000, m)
    conf = rng.beta(5, 1.5, m).astype(np.float32).astype(np.float64)  # float32 softmax-like values
    saver_pred = np.where(rng.random(m) < conf, label, (label + 1) % 1000)
    base_pred = np.where(rng.random(m) < 0.85, label, (label + 1) % 1000)
    saver = save_record(folder / "saver.npz", Record("saver", 0.22, conf, saver_pred, label))
    base = save_record(folder / "base.npz", Record("base", 4.09, rng.random(m), base_pred, label))
    return saver, base


def best_time(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "tradeoff.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        saver, base = make_records(Path(tmp), args.samples)
        exe = [sys.executable, "-m", "tinysaver.cli"]
        exact = best_time(exe + ["tradeoff", "--saver", str(saver), "--base", str(base),
                                 "--json", os.path.join(tmp, "row.json")], args.repeats)
        grid = best_time([sys.executable, str(HERE / "grid_reference.py"), str(saver), str(base)], args.repeats)
        baseline = best_time([sys.executable, "-c", "import numpy"], args.repeats)
    result = {"samples": args.samples, "repeats": args.repeats, "exact_cli_s": exact, "grid_loop_s": grid,
              "speedup": grid / exact, "python_numpy_start_s": baseline,
              "distinct_thresholds_exact": "all", "grid_thresholds": 1001}
    write_json(args.out, result)
    print(f"exact tradeoff CLI (every threshold): {exact:.3f} s   0.001-grid loop: {grid:.3f} s   "
          f"speed-up {grid / exact:.1f}x  (python+numpy start alone: {baseline:.3f} s)")


if __name__ == "__main__":
    main()
