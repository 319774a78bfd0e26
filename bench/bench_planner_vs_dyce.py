"""Benchmark (not a test): TinySaver's planner vs a port of DyCE's search, as chain planners.

On the same records, for each allowed accuracy drop: the chain and thresholds each method chooses
on the holdout split, the saving (1 − GMACs / base GMACs) there and on the test split, whether the
test accuracy keeps the target, and each whole search's wall and CPU time.

- **ours**: :func:`tinysaver.analysis.search_plan` with chains of any length (``--max-stages`` =
  pool size + 1): tables for chains of up to 3 stages, then the coordinate descent.
- **ours, 3-stage tables**: the same tables without the descent (the planner before it).
- **ours + certify**: :func:`tinysaver.analysis.certify_plan` on the holdout (Learn then Test, δ =
  ``--delta``): its target holds on new data with probability >= 1 − δ.
- **DyCE**: ``bench/dyce_port.py`` (our port of ``dyce/config_search.py`` of QingyuanWang/dyce):
  one-pass and circular searches for every λ of the sweep, the cheapest within each drop on the
  holdout.

Cases: the Fashion-MNIST demo pool (``fmnist_cnn_{xxs,xs,s,m}`` → ``fmnist_cnn_l``, holdout and test
records; missing records are made with ``tinysaver record``), and two synthetic pools of 8 savers +
a base × 50,000 samples per split: ``synthetic_ladder`` (savers of increasing skill that each know
the samples easier than their skill — long chains pay) and ``synthetic_plan_bench`` (the pool of
``bench/bench_plan.py``). Last, the descent alone against a brute force on small random pools.

Usage: python bench/bench_planner_vs_dyce.py [--records outputs/fashion_mnist/records]
       [--samples 50000] [--out bench/results/planner_vs_dyce.json] [--cases fashion_mnist ...]
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dyce_port  # noqa: E402
from bench_plan import make_pool as make_plan_bench_pool  # noqa: E402

from tinysaver import load_record  # noqa: E402
from tinysaver.analysis import (PAPER_DROPS, ChainStage, certify_plan, search_plan, search_tables,  # noqa: E402
                                simulate_chain)
from tinysaver.io import write_json, write_text  # noqa: E402

FMNIST_POOL = ("fmnist_cnn_xxs", "fmnist_cnn_xs", "fmnist_cnn_s", "fmnist_cnn_m")
FMNIST_BASE = "fmnist_cnn_l"
SYNTHETIC_SAVERS = 8


# --- records --------------------------------------------------------------------------------------

def fmnist_records(folder: Path) -> Tuple[List[ChainStage], List[ChainStage]]:
    """The demo pool's holdout and test stages (pool by cost, base last); missing records are made
    with ``tinysaver record`` (CPU, a few seconds to a minute each)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in ("holdout", "test"):
        records = []
        for model in FMNIST_POOL + (FMNIST_BASE,):
            path = folder / f"{model}_{split}.npz"
            if not path.exists():
                print(f"making {path}", flush=True)
                subprocess.run([sys.executable, "-m", "tinysaver.cli", "record", "--model", model, "--data",
                                "fashion_mnist", "--split", split, "--out", str(path), "--device", "cpu"],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            records.append(load_record(path))
        pool = sorted(records[:-1], key=lambda r: r.gmacs)
        splits[split] = [ChainStage.from_record(r) for r in pool + [records[-1]]]
    return splits["holdout"], splits["test"]


def ladder_pool(m: int, seed: int, savers: int = SYNTHETIC_SAVERS) -> List[ChainStage]:
    """Savers of increasing skill and cost (0.02·2^i GMACs; base 4 GMACs): saver i knows the
    samples easier than its skill (right 97 % of the time, confident), guesses on the others (right
    30 %, unsure); the base knows 97 % of the samples."""
    rng = np.random.default_rng(seed)
    hard = rng.random(m)
    stages = []
    for i, skill in enumerate(np.linspace(0.5, 0.92, savers)):
        knows = hard < skill
        conf = np.where(knows, rng.beta(6, 1, m), rng.beta(2, 2.5, m)).astype(np.float32).astype(np.float64)
        right = np.where(knows, rng.random(m) < 0.97, rng.random(m) < 0.3).astype(np.float64)
        stages.append(ChainStage(f"s{i}", 0.02 * 2.0 ** i, conf, right))
    right = np.where(hard < 0.97, rng.random(m) < 0.97, rng.random(m) < 0.3).astype(np.float64)
    stages.append(ChainStage("base", 4.0, np.ones(m), right))
    return stages


def plan_bench_pool(m: int, seed: int) -> List[ChainStage]:
    """The pool of ``bench/bench_plan.py`` (written and read back as records)."""
    with tempfile.TemporaryDirectory() as tmp:
        base, pool = make_plan_bench_pool(Path(tmp), m, seed, "split")
        records = [load_record(p) for p in pool] + [load_record(base)]
    return [ChainStage.from_record(r) for r in records]


# --- measuring --------------------------------------------------------------------------------------

def timed(fn: Callable[[], object]) -> Tuple[object, float, float]:
    """``(result, wall s, CPU s of this process)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def describe(chain: Sequence[int], thresholds: Sequence[float], holdout: Sequence[ChainStage],
             test: Sequence[ChainStage], drop: float) -> Dict[str, object]:
    """A configuration on both splits: chain, thresholds, savings, accuracies, target kept."""
    out: Dict[str, object] = {"chain": [holdout[i].name for i in chain], "thresholds": [float(t) for t in thresholds]}
    for name, stages in (("holdout", holdout), ("test", test)):
        ev = simulate_chain([stages[i] for i in chain], np.asarray(thresholds, dtype=np.float64))
        m = stages[0].num_samples
        out[f"saving_{name}"] = float(1.0 - ev.gmacs[0] / stages[-1].gmacs)
        out[f"acc_{name}"] = float(ev.acc[0])
        out[f"meets_{name}"] = bool(ev.acc[0] * m >= stages[-1].correct.sum() - drop / 100.0 * m - 1e-6)
    return out


def run_ours(holdout, test, drops, max_stages, descent=True) -> Dict[str, object]:
    planned, wall, cpu = timed(lambda: search_plan(holdout, max_stages, drops, descent=descent, progress=False))
    per_drop = {}
    for d in drops:
        c = planned.choices[d]
        per_drop[repr(d)] = None if c is None else {**describe(c.chain, c.thresholds, holdout, test, d),
                                                    "found_by": c.found_by}
    return {"wall_s": wall, "cpu_s": cpu, "mode": planned.mode, "search": planned.info(), "per_drop": per_drop}


def run_certified(holdout, test, drops, max_stages, delta) -> Dict[str, object]:
    certified, wall, cpu = timed(lambda: certify_plan(holdout, test, [d for d in drops if d >= 0], delta,
                                                      max_stages=max_stages))
    index = {s.name: i for i, s in enumerate(holdout)}
    per_drop = {}
    for d, cal in certified.items():
        chain = [index[n] for n in cal.stages]
        per_drop[repr(d)] = {**describe(chain, cal.thresholds, holdout, test, d),
                             "hypotheses_rejected": cal.rejected, "hypotheses_tested": cal.tested}
    return {"wall_s": wall, "cpu_s": cpu, "delta": delta, "method": "wsr", "per_drop": per_drop}


def run_dyce(holdout, test, drops, lambdas) -> Dict[str, object]:
    """The λ sweep twice: as published (circular's threshold search unnormalised, see
    ``dyce_port.DyceSearch.circular``) and with every cost normalised; per drop the cheapest
    configuration of each, and of both together ("best of both", the DyCE we compare with)."""
    out: Dict[str, object] = {}
    configs = []
    for variant, published in (("published", True), ("normalised", False)):
        swept, wall, cpu = timed(lambda: dyce_port.sweep(holdout, lambdas, published_circular=published))
        configs += swept["configs"]
        out[variant] = {"wall_s": wall, "cpu_s": cpu, "lambdas": len(swept["lambdas"]),
                        "methods": swept["methods"], "searches": len(swept["configs"]),
                        "cost_evaluations": swept["evaluations"], "per_drop": pick_all(swept["configs"], holdout,
                                                                                       test, drops)}
    out["best_of_both"] = {"per_drop": pick_all(configs, holdout, test, drops)}
    return out


def pick_all(configs, holdout, test, drops) -> Dict[str, object]:
    per_drop = {}
    for d in drops:
        config = dyce_port.pick(configs, holdout, d)
        if config is None:
            per_drop[repr(d)] = None
            continue
        chain, t = dyce_port.to_chain(config, holdout)
        per_drop[repr(d)] = {**describe(chain, t, holdout, test, d), "lambda": config.lam, "method": config.method}
    return per_drop


def run_case(name: str, holdout: List[ChainStage], test: List[ChainStage], drops, lambdas, delta) -> Dict[str, object]:
    k = len(holdout)
    print(f"[{name}] ours (chains of up to {k} stages)", flush=True)
    ours = run_ours(holdout, test, drops, k)
    print(f"[{name}] ours, 3-stage tables only", flush=True)
    three = run_ours(holdout, test, drops, 3, descent=False)
    print(f"[{name}] ours + certify (delta {delta})", flush=True)
    certified = run_certified(holdout, test, drops, k, delta)
    print(f"[{name}] DyCE port ({len(lambdas)} lambdas x one-pass, circular; as published and normalised)",
          flush=True)
    dyce = run_dyce(holdout, test, drops, lambdas)
    verdict = {}
    best = dyce["best_of_both"]["per_drop"]
    for split in ("holdout", "test"):
        verdict[f"ours_ge_dyce_{split}"] = all(
            best[repr(d)] is None or (ours["per_drop"][repr(d)] is not None and
                                      ours["per_drop"][repr(d)][f"saving_{split}"] >= best[repr(d)][f"saving_{split}"])
            for d in drops)
    verdict["ours_faster"] = ours["wall_s"] < dyce["published"]["wall_s"]
    verdict["ours_less_cpu"] = ours["cpu_s"] < dyce["published"]["cpu_s"]
    verdict["certified_meets_test"] = all(v["meets_test"] for v in certified["per_drop"].values())
    return {"models": [{"name": s.name, "gmacs": s.gmacs, "acc_holdout": float(s.correct.mean()),
                        "acc_test": float(t.correct.mean())} for s, t in zip(holdout, test)],
            "samples": {"holdout": holdout[0].num_samples, "test": test[0].num_samples},
            "ours": ours, "ours_3_stage_tables": three, "ours_certified": certified, "dyce": dyce,
            "verdict": verdict}


# --- the descent against a brute force on small data ----------------------------------------------------

def brute_force_best(stages: Sequence[ChainStage], max_stages: int, need: float) -> float:
    """Lowest cost over every chain of up to ``max_stages`` stages and every threshold combination
    (every distinct confidence or +inf per stage) meeting ``need`` right answers (vectorised per chain)."""
    n, m = len(stages) - 1, stages[0].num_samples
    best = np.inf
    for size in range(0, min(max_stages - 1, n) + 1):
        for combo in itertools.combinations(range(n), size):
            chain = [stages[i] for i in combo] + [stages[-1]]
            grid = [np.append(np.unique(s.conf), np.inf) for s in chain[:-1]]
            combos = list(itertools.product(*grid))
            t = np.array(combos, dtype=np.float64).reshape(len(combos), size)
            ev = simulate_chain(chain, t)
            ok = np.rint(ev.acc * m) >= need - 1e-6
            if ok.any():
                best = min(best, float(ev.gmacs[ok].min()))
    return best


def descent_vs_brute_force(cases: int = 200, seed: int = 0) -> Dict[str, object]:
    """Small random pools (4 savers, 6-9 samples, up to 5 stages): the planner with 3-stage tables
    and the descent (no 4- or 5-stage table) against a brute force over every chain."""
    rng = np.random.default_rng(seed)
    equal, longer, gaps = 0, 0, []
    for _ in range(cases):
        m = int(rng.integers(6, 10))
        stages = [ChainStage(f"s{i}", 0.5 * (i + 1), rng.choice([0.2, 0.5, 0.8, 1.0], m) * rng.random(m) ** 0.1,
                        (rng.random(m) < 0.6 + 0.1 * i).astype(float)) for i in range(4)]
        stages.append(ChainStage("base", 10.0, np.ones(m), (rng.random(m) < 0.9).astype(float)))
        drop = float(rng.choice([0.0, 10.0, 20.0]))
        need = stages[-1].correct.sum() - drop / 100 * m
        # max_exact_cells=1: no 4- or 5-stage table, so the descent has to find those chains
        tables = search_tables(stages, 5, max_exact_cells=1)
        planned = search_plan(stages, 5, [drop], max_exact_cells=1, tables=tables, progress=False)
        mine = planned.choices[drop].cost
        best = brute_force_best(stages, 5, need)
        equal += bool(mine <= best * (1 + 1e-12))
        longer += bool(best < brute_force_best(stages, 3, need) * (1 - 1e-12))
        gaps.append(mine / best - 1.0)
    return {"cases": cases, "reached_the_optimum": equal, "optimum_needs_4_or_5_stages": longer,
            "worst_relative_gap": float(max(gaps)),
            "mean_relative_gap": float(np.mean(gaps)),
            "setting": "4 savers, 6-9 samples, max 5 stages, drops 0/10/20 pt; tables for chains of up to "
                       "3 stages (every distinct confidence), the descent for longer ones"}


# --- report ---------------------------------------------------------------------------------------------

def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{round(100 * x, 1) + 0.0:.1f} %"  # + 0.0: no "-0.0"


def case_markdown(name: str, case: Dict[str, object]) -> str:
    ours, cert, three = case["ours"], case["ours_certified"], case["ours_3_stage_tables"]
    dyce, published, normalised = case["dyce"]["best_of_both"], case["dyce"]["published"], case["dyce"]["normalised"]
    base = case["models"][-1]
    lines = [f"## {name}", "",
             f"Pool: {', '.join(m['name'] for m in case['models'][:-1])} → base {base['name']} "
             f"({base['gmacs']:.4g} GMACs; holdout acc. {base['acc_holdout']:.2%}, test {base['acc_test']:.2%}); "
             f"{case['samples']['holdout']:,} holdout / {case['samples']['test']:,} test samples. Thresholds "
             "searched on the holdout, measured on the test split. Saving = 1 − GMACs / base GMACs.", "",
             "| drop ≤ | ours: chain | ours: saving holdout → test | test keeps target | "
             "3-stage tables: holdout → test | DyCE: chain | DyCE: saving holdout → test | test keeps target | "
             "DyCE as published / normalised: holdout | "
             "ours + certify (δ = %g): saving test | keeps target |" % cert["delta"],
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in ours["per_drop"]:
        o, y, c, t = ours["per_drop"][d], dyce["per_drop"][d], cert["per_drop"].get(d), three["per_drop"][d]

        def chain(p):
            return "–" if p is None else " → ".join(x.replace("fmnist_cnn_", "") for x in p["chain"])

        def saving(p):
            return "–" if p is None else f"{_pct(p['saving_holdout'])} → {_pct(p['saving_test'])}"

        def keeps(p):
            return "–" if p is None else ("yes" if p["meets_test"] else "no")

        p, q = published["per_drop"][d], normalised["per_drop"][d]
        variants = " / ".join("–" if v is None else _pct(v["saving_holdout"]) for v in (p, q))
        lines.append(f"| {float(d):g} pt | {chain(o)} | {saving(o)} | {keeps(o)} | {saving(t)} | {chain(y)} | "
                     f"{saving(y)} | {keeps(y)} | {variants} | {'–' if c is None else _pct(c['saving_test'])} | "
                     f"{keeps(c)} |")
    lines += ["",
              f"Search time (wall / CPU, holdout only): ours {ours['wall_s']:.2f} s / {ours['cpu_s']:.2f} s "
              f"({ours['mode']}, {ours['search']['chains']} chains, {ours['search']['table_chains']} with a table); "
              f"3-stage tables alone {three['wall_s']:.2f} s; ours + certify {cert['wall_s']:.2f} s; "
              f"DyCE's sweep as published {published['wall_s']:.2f} s / {published['cpu_s']:.2f} s "
              f"({published['lambdas']} λ × {len(published['methods'])} methods, "
              f"{published['cost_evaluations']:,} cost evaluations; normalised: {normalised['wall_s']:.2f} s / "
              f"{normalised['cpu_s']:.2f} s). DyCE's columns are the cheapest of both sweeps' configurations.", "",
              "Verdict: ours ≥ DyCE at every drop on the holdout: "
              f"{'yes' if case['verdict']['ours_ge_dyce_holdout'] else 'NO'}; on the test split: "
              f"{'yes' if case['verdict']['ours_ge_dyce_test'] else 'NO'}; ours faster than one DyCE sweep "
              f"(wall / CPU): {'yes' if case['verdict']['ours_faster'] else 'NO'} / "
              f"{'yes' if case['verdict']['ours_less_cpu'] else 'NO'}; certified plans keep the target on test: "
              f"{'yes' if case['verdict']['certified_meets_test'] else 'NO'}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", default="outputs/fashion_mnist/records",
                    help="folder of the Fashion-MNIST records (missing ones are made)")
    ap.add_argument("--samples", type=int, default=50_000, help="samples per split of the synthetic pools")
    ap.add_argument("--cases", nargs="+", default=["fashion_mnist", "synthetic_ladder", "synthetic_plan_bench"],
                    choices=["fashion_mnist", "synthetic_ladder", "synthetic_plan_bench"])
    ap.add_argument("--delta", type=float, default=0.1, help="δ of the certified plans")
    ap.add_argument("--brute-force-cases", type=int, default=200)
    ap.add_argument("--out", default=str(HERE / "results" / "planner_vs_dyce.json"))
    args = ap.parse_args()
    drops = [float(d) for d in PAPER_DROPS]
    lambdas = dyce_port.default_lambdas()
    load_before = os.getloadavg()
    result: Dict[str, object] = {"drops": drops, "cases": {}}
    for name in args.cases:
        if name == "fashion_mnist":
            holdout, test = fmnist_records(Path(args.records))
        elif name == "synthetic_ladder":
            holdout, test = ladder_pool(args.samples, 1), ladder_pool(args.samples, 2)
        else:
            holdout, test = plan_bench_pool(args.samples, 1), plan_bench_pool(args.samples, 0)
        result["cases"][name] = run_case(name, holdout, test, drops, lambdas, args.delta)
    print("descent vs brute force", flush=True)
    result["descent_vs_brute_force"] = descent_vs_brute_force(args.brute_force_cases)
    result["machine"] = {"cpu_count": os.cpu_count(), "load_average_before": load_before,
                         "load_average_after": os.getloadavg(),
                         "note": "2 shared cores: wall times depend on the other agents' load (CPU times too, less)"}
    result["records"] = str(args.records)
    write_json(args.out, result)
    bf = result["descent_vs_brute_force"]
    md = ["# Planner vs DyCE (port), chosen on the holdout, measured on the test split", "",
          "Ours: `search_plan` (tables for chains of up to 3 stages, then the coordinate descent of "
          "`tinysaver/analysis/descent.py`; chains up to the pool size + 1). DyCE: `bench/dyce_port.py`, our port of "
          "`dyce/config_search.py` (QingyuanWang/dyce): λ-weighted normalised cost, one-pass and circular "
          f"coordinate search with `fminbound` per exit, {len(lambdas)} λ (DyCE's default 0.50…1.00 by 0.01 plus "
          "31 values approaching 1), run as published (its circular search scores enabled exits unnormalised) "
          "and fully normalised; per drop the cheapest configuration of both within it on the holdout. "
          "Certify: Learn then Test on the holdout (`certify_plan`, WSR).", ""]
    md += [case_markdown(name, case) for name, case in result["cases"].items()]
    md += ["## The descent against a brute force on small data", "",
           f"{bf['setting']}: the optimum in {bf['reached_the_optimum']} of {bf['cases']} random cases "
           f"({bf['optimum_needs_4_or_5_stages']} of them need a chain of 4 or 5 stages to reach it); worst "
           f"relative excess cost {100 * bf['worst_relative_gap']:.1f} %, mean {100 * bf['mean_relative_gap']:.2f} %. "
           "(With tables for every chain — the default on data this small — the planner equals the brute force; "
           "see tests/test_descent.py.)", "",
           f"Machine: {os.cpu_count()} CPU cores shared with other agents; 1-min load average "
           f"{load_before[0]:.2f} before, {result['machine']['load_average_after'][0]:.2f} after."]
    text = "\n".join(md) + "\n"
    write_text(Path(args.out).with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
