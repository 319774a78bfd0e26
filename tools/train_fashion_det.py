#!/usr/bin/env python
"""Makes the offline detection dataset and trains the two detectors of the small CPU cascade:

- saver: YOLOv8n (ultralytics, from ``yolov8n.yaml``, no pretrained weights) → ``weights/det/yolov8n_fashion-det.pt``;
- base: the half-width RetinaNet of ``configs/fashion_det/retinanet_r18-tiny_fashion-det.py`` (mmengine
  Runner) → ``weights/det/retinanet_r18-tiny_fashion-det.pth`` (state dict + meta only).

Data: ``plugins/fashion_det.py`` canvases (train 400, val 100) under ``data/fashion_det`` (or
FASHION_DET_ROOT). About 20 minutes on 2 CPU cores. Writes ``weights/det/manifest.json``.

Usage: python tools/train_fashion_det.py [--yolo-epochs 40] [--retina-epochs 20]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASHION_DET_ROOT", str(ROOT / "data" / "fashion_det")))
    ap.add_argument("--yolo-epochs", type=int, default=40)
    ap.add_argument("--retina-epochs", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "weights" / "det"))
    ap.add_argument("--skip-yolo", action="store_true")
    ap.add_argument("--skip-retina", action="store_true")
    args = ap.parse_args()
    os.environ["FASHION_DET_ROOT"] = args.data
    from tinysaver.io import atomic_open, write_json
    from tinysaver.plugins.fashion_det import make_fashion_det

    make_fashion_det(args.data, {"train": 400, "val": 100})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    import json

    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    work = ROOT / "work_dirs" / "train_fashion_det"
    if not args.skip_yolo:
        from tinysaver.plugins.ultralytics import prepare_offline

        prepare_offline()
        from ultralytics import YOLO

        start = time.perf_counter()
        YOLO("yolov8n.yaml").train(data=str(Path(args.data) / "data.yaml"), imgsz=192, epochs=args.yolo_epochs,
                                   batch=16, device="cpu", workers=0, project=str(work), name="yolo", exist_ok=True,
                                   plots=False, amp=False, seed=0, deterministic=True, verbose=False)
        target = out / "yolov8n_fashion-det.pt"
        shutil.copyfile(work / "yolo" / "weights" / "best.pt", target)
        manifest["yolov8n_fashion-det.pt"] = {"epochs": args.yolo_epochs, "imgsz": 192,
                                              "train_seconds": round(time.perf_counter() - start, 1),
                                              "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}
        write_json(manifest_path, manifest)
    if not args.skip_retina:
        import torch
        from mmengine.config import Config
        from mmengine.runner import Runner

        cfg = Config.fromfile(str(ROOT / "configs" / "fashion_det" / "retinanet_r18-tiny_fashion-det.py"))
        cfg.work_dir = str(work / "retinanet")
        cfg.train_cfg.max_epochs = cfg.train_cfg.val_interval = args.retina_epochs
        cfg.default_hooks.checkpoint.interval = args.retina_epochs
        cfg.param_scheduler[1].end = cfg.param_scheduler[1].T_max = args.retina_epochs
        start = time.perf_counter()
        runner = Runner.from_cfg(cfg)
        runner.train()
        metrics = runner.val_loop.run()
        target = out / "retinanet_r18-tiny_fashion-det.pth"
        # Only tensors and plain metadata: loads under torch's weights_only protection. Stored in fp16
        # (half the size in the repo); load_state_dict casts back to the fp32 model.
        state = {k: v.half() if v.is_floating_point() else v for k, v in runner.model.state_dict().items()}
        with atomic_open(target, "wb") as f:
            torch.save({"state_dict": state, "meta": {"epochs": args.retina_epochs, "dtype": "float16"}}, f)
        manifest["retinanet_r18-tiny_fashion-det.pth"] = {
            "epochs": args.retina_epochs, "train_seconds": round(time.perf_counter() - start, 1),
            "val_bbox_mAP": float(metrics.get("coco/bbox_mAP", float("nan"))), "dtype": "float16",
            "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}
        write_json(manifest_path, manifest)
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
