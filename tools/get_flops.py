#!/usr/bin/env python
"""Cost of a TinySaver cascade config, classification or detection alike (the task read from the
config): each stage's cost per sample and the cascade's average for given shares answered per stage
(every sample pays the stages it reached: Σ_k reach_k · cost_k).

Classification: GMACs per sample of each stage at its own input size (one multiply-add = 1 MAC, as
the paper's Tables 1 and 5 and timm count them; GFLOPs = 2 x GMACs). ``--random-init`` builds the
stages untrained on the meta device (no weights, no memory: costs do not depend on weights).

Detection: GFLOPs per image of each stage, averaged over test images, each image at the size the
stage runs it at (``--images``). Convention: GFLOPs = 2 x GMACs, as ultralytics and the paper's
Table 4 report them; mmengine.analysis (mmdet's get_flops.py) counts one multiply-add as one "flop":
its figure is doubled here; ultralytics' get_flops already is 2 x MACs. GMACs are given too.

Bad input (a missing config, an unknown stage or model) is one line on stderr and exit code 2.

Usage: python tools/get_flops.py CONFIG [--answered 0.6 0.4] [--json OUT] [--cfg-options k=v ...]
  python tools/get_flops.py configs/tinysaver/cls/efficientformerv2-l_convnextv2-h_in1k.py --random-init --answered 0.8 0.2
  python tools/get_flops.py configs/tinysaver/yolov8n_retinanet-r18-tiny_fashion-det.py --images 5 --exit-ratio 0.6
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    from tinysaver.cli import OneLineParser
    from tinysaver.plugins.mmengine_cls.config import parse_tool_args

    # one-line usage errors, like every other input error of the tools
    ap = OneLineParser(prog="tools/get_flops.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--images", type=int, default=5, help="detection: test images to average over (each at its own size)")
    ap.add_argument("--answered", type=float, nargs="+", metavar="R",
                    help="share of samples each stage answers (summing to 1): also give the cascade's average")
    ap.add_argument("--exit-ratio", type=float, help="two stages: the share the first answers (= --answered R 1-R)")
    ap.add_argument("--mode", choices=["tensor", "predict"],
                    help="detection: what to trace in mmdet stages (default: each stage's flops_mode, 'tensor' "
                         "unless its config says 'predict', as the Co-DINO configs do)")
    ap.add_argument("--random-init", action="store_true",
                    help="build every stage untrained, read no weights (costs do not depend on them): classifiers "
                         "on the meta device, YOLO stages from their model yaml, mmdet stages without checkpoint")
    ap.add_argument("--json", help="write the figures as JSON")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction)
    return parse_tool_args(ap, argv)


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    from tinysaver.errors import DataNotFoundError, TinySaverError
    from tinysaver.io import check_outputs, write_json
    from tinysaver.plugins.mmengine_cls.config import (CLASSIFICATION, apply_random_init, load_config, registry_miss,
                                                       task_of)

    try:
        check_outputs({"--json": args.json}, inputs=[args.config])
        if args.images < 1:
            raise TinySaverError(f"--images must be >= 1, got {args.images}")
        cfg = load_config(args.config, args.cfg_options)
        if args.random_init:
            apply_random_init(cfg)
        answered = _answered(args)
        report = (classification_report if task_of(cfg) == CLASSIFICATION else detection_report)(args, cfg, answered)
    except DataNotFoundError as exc:
        from tinysaver.plugins.mmengine_cls.config import data_root_hint

        _fail(f"{exc}; for the data, set {data_root_hint(args.config)}")
    except TinySaverError as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:  # a file the config names (annotations, images, data root)
        from tinysaver.plugins.mmengine_cls.config import data_root_hint

        _fail(f"{exc.filename or exc}: not found ({exc.strerror or 'missing'}); for the data, set "
              f"{data_root_hint(args.config)}")
    except KeyError as exc:
        if registry_miss(exc) is None:
            raise
        _fail(registry_miss(exc))
    if args.json:
        write_json(args.json, report)
    print(json.dumps(report, indent=2))
    return report


def _fail(message: str) -> None:
    print(f"tools/get_flops.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _answered(args: argparse.Namespace) -> Optional[List[float]]:
    from tinysaver.errors import TinySaverError

    if args.exit_ratio is not None and args.answered is not None:
        raise TinySaverError("give --answered or --exit-ratio, not both")
    if not all(0.0 <= r <= 1.0 for r in [*(args.answered or []), *([args.exit_ratio] if args.exit_ratio is not None else [])]):
        given = args.answered if args.answered is not None else [args.exit_ratio]
        raise TinySaverError(f"--answered/--exit-ratio take shares in [0, 1], got {given}")
    if args.exit_ratio is not None:
        return [args.exit_ratio, 1.0 - args.exit_ratio]
    return args.answered


def classification_report(args: argparse.Namespace, cfg: Any, answered: Optional[List[float]]) -> Dict[str, Any]:
    """Each stage's GMACs at its input size and the cascade's average (:func:`gmacs_report`)."""
    import torch
    from mmengine.registry import MODELS

    from tinysaver.plugins.mmengine_cls import gmacs_report

    if args.random_init:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = MODELS.build(cfg.model)
    else:
        model = MODELS.build(cfg.model)
    return gmacs_report(model, answered)


def detection_report(args: argparse.Namespace, cfg: Any, answered: Optional[List[float]]) -> Dict[str, Any]:
    """Each stage's GFLOPs per image (each image at its own size) and the cascade's average."""
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules

    from tinysaver.errors import TinySaverError
    from tinysaver.plugins.mmdet import cascade_gflops_report

    register_all_modules()
    detector = MODELS.build(cfg.model)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    items = {}
    for i in range(min(args.images, len(dataset))):
        item = dataset[i]
        items[int(item["data_samples"].img_id)] = item
    images = [{"img_id": img_id, "ori_shape": item["data_samples"].ori_shape[:2],
               "img_shape": item["data_samples"].img_shape[:2]} for img_id, item in items.items()]
    if answered is not None and (len(answered) != len(detector.stages) or abs(sum(answered) - 1) > 1e-6):
        raise TinySaverError(f"--answered needs {len(detector.stages)} shares summing to 1, got {answered}")
    report = cascade_gflops_report(detector, images, items.__getitem__, args.mode, answered)
    report.pop("per_image")
    report = {"task": "detection", **report}
    if "cascade_gflops" in report:
        report["cascade_gmacs"] = report["cascade_gflops"] / 2
    return report


if __name__ == "__main__":
    main()
