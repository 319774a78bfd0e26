#!/usr/bin/env python
"""GFLOPs of a TinySaver cascade config: each stage (averaged over test images, each image at the size
the stage runs it at) and the cascade for given shares of images answered per stage.

Convention: GFLOPs = 2 x GMACs, as ultralytics and the paper's Table 4 report them.
mmengine.analysis (mmdet's get_flops.py) counts one multiply-add as one "flop": its figure is doubled
here; ultralytics' get_flops already is 2 x MACs.

Usage: python tools/get_flops.py CONFIG [--images 5] [--answered 0.6 0.4] [--json OUT] [--cfg-options k=v ...]
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    from mmengine.config import Config, DictAction

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--images", type=int, default=5, help="test images to average over (each at its own size)")
    ap.add_argument("--answered", type=float, nargs="+", metavar="R",
                    help="share of images each stage answers (summing to 1): also give the cascade's average")
    ap.add_argument("--exit-ratio", type=float, help="two stages: the share the first answers (= --answered R 1-R)")
    ap.add_argument("--mode", default="tensor", choices=["tensor", "predict"], help="what to trace in mmdet stages")
    ap.add_argument("--json", help="write the figures as JSON")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction)
    args = ap.parse_args()

    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules

    from tinysaver.errors import TinySaverError
    from tinysaver.io import write_json
    from tinysaver.plugins.mmdet import cascade_gflops_report

    register_all_modules()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    detector = MODELS.build(cfg.model)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    items = {}
    for i in range(min(args.images, len(dataset))):
        item = dataset[i]
        items[int(item["data_samples"].img_id)] = item
    images = [{"img_id": img_id, "ori_shape": item["data_samples"].ori_shape[:2],
               "img_shape": item["data_samples"].img_shape[:2]} for img_id, item in items.items()]
    answered = args.answered
    if args.exit_ratio is not None:
        answered = [args.exit_ratio, 1.0 - args.exit_ratio]
    if answered is not None and (len(answered) != len(detector.stages) or abs(sum(answered) - 1) > 1e-6):
        raise TinySaverError(f"--answered needs {len(detector.stages)} shares summing to 1, got {answered}")
    report = cascade_gflops_report(detector, images, items.__getitem__, args.mode, answered)
    report.pop("per_image")
    if args.json:
        write_json(args.json, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
