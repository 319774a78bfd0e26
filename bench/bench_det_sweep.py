"""Benchmark (not a test): the detection threshold sweep, full COCOeval per threshold vs
:class:`tinysaver.detection.CocoSweep` (each model evaluated once, each threshold re-accumulated).

Synthetic COCO-scale data (the content does not matter for speed, only the size and the shape of
COCO): 5,000 images of 640x480, 80 categories, ~7 objects per image over the small/medium/large
ranges; two "models" answering with ~55 boxes per image (a found box per object, jittered, with a
high score, plus low-scoring false positives over a few categories), as YOLO's val settings
(conf 0.001) give. maxDets (100, 300, 1000) as tools/test.py.

Measured: the full COCOeval (pycocotools ``evaluate`` + ``accumulate`` + ``summarize``) at a few
thresholds, the sweep's one-time evaluation of both models, and the sweep at 51 thresholds (0 to 1
step 0.02). Asserted: the 12 stats of both agree within 1e-9 at every threshold the full
evaluation ran. The CPU load (``os.getloadavg``) is written with the times: on a shared machine the
times are noisy.

Usage: python bench/bench_det_sweep.py [--images 5000] [--full-thresholds 3] [--out bench/results/det_sweep.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from tinysaver.confidence import build_confidence
from tinysaver.detection import CocoScorer, DetRecord, chain_detections
from tinysaver.io import write_json, write_text

HERE = Path(__file__).resolve().parent
W, H, CATS = 640, 480, 80


def make_ground_truth(rng: np.random.Generator, images: int) -> dict:
    anns, image_rows = [], []
    for i in range(1, images + 1):
        image_rows.append({"id": i, "file_name": f"{i:012d}.jpg", "width": W, "height": H})
        for _ in range(rng.poisson(7.3)):
            side = float(np.exp(rng.uniform(np.log(12), np.log(400))))  # small, medium and large
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, W - min(w, W - 1)), rng.uniform(0, H - min(h, H - 1))
            w, h = min(w, W - x), min(h, H - y)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, CATS + 1)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.01)})
    return {"images": image_rows, "annotations": anns,
            "categories": [{"id": c, "name": f"class{c}"} for c in range(1, CATS + 1)]}


def make_record(rng: np.random.Generator, gt: dict, name: str, gflops: float, skill: float) -> DetRecord:
    by_image: dict = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    boxes, scores, labels = [], [], []
    for img in gt["images"]:
        objs = by_image.get(img["id"], [])
        b, s, c = [], [], []
        for a in objs:  # found objects: jittered box, high score
            if rng.random() < skill:
                x, y, w, h = a["bbox"]
                jitter = rng.normal(0, (1.15 - skill) * 0.25, 4) * [w, h, w, h]
                b.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
                s.append(rng.beta(6 * skill, 2))
                c.append(a["category_id"] - 1 if rng.random() < 0.93 else int(rng.integers(0, CATS)))
        n_fp = int(rng.integers(20, 80))  # false positives over a few categories, low scores
        cats = rng.integers(0, CATS, max(1, len(objs) + 2))
        x0, y0 = rng.uniform(0, W - 20, n_fp), rng.uniform(0, H - 20, n_fp)
        ws, hs = rng.uniform(8, 300, n_fp), rng.uniform(8, 300, n_fp)
        b.extend(np.column_stack([x0, y0, np.minimum(x0 + ws, W), np.minimum(y0 + hs, H)]).tolist())
        s.extend((rng.beta(1, 12, n_fp) * 0.999 + 0.001).tolist())
        c.extend(rng.choice(cats, n_fp).tolist())
        boxes.append(np.asarray(b, np.float32).reshape(-1, 4))
        scores.append(np.asarray(s, np.float32))
        labels.append(np.asarray(c, np.int64))
    return DetRecord.from_lists(name, gflops, [img["id"] for img in gt["images"]], boxes, scores, labels,
                                list(range(1, CATS + 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--full-thresholds", type=int, default=3, help="thresholds the full COCOeval is timed at")
    ap.add_argument("--out", default=str(HERE / "results" / "det_sweep.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        gt = make_ground_truth(rng, args.images)
        ann = Path(tmp) / "instances.json"
        ann.write_text(json.dumps(gt))
        saver = make_record(rng, gt, "saver", 8.7, 0.75)
        base = make_record(rng, gt, "base", 257.8, 0.95)
        scorer = CocoScorer(ann)
        conf = build_confidence("mean_box_score")(saver.scores_per_image())
        grid = np.round(np.arange(0, 1.0001, 0.02), 10)
        full_at = np.quantile(conf, np.linspace(0.2, 0.8, args.full_thresholds))

        start = time.perf_counter()
        sweep = scorer.sweep([saver, base])
        init_s = time.perf_counter() - start
        start = time.perf_counter()
        fast_grid = [sweep.stats(np.where(conf >= t, 0, 1)) for t in grid]
        grid_s = time.perf_counter() - start

        full_times, diffs, fast_times = [], [], []
        for t in full_at:
            stage = np.where(conf >= t, 0, 1)
            start = time.perf_counter()
            full = scorer.stats(chain_detections([saver, base], stage), saver.image_ids, saver.cat_ids)
            full_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            fast = sweep.stats(stage)
            fast_times.append(time.perf_counter() - start)
            diffs.append(max(abs(fast[k] - full[k]) for k in full))
    assert max(diffs) <= 1e-9, diffs
    full_s, fast_s = float(np.mean(full_times)), grid_s / len(grid)
    result = {
        "images": args.images, "categories": CATS, "objects": len(gt["annotations"]),
        "detections_per_model": [int(len(saver.det_scores)), int(len(base.det_scores))],
        "max_dets": list(scorer.max_dets),
        "full_cocoeval_s_per_threshold": full_s, "full_thresholds_timed": len(full_times),
        "sweep_init_s": init_s, "sweep_s_per_threshold": fast_s, "sweep_thresholds": len(grid),
        "speedup_per_threshold": full_s / fast_s,
        "full_51_thresholds_s_estimate": full_s * len(grid),
        "sweep_51_thresholds_s_with_init": init_s + grid_s,
        "max_abs_stat_difference": float(max(diffs)), "stats_compared_at": [float(t) for t in full_at],
        "ap_at_0_and_1": [fast_grid[0]["AP"], fast_grid[-1]["AP"]],
        "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()), "cpus": os.cpu_count(),
    }
    write_json(args.out, result)
    md = (f"# Detection sweep: full COCOeval vs per-image evaluation once + re-accumulation\n\n"
          f"{args.images} synthetic COCO-scale images, {len(gt['annotations'])} objects, "
          f"{result['detections_per_model'][0]:,} / {result['detections_per_model'][1]:,} detections, maxDets "
          f"{tuple(scorer.max_dets)}; load average {load_start[0]:.1f} on {os.cpu_count()} CPUs at the start.\n\n"
          f"| | seconds |\n|---|---|\n"
          f"| full COCOeval, per threshold (mean of {len(full_times)}) | {full_s:.2f} |\n"
          f"| sweep: both models evaluated once | {init_s:.2f} |\n"
          f"| sweep: per threshold (mean of {len(grid)}) | {fast_s:.3f} |\n"
          f"| speed-up per threshold | **{full_s / fast_s:.0f}x** |\n"
          f"| 51 thresholds: full (estimated from the mean) / sweep (measured, with the evaluation once) | "
          f"{full_s * len(grid):.0f} / {init_s + grid_s:.1f} |\n\n"
          f"Largest difference of the 12 stats from the full COCOeval: {max(diffs):.1e} (at "
          f"{len(full_times)} thresholds).\n")
    write_text(Path(args.out).with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
