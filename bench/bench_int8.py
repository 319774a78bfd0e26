"""Benchmark (not a test): an int8 saver against its fp32 graph on onnxruntime, alone and in the cascade.

Pair: the Fashion-MNIST demo's fmnist_cnn_s -> fmnist_cnn_l, exported twice by
:func:`tinysaver.runtime.export.export_cascade`: all fp32, and the saver in int8 (static QDQ,
calibrated on 512 holdout images) before the same fp32 base (the two base graphs are byte-equal).
Everything runs on onnxruntime's CPU provider with one intra-op thread.

1. **Saver latency**: the fp32 and the int8 saver graph over the same preprocessed test images at
   batch 1 and batch 32, interleaved passes, best and median of ``--repeats``; the ratio int8/fp32
   (< 1: int8 is faster).
2. **Cascade speed-up at the same accuracy target**: each saver's threshold is chosen on its *own*
   runtime records of the holdout split (``record_stage``, batch 32: the cheapest threshold whose
   holdout accuracy is within ``--drop`` points of the base's), then the live
   :class:`~tinysaver.runtime.OnnxCascade` with each saver and the base alone run over the whole
   test split at batch 1 and 32, interleaved; speed-up = base time / cascade time (best and
   median). The test accuracy and exit ratio each cascade reached are reported with it.

Speed is always a ratio against a reference measured in the same run; the machine and its load
average (start and end) are recorded. The helpers here are shared with ``tools/deploy_drift.py``
(the drift table, ``results/deploy/``).

Usage: python bench/bench_int8.py [--repeats 5] [--drop 0.5] [--out bench/results/bench_int8.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAVER, BASE = "fmnist_cnn_s", "fmnist_cnn_l"


# --- shared helpers (also used by tools/deploy_drift.py) -------------------------------------------

def loadavg() -> List[float]:
    """The 1/5/15-minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def environment(threads: int) -> Dict[str, Any]:
    """What the timings were measured on."""
    import onnxruntime

    from tinysaver.runtime.recording import device_label

    return {"machine": device_label(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "provider": "CPUExecutionProvider", "intra_op_threads": threads, "loadavg_start": loadavg()}


def export_models(out: Path, specs: Sequence[str], precisions: Sequence[str], *, calib_data: Optional[str] = None,
                  calib_split: Optional[str] = None, calib_limit: int = 512,
                  thresholds: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """``tinysaver export`` through its Python API: ``specs`` as ``--stages`` (NAME or NAME=WEIGHTS),
    one precision per stage; int8 stages are calibrated on ``calib_limit`` images of
    ``calib_data/calib_split``. Returns the manifest (stage names are the specs' model names)."""
    from tinysaver.models.cascade import Cascade
    from tinysaver.pipeline import ModelSpec
    from tinysaver.registry import classifier_source
    from tinysaver.runtime.export import export_cascade
    from tinysaver.runtime.quantize import Calibration

    parsed = [ModelSpec.parse(s) for s in specs]
    source = classifier_source()
    models = [source.create(s.name, s.weights) for s in parsed]
    thresholds = list(thresholds) if thresholds is not None else [1.0] * (len(models) - 1)
    calib = Calibration(calib_data, calib_split, calib_limit) if calib_data is not None else None
    return export_cascade(Cascade(*models, thresholds=thresholds), out, names=[s.name for s in parsed],
                          data_configs=[source.data_config(m) for m in models], precision=list(precisions), calib=calib)


def sub_export(src: Path, names: Sequence[str], thresholds: Sequence[float], dst: Path) -> Path:
    """An export of some stages of ``src`` (a sub-chain, in ``src``'s order): the same graph files
    (copied, so every sha256 and record made on ``src`` still applies) and a manifest listing only
    ``names`` with ``thresholds``."""
    from tinysaver.io import write_json
    from tinysaver.runtime.manifest import MANIFEST, read_manifest
    from tinysaver.thresholds import threshold_to_json

    manifest = read_manifest(src)
    stages = [s for s in manifest["stages"] if s["name"] in set(names)]
    if [s["name"] for s in stages] != list(names):
        known = [s["name"] for s in manifest["stages"]]
        raise ValueError(f"{src}: stages {list(names)} are not a sub-chain of {known}")
    dst.mkdir(parents=True, exist_ok=True)
    for s in stages:
        shutil.copyfile(src / s["file"], dst / s["file"])
    sub = dict(manifest, stages=stages, thresholds=[threshold_to_json(float(t)) for t in thresholds], single_graph=None)
    write_json(dst / MANIFEST, sub)
    return dst


def fmnist_samples(split: str):
    """The Fashion-MNIST split as ``(PIL image, label)`` items (what ``tinysaver record`` reads)."""
    from tinysaver.plugins.datasets import ArrayImageDataset, load_fashion_mnist

    return ArrayImageDataset(*load_fashion_mnist(split))


def runtime_record(export: Path, stage: str, split: str, batch_size: int, threads: int, samples=None):
    """``tinysaver record --runtime onnxruntime --export EXPORT --stage STAGE --data fashion_mnist
    --split SPLIT --batch-size B --threads T`` in memory (a :class:`~tinysaver.records.Record` with
    ``latency_ms``)."""
    from tinysaver.runtime.recording import record_stage

    samples = fmnist_samples(split) if samples is None else samples
    return record_stage(export, stage, samples, batch_size=batch_size, threads=threads,
                        settings={"data": "fashion_mnist", "split": split})


def preprocessed(export: Path, samples) -> np.ndarray:
    """The samples through the export's first stage's preprocessing, float32 ``[N, C, H, W]`` (every
    Fashion-MNIST stage shares it)."""
    from tinysaver.runtime.manifest import read_manifest, stage_specs
    from tinysaver.runtime.preprocess import decode_image, preprocess_image

    spec = stage_specs(read_manifest(export))[0]
    return np.stack([preprocess_image(decode_image(samples[i][0]), spec.preprocess) for i in range(len(samples))])


def pair_threshold(saver_calib, base_calib, drop: float) -> float:
    """The cheapest threshold whose accuracy on the calibration records is within ``drop`` points of
    the base's (``tinysaver tradeoff``'s choice, uncertified; ``inf`` when none is)."""
    from tinysaver.analysis import ExitCurve, cheapest_within_drop

    curve = ExitCurve.from_records(saver_calib, base_calib)
    k = cheapest_within_drop(curve, drop)
    return float("inf") if k is None else float(curve.threshold[k])


def time_interleaved(runs: Mapping[str, Callable[[np.ndarray], Any]], x: np.ndarray, batch_size: int,
                     repeats: int, progress: Optional[Callable[[str], None]] = None) -> Dict[str, List[float]]:
    """Seconds per pass of each run over ``x`` in batches of ``batch_size``: one untimed warm-up
    pass over the first 64 batches each, then ``repeats`` rounds in which every run makes one
    whole pass, the order rotated each round so that machine noise hits them alike."""
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    names = list(runs)
    for name in names:
        for b in batches[:64]:
            runs[name](b)
    seconds: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn = runs[name]
            begin = time.perf_counter()
            for b in batches:
                fn(b)
            seconds[name].append(time.perf_counter() - begin)
        if progress is not None:
            progress(f"    batch {batch_size}: round {r + 1}/{repeats} done (load {loadavg()[:1]})")
    return seconds


def best_median(values: Sequence[float]) -> Dict[str, float]:
    return {"best": float(min(values)), "median": float(statistics.median(values))}


def speedups(base_s: Sequence[float], other_s: Sequence[float]) -> Dict[str, float]:
    """Base time / other time, of the best passes and of the median passes."""
    return {"best": float(min(base_s) / min(other_s)),
            "median": float(statistics.median(base_s) / statistics.median(other_s))}


# --- the benchmark -------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drop", type=float, default=0.5, help="accuracy target: drop vs the base in points (default 0.5)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved passes per measurement (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--work", default=str(ROOT / "outputs" / "bench_int8"), help="exports (not committed)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_int8.json"))
    args = ap.parse_args()
    from tinysaver.io import write_json, write_text
    from tinysaver.runtime import OnnxCascade

    say = lambda s: print(s, flush=True)  # noqa: E731
    env = environment(args.threads)
    say(f"bench_int8: {env['machine']}, onnxruntime {env['onnxruntime']}, {args.threads} thread(s), "
        f"load {env['loadavg_start']}")
    work = Path(args.work)
    exports = {"fp32": work / "fp32", "int8": work / "int8"}
    say("exporting fp32 and int8-saver pairs")
    export_models(exports["fp32"], [SAVER, BASE], ["fp32", "fp32"])
    manifest = export_models(exports["int8"], [SAVER, BASE], ["int8", "fp32"], calib_data="fashion_mnist",
                             calib_split="holdout")
    base_sha = {json.loads((d / "cascade.json").read_text())["stages"][1]["sha256"] for d in exports.values()}
    if len(base_sha) != 1:
        raise SystemExit("the two exports' base graphs differ")

    say("recording each saver and the base on holdout and test (onnxruntime, batch 32)")
    data = {"holdout": fmnist_samples("holdout"), "test": fmnist_samples("test")}
    recs = {(v, split): runtime_record(exports[v], SAVER, split, 32, args.threads, data[split])
            for v in exports for split in data}
    base_recs = {split: runtime_record(exports["fp32"], BASE, split, 32, args.threads, data[split]) for split in data}
    test = data["test"]
    x = preprocessed(exports["fp32"], test)
    m = len(x)
    base_correct = float(base_recs["test"].correct.sum())
    cascades, chosen = {}, {}
    for v in exports:
        t = pair_threshold(recs[v, "holdout"], base_recs["holdout"], args.drop)
        c = OnnxCascade(exports[v], threads=args.threads)
        c.thresholds = [t]
        out = c(x)
        exit_ratio = float((out.stage == 0).mean())
        acc = float((out.logits.argmax(1) == np.asarray(test.labels)).mean())
        cascades[v] = c
        chosen[v] = {"threshold": t, "test_exit_ratio": exit_ratio, "test_acc": acc, "base_test_acc": base_correct / m,
                     "saver_test_acc": float(recs[v, "test"].correct.mean()),
                     "meets_target": bool(acc * m >= base_correct - args.drop / 100 * m - 1e-6)}
        say(f"  {v} saver: threshold {t:.6g} (holdout, drop <= {args.drop:g} pt) -> test exit {exit_ratio:.2%}, "
            f"acc {acc:.2%} (base {base_correct / m:.2%})")
    rows = []
    for bs in args.batch_sizes:
        say(f"timing at batch {bs} ({m} test images per pass, {args.repeats} rounds)")
        runs = {"saver fp32": cascades["fp32"].models[0], "saver int8": cascades["int8"].models[0],
                "base fp32": cascades["fp32"].models[1], "cascade fp32 saver": cascades["fp32"],
                "cascade int8 saver": cascades["int8"]}
        secs = time_interleaved(runs, x, bs, args.repeats, say)
        row = {"batch_size": bs, "samples": m, "seconds": secs,
               "ms_per_sample": {k: {q: 1000 * t / m for q, t in best_median(v).items()} for k, v in secs.items()},
               # int8 time / fp32 time (> 1: the int8 saver takes longer)
               "int8_over_fp32_saver_time": speedups(secs["saver int8"], secs["saver fp32"])}
        for v in exports:
            row[f"speedup_{v}_saver"] = speedups(secs["base fp32"], secs[f"cascade {v} saver"])
            # the ideal 1 / (t_S/t_B + 1 - r) from the saver's and the base's best passes of this run
            row[f"ideal_speedup_{v}_saver"] = 1.0 / (min(secs[f"saver {v}"]) / min(secs["base fp32"]) + 1.0
                                                     - chosen[v]["test_exit_ratio"])
        rows.append(row)
    result = {"pair": [SAVER, BASE], "drop": args.drop, "repeats": args.repeats,
              "env": {**env, "loadavg_end": loadavg()},
              "int8_calibration": manifest["stages"][0].get("calibration"),
              "int8_agreement": manifest["stages"][0].get("agreement"),
              "threshold_choice": "cheapest threshold within the drop on each saver's own holdout runtime records "
                                  "(batch 32), uncertified", "chosen": chosen, "rows": rows}
    md = markdown(result)
    result["markdown"] = md
    write_json(args.out, result)
    write_text(Path(args.out).with_suffix(".md"), md)
    say(md)
    say(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


def markdown(r: Mapping[str, Any]) -> str:
    env = r["env"]
    lines = [f"# int8 vs fp32 saver ({r['pair'][0]} -> {r['pair'][1]}, onnxruntime CPU)", "",
             f"{env['machine']}, onnxruntime {env['onnxruntime']}, {env['intra_op_threads']} intra-op thread(s); "
             f"load average {env['loadavg_start']} at the start, {env['loadavg_end']} at the end. "
             f"Whole Fashion-MNIST test split per pass, {r['repeats']} interleaved passes per figure (best / median). "
             f"Made by `bench/bench_int8.py`.", "",
             "## Saver alone", "",
             "| batch | fp32 saver ms/sample | int8 saver ms/sample | int8 / fp32 time (best) | (median) "
             "| base ms/sample |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        ms = row["ms_per_sample"]
        ratio = row["int8_over_fp32_saver_time"]
        lines.append(f"| {row['batch_size']} | {ms['saver fp32']['best']:.4f} / {ms['saver fp32']['median']:.4f} | "
                     f"{ms['saver int8']['best']:.4f} / {ms['saver int8']['median']:.4f} | {ratio['best']:.3f} | "
                     f"{ratio['median']:.3f} | {ms['base fp32']['best']:.4f} / {ms['base fp32']['median']:.4f} |")
    lines += ["", f"## Cascade at the same target (drop <= {r['drop']:g} pt vs the base, threshold chosen on each "
                  "saver's own holdout runtime records)", "",
              "| saver | threshold | test exit | test acc. (base) | target met on test | "
              + " | ".join(f"speed-up b{row['batch_size']} (best / median; ideal)" for row in r["rows"]) + " |",
              "|---|---|---|---|---|" + "---|" * len(r["rows"])]
    for v in ("fp32", "int8"):
        c = r["chosen"][v]
        cells = [f"{row[f'speedup_{v}_saver']['best']:.2f}x / {row[f'speedup_{v}_saver']['median']:.2f}x; "
                 f"{row[f'ideal_speedup_{v}_saver']:.2f}x" for row in r["rows"]]
        lines.append(f"| {v} | {c['threshold']:.6g} | {c['test_exit_ratio']:.2%} | {c['test_acc']:.2%} "
                     f"({c['base_test_acc']:.2%}) | {'✓' if c['meets_target'] else '✗'} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Speed-up: the base alone's time over the live cascade's (whole test split). Ideal: "
                  "1 / (t_S/t_B + 1 − r) from the saver's and the base's best passes in this run and the cascade's "
                  "test exit ratio r: the speed-up if routing cost nothing."]
    ag = r.get("int8_agreement") or {}
    if ag:
        lines += ["", f"The int8 saver agreed with its fp32 graph on {ag['top1']:.2%} of the top-1 answers on its "
                      f"{ag['samples']} calibration images (export check). Those 512 images are part of the holdout "
                      "split its threshold is chosen on."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
