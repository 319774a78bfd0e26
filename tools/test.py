#!/usr/bin/env python
"""Evaluate a TinySaver cascade config the mmdet way: COCO box AP (all 12 stats), exit ratio and
the cascade's average GFLOPs per image (saver + exit-weighted base).

CHECKPOINT is a cascade checkpoint (a state dict with ``saver_model.``/``base.`` keys, loaded by
mmengine's Runner as usual) or ``none`` to use the two checkpoints named in the config, which the
cascade loads itself (mmengine's Runner loads one checkpoint and runs no ``init_cfg`` at test time).

Examples:
  python tools/test.py configs/tinysaver/yolov8n_retinanet-r18-tiny_fashion-det.py none
  torchrun --nproc_per_node 2 tools/test.py CONFIG none --launcher pytorch
  python tools/test.py CONFIG none --dump-records records/det   # then: tinysaver det-tradeoff ...
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

COCO_ITEMS = ["mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l", "AR@100", "AR@300", "AR@1000",
              "AR_s@1000", "AR_m@1000", "AR_l@1000"]


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="test config file path")
    ap.add_argument("checkpoint", help="cascade checkpoint, or 'none'")
    ap.add_argument("--work-dir", help="where logs and results go (default ./work_dirs/<config name>)")
    ap.add_argument("--threshold", type=float, help="override the config's threshold")
    ap.add_argument("--flops-images", type=int, default=5, help="test images the base's GFLOPs are averaged over (0: skip)")
    ap.add_argument("--dump-records", metavar="DIR", help="run both models on every image and write detection records")
    ap.add_argument("--out-json", help="write the summary here (default WORK_DIR/tinysaver_test.json)")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config settings, key=value")
    ap.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = ap.parse_args(argv)
    if args.dump_records and args.flops_images <= 0:
        ap.error("--dump-records needs --flops-images > 0: the records carry each model's GFLOPs")
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def _cascade_metric(cfg) -> dict:
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
    for ev in evaluators:
        if ev.get("type") == "TinySaverCascadeMetric":
            return ev
    raise SystemExit("the config's test_evaluator has no TinySaverCascadeMetric: is it a TinySaver cascade config?")


def _join_cpu_process_group(cfg) -> None:
    """mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` unconditionally; on a machine
    without CUDA, join torchrun's group here with gloo instead. The Runner then reads rank and world
    size from the initialised group: the sampler shards the data and the evaluator gathers results."""
    import torch

    if cfg.launcher == "pytorch" and not torch.cuda.is_available():
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="gloo")
        cfg.launcher = "none"


def build_cfg(args: argparse.Namespace):
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = None if args.checkpoint.lower() == "none" else args.checkpoint
    if args.threshold is not None:
        cfg.model.threshold = args.threshold
    for ev in cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]:
        if ev.get("type") == "CocoMetric":
            ev.setdefault("metric_items", COCO_ITEMS)
    if args.dump_records:
        cfg.model.record_both = True
        _cascade_metric(cfg)["record_dir"] = args.dump_records
    return cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    from mmdet.utils import register_all_modules
    from mmengine.dist import get_rank
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=False)
    cfg = build_cfg(args)
    _join_cpu_process_group(cfg)
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    detector = runner.model.module if hasattr(runner.model, "module") else runner.model  # DDP-wrapped or not
    summary = {"config": args.config, "threshold": detector.threshold, "metrics": metrics}
    if get_rank() == 0:
        if args.flops_images > 0:
            from tinysaver.plugins.mmdet import cascade_gflops_report

            dataset = runner.test_dataloader.dataset
            items = [dataset[i] for i in range(min(args.flops_images, len(dataset)))]
            summary["gflops"] = cascade_gflops_report(detector, items, metrics.get("tinysaver/exit_ratio"))
            if args.dump_records:
                _stamp_gflops(args.dump_records, summary["gflops"])
        _print(summary)
        from tinysaver.io import write_json

        write_json(args.out_json or osp.join(cfg.work_dir, "tinysaver_test.json"), summary)
    return summary


def _stamp_gflops(record_dir: str, gflops: dict) -> None:
    """Writes each model's measured GFLOPs into its detection record (det-tradeoff's cost axis)."""
    from dataclasses import replace

    from tinysaver.detection import load_det_record, save_det_record

    for key in ("saver", "base"):
        path = osp.join(record_dir, f"{key}.npz")
        save_det_record(path, replace(load_det_record(path), gflops=gflops[f"{key}_gflops"]))


def _print(summary: dict) -> None:
    m = summary["metrics"]
    print(f"\nTinySaver cascade {summary['config']} (threshold {summary['threshold']:g})")
    for key in COCO_ITEMS:
        name = f"coco/bbox_{key}"
        if name in m:
            print(f"  {name:<24} {m[name]:.4f}")
    print(f"  {'exit ratio':<24} {m.get('tinysaver/exit_ratio', float('nan')):.4f}  over {int(m.get('tinysaver/images', 0))} images")
    g = summary.get("gflops")
    if g:
        print(f"  {'saver GFLOPs':<24} {g['saver_gflops']:.3f}  (imgsz {g['saver_imgsz']})")
        print(f"  {'base GFLOPs':<24} {g['base_gflops']:.3f}  (avg over {g['base_images']} images)")
        if "cascade_gflops" in g:
            print(f"  {'cascade GFLOPs':<24} {g['cascade_gflops']:.3f}  = saver + (1 - r) * base   [{g['convention']}]")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
