#!/usr/bin/env python
"""GFLOPs of a TinySaver cascade config: the saver, the base (averaged over test images, each with
the base's own preprocessing) and the cascade at a given exit ratio.

Convention: GFLOPs = 2 x GMACs, as ultralytics and the paper's Table 4 report them.
mmengine.analysis (mmdet's get_flops.py) counts one multiply-add as one "flop": its figure is doubled
here; ultralytics' get_flops already is 2 x MACs.

Usage: python tools/get_flops.py CONFIG [--images 5] [--exit-ratio 0.6] [--json OUT] [--cfg-options k=v ...]
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    from mmengine.config import Config, DictAction

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--images", type=int, default=5, help="test images to average the base over")
    ap.add_argument("--exit-ratio", type=float, help="also give the cascade's average GFLOPs at this r")
    ap.add_argument("--mode", default="tensor", choices=["tensor", "predict"], help="what to trace in the base")
    ap.add_argument("--json", help="write the figures as JSON")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction)
    args = ap.parse_args()

    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules

    from tinysaver.io import write_json
    from tinysaver.plugins.mmdet import cascade_gflops_report

    register_all_modules()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    detector = MODELS.build(cfg.model)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    items = [dataset[i] for i in range(min(args.images, len(dataset)))]
    report = cascade_gflops_report(detector, items, args.exit_ratio, args.mode)
    if args.json:
        write_json(args.json, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
