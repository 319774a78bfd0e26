#!/usr/bin/env python
"""Evaluate a TinySaver cascade config with mmengine's Runner, classification or detection alike:
the task is read from the config (its ``task`` key, else its model type).

Classification (``TinySaverClassifier``, configs/tinysaver/cls/): top-1/top-5 accuracy, the share of
samples each stage answered, and the cascade's average GMACs per sample (every sample pays the stages
it reached: Σ_k reach_k · GMACs_k). Every sample's answering stage, confidence and prediction go to
WORK_DIR/tinysaver_samples.npz; ``--dump-records DIR`` runs every stage on every sample and writes one
classification record per stage (``DIR/<stage>_<split>.npz``: what ``tinysaver tradeoff``, ``chain``
and ``plan`` read).

Detection (``TinySaverDetector``, configs/tinysaver/): COCO box AP (all 12 stats), the share of
images each stage answered and the cascade's average GFLOPs per image (the mean over the images of
the costs of the stages each image reached, each image costed at the size each stage ran it at);
``--dump-records DIR`` writes one detection record per stage (``tinysaver det-tradeoff``).

CHECKPOINT is a cascade checkpoint (a state dict with ``stages.<k>.`` keys, e.g. from
``tools/pack_checkpoint.py``, loaded by mmengine's Runner as usual) or ``none`` to use the weights
named in the config, which the stages load themselves (mmengine's Runner loads one checkpoint and runs
no ``init_cfg`` at test time).

Bad input (a missing config or checkpoint, an unknown stage, model or weights) is one line on stderr
and exit code 2.

Examples:
  python tools/test.py configs/tinysaver/cls/fmnist-cnn-s_fmnist-cnn-l_fashion-mnist.py none
  IMAGENET_ROOT=/data/imagenet python tools/test.py configs/tinysaver/cls/mobilenetv3-l_efficientnet-b2_in1k.py none \\
      --cfg-options model.stages.0.weights=mnv3_l.pth model.stages.1.weights=effnet_b2.pth
  python tools/test.py configs/tinysaver/yolov8n_retinanet-r18-tiny_fashion-det.py none
  torchrun --nproc_per_node 2 tools/test.py CONFIG none --launcher pytorch
  python tools/test.py CONFIG none --dump-records records   # then: tinysaver tradeoff / det-tradeoff ...
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys


def coco_items(max_dets) -> list:
    """mmdet CocoMetric's names of the 12 COCO stats for these maxDets (its ``proposal_nums``)."""
    a, b, c = max_dets
    return ["mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l", f"AR@{a}", f"AR@{b}", f"AR@{c}",
            f"AR_s@{c}", f"AR_m@{c}", f"AR_l@{c}"]


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction

    from tinysaver.cli import OneLineParser
    from tinysaver.plugins.mmengine_cls.config import parse_tool_args

    # one-line usage errors, like every other input error of the tools
    ap = OneLineParser(prog="tools/test.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="test config file path")
    ap.add_argument("checkpoint", help="cascade checkpoint, or 'none'")
    ap.add_argument("--work-dir", help="where logs and results go (default ./work_dirs/<config name>)")
    ap.add_argument("--random-init", action="store_true",
                    help="build every stage untrained and read no weights (CHECKPOINT none): the smoke path that "
                         "checks a config's shapes, costs, time and memory before the real run")
    ap.add_argument("--threshold", type=float, help="override the first stage's threshold")
    ap.add_argument("--thresholds", type=float, nargs="+", metavar="T", help="override every threshold (one per stage but the last)")
    ap.add_argument("--flops-images", type=int, default=-1,
                    help="detection: 0 skips the GFLOPs count; otherwise (default) every test image is costed at the "
                         "size each stage runs it at, each distinct size counted once (a positive count is accepted, "
                         "as before). Classification costs are always counted (one input size per stage)")
    ap.add_argument("--dump-records", metavar="DIR", help="run every stage on every sample and write one record per stage")
    ap.add_argument("--out-json", help="write the summary here (default WORK_DIR/tinysaver_test.json)")
    ap.add_argument("--out-samples", help="classification: every sample's index, label, prediction, answering stage "
                                          "and confidence (default WORK_DIR/tinysaver_samples.npz)")
    ap.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config settings, key=value")
    ap.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parse_tool_args(ap, argv)
    if args.threshold is not None and args.thresholds is not None:
        ap.error("give --threshold or --thresholds, not both")
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


# --- whatever the task ------------------------------------------------------------------------------

def _common_cfg(args: argparse.Namespace, cfg):
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = None if args.checkpoint.lower() == "none" else args.checkpoint
    if args.threshold is not None:
        cfg.model.thresholds = [args.threshold, *cfg.model.get("thresholds", [None])[1:]]
    if args.thresholds is not None:
        cfg.model.thresholds = list(args.thresholds)
    return cfg


def _evaluators(cfg) -> list:
    return cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]


def _config_metric(cfg, type_name: str) -> dict:
    from tinysaver.errors import TinySaverError

    for ev in _evaluators(cfg):
        if ev.get("type") == type_name:
            return ev
    raise TinySaverError(f"the config's test_evaluator has no {type_name}: is it a TinySaver cascade config?")


def _join_cpu_process_group(cfg) -> None:
    """mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` unconditionally; on a machine
    without CUDA, join torchrun's group here with gloo instead. The Runner then reads rank and world
    size from the initialised group: the sampler shards the data and the evaluator gathers results."""
    import torch

    if cfg.launcher == "pytorch" and not torch.cuda.is_available():
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="gloo")
        cfg.launcher = "none"


def _runner_metric(runner, type_name: str):
    from tinysaver.errors import TinySaverError

    for metric in runner.test_loop.evaluator.metrics:
        if type(metric).__name__ == type_name:
            return metric
    raise TinySaverError(f"the evaluator has no {type_name}")


def _unwrap(model):
    return model.module if hasattr(model, "module") else model  # DDP-wrapped or not


def main(argv=None) -> dict:
    args = parse_args(argv)
    from tinysaver.errors import DataNotFoundError, TinySaverError
    from tinysaver.io import remove_created_on_error
    from tinysaver.plugins.mmengine_cls.config import (CLASSIFICATION, apply_random_init, load_config, registry_miss,
                                                       task_of)

    try:
        cfg = load_config(args.config, args.cfg_options, args.checkpoint)
        if args.random_init:
            if args.checkpoint.lower() != "none":
                raise TinySaverError(f"--random-init reads no weights: give CHECKPOINT none, not {args.checkpoint}")
            apply_random_init(cfg)
        _check_inputs(args, cfg)
        work_dir = args.work_dir or cfg.get("work_dir") or osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
        # mmengine's Runner makes its work_dir (log, config dump) before it builds the model and
        # reads the data: a run refused for bad input takes those files back with it.
        with remove_created_on_error(work_dir, (TinySaverError, FileNotFoundError, KeyError)):
            if task_of(cfg) == CLASSIFICATION:
                return run_classification(args, cfg)
            return run_detection(args, cfg)
    except DataNotFoundError as exc:
        from tinysaver.plugins.mmengine_cls.config import data_root_hint

        _fail(f"{exc}; for the data, set {data_root_hint(args.config)}")
    except TinySaverError as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:  # a file the config names (annotations, images, data root)
        from tinysaver.plugins.mmengine_cls.config import data_root_hint

        _fail(f"{exc.filename or exc}: not found ({exc.strerror or 'missing'}); for the data, set "
              f"{data_root_hint(args.config)}")
    except KeyError as exc:  # mmengine's registry: "X is not in the mmengine::model registry. ..."
        if registry_miss(exc) is None:
            raise
        _fail(registry_miss(exc))


def _fail(message: str) -> None:
    print(f"tools/test.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _check_inputs(args: argparse.Namespace, cfg) -> None:
    """What can be refused before mmengine's Runner starts: a checkpoint the weights_only loader
    refuses (nothing from it runs), outputs that cannot be written, a batch size below 1."""
    from tinysaver.errors import TinySaverError
    from tinysaver.io import check_outputs
    from tinysaver.models.checkpoint import load_checkpoint

    check_outputs({"--work-dir": args.work_dir, "--out-json": args.out_json, "--out-samples": args.out_samples,
                   "--dump-records": args.dump_records},
                  inputs=[args.config, args.checkpoint], directories=["--work-dir", "--dump-records"])
    if args.checkpoint.lower() != "none":
        load_checkpoint(args.checkpoint)  # one line if refused or unreadable
    given = [args.threshold] if args.threshold is not None else args.thresholds or []
    if any(t != t for t in given):  # t != t: NaN
        raise TinySaverError(f"--threshold(s) {' '.join(map(str, given))}: a threshold is NaN ('inf': nothing exits there)")
    batch_size = (cfg.get("test_dataloader") or {}).get("batch_size", 1)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TinySaverError(f"{args.config}: test_dataloader.batch_size must be a whole number >= 1, got {batch_size!r}")


# --- classification -----------------------------------------------------------------------------------

def build_cls_cfg(args: argparse.Namespace, cfg):
    cfg = _common_cfg(args, cfg)
    metric = _config_metric(cfg, "TinySaverClsMetric")
    if args.dump_records:
        cfg.model.record_all = True
        metric["record_dir"] = args.dump_records
    return cfg


def run_classification(args: argparse.Namespace, cfg) -> dict:
    from mmengine.dist import get_rank
    from mmengine.runner import Runner

    from tinysaver.io import atomic_open, write_json
    from tinysaver.plugins.mmengine_cls.model import GMACS_CONVENTION

    cfg = build_cls_cfg(args, cfg)
    _join_cpu_process_group(cfg)
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    model = _unwrap(runner.model)
    summary = {"task": "classification", "config": args.config, "stages": model.stage_names,
               "thresholds": model.thresholds, "threshold": model.threshold, "stage_gmacs": model.stage_gmacs,
               "convention": GMACS_CONVENTION, "metrics": metrics, "stage_runtime": _stage_runtime(model)}
    if get_rank() == 0:
        import numpy as np

        metric = _runner_metric(runner, "TinySaverClsMetric")
        samples = args.out_samples or osp.join(cfg.work_dir, "tinysaver_samples.npz")
        with atomic_open(samples, "wb") as f:
            np.savez(f, **metric.samples)
        summary["samples"] = samples
        if args.dump_records:
            summary["records"] = metric.record_paths
        _print_cls(summary)
        write_json(args.out_json or osp.join(cfg.work_dir, "tinysaver_test.json"), summary)
    return summary


def _print_cls(summary: dict) -> None:
    m = summary["metrics"]
    chain = " → ".join(summary["stages"])
    thresholds = ", ".join(f"{t:g}" for t in summary["thresholds"])
    print(f"\nTinySaver cascade {summary['config']}\n  {chain}  (thresholds {thresholds})")
    for key in sorted(k for k in m if k.startswith("tinysaver/top")):
        print(f"  {'top-' + key.split('top')[-1] + ' accuracy':<28} {m[key]:.4f}")
    print(f"  {'images':<28} {int(m['tinysaver/images'])}")
    for k, name in enumerate(summary["stages"]):
        alone = m.get(f"tinysaver/stage{k}_top1")
        alone = f", alone top-1 {alone:.4f}" if alone is not None else ""
        print(f"  {'answered by ' + name:<28} {m[f'tinysaver/answered_{k}']:.4f}  "
              f"({summary['stage_gmacs'][k]:.4g} GMACs per sample{alone})")
    print(f"  {'cascade GMACs':<28} {m['tinysaver/gmacs']:.4g}  (mean over the samples of the stages each reached; "
          f"the last stage alone {summary['stage_gmacs'][-1]:.4g})")
    for path in summary.get("records", []):
        print(f"  record {path}")
    _print_runtime(summary["stage_runtime"], "sample")
    sys.stdout.flush()


# --- detection ----------------------------------------------------------------------------------------

def build_cfg(args: argparse.Namespace, cfg=None):
    """The detection config: one COCO maxDets for the live metric and the records."""
    from tinysaver.detection import DEFAULT_MAX_DETS, check_max_dets
    from tinysaver.errors import TinySaverError

    if args.dump_records and args.flops_images == 0:
        raise TinySaverError("--dump-records needs --flops-images > 0: the records carry each model's GFLOPs")
    if cfg is None:
        from tinysaver.plugins.mmengine_cls.config import load_config

        from tinysaver.plugins.mmengine_cls.config import apply_random_init

        cfg = load_config(args.config, args.cfg_options, args.checkpoint)
        if getattr(args, "random_init", False):
            apply_random_init(cfg)
    cfg = _common_cfg(args, cfg)
    for ev in _evaluators(cfg):
        if ev.get("type") == "CocoMetric":
            ev["proposal_nums"] = list(check_max_dets(ev.get("proposal_nums", DEFAULT_MAX_DETS)))
            ev.setdefault("metric_items", coco_items(ev["proposal_nums"]))
            cfg.tinysaver_max_dets = ev["proposal_nums"]
    for ev in _evaluators(cfg):
        if ev.get("type") == "TinySaverCascadeMetric":
            ev["max_dets"] = cfg.get("tinysaver_max_dets", list(DEFAULT_MAX_DETS))
    if args.dump_records:
        cfg.model.record_all = True
        metric = _config_metric(cfg, "TinySaverCascadeMetric")
        # written by _write_det_records once each image's measured cost is stamped, never before
        metric.update(record_dir=args.dump_records, defer_records=True)
    return cfg


def run_detection(args: argparse.Namespace, cfg) -> dict:
    from mmdet.utils import register_all_modules
    from mmengine.dist import get_rank
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=False)
    cfg = build_cfg(args, cfg)
    _join_cpu_process_group(cfg)
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    detector = _unwrap(runner.model)
    summary = {"task": "detection", "config": args.config, "stages": detector.stage_names,
               "thresholds": detector.thresholds, "threshold": detector.threshold, "metrics": metrics,
               "max_dets": list(cfg.get("tinysaver_max_dets", [])), "stage_runtime": _stage_runtime(detector)}
    if get_rank() == 0:
        if args.flops_images != 0:
            from tinysaver.plugins.mmdet import cascade_gflops_report, item_loader

            metric = _runner_metric(runner, "TinySaverCascadeMetric")
            images = metric.images  # every image, its stage and shapes
            summary["gflops"] = cascade_gflops_report(detector, images, item_loader(runner.test_dataloader.dataset))
            per_image = summary["gflops"].pop("per_image")
            if args.dump_records:
                summary["records"] = _write_det_records(metric.pending_records, summary["gflops"], per_image)
        _print_det(summary)
        from tinysaver.io import write_json

        write_json(args.out_json or osp.join(cfg.work_dir, "tinysaver_test.json"), summary)
    return summary


def _write_det_records(pending: dict, gflops: dict, per_image: dict) -> list:
    """Writes each stage's detection record with its name and measured GFLOPs (per image and their
    mean: det-tradeoff's cost axis); the files are named saver/base (two stages) or stage0….
    Nothing was written before: a run whose cost step fails leaves no record without a cost."""
    from dataclasses import replace

    import numpy as np

    from tinysaver.detection import save_det_record

    column = {img_id: i for i, img_id in enumerate(per_image["img_ids"])}
    written = []
    for k, ((path, rec), stage) in enumerate(zip(pending.items(), gflops["stages"])):
        costs = np.asarray(per_image["gflops"][k])[[column[int(i)] for i in rec.image_ids]]
        written.append(str(save_det_record(path, replace(rec, name=stage["name"], gflops=stage["gflops"],
                                                          image_gflops=costs))))
    return written


def _print_det(summary: dict) -> None:
    m = summary["metrics"]
    chain = " → ".join(summary["stages"])
    thresholds = ", ".join(f"{t:g}" for t in summary["thresholds"])
    print(f"\nTinySaver cascade {summary['config']}\n  {chain}  (thresholds {thresholds})")
    for key in coco_items(summary["max_dets"]) if summary["max_dets"] else []:
        name = f"coco/bbox_{key}"
        if name in m:
            print(f"  {name:<24} {m[name]:.4f}")
    print(f"  {'images':<24} {int(m.get('tinysaver/images', 0))}")
    g = summary.get("gflops")
    for k, name in enumerate(summary["stages"]):
        cost = f"  {g['stages'][k]['gflops']:.3f} GFLOPs" if g else ""
        print(f"  {'answered by ' + name:<24} {m.get(f'tinysaver/answered_{k}', float('nan')):.4f}{cost}")
    if g and "cascade_gflops" in g:
        print(f"  {'cascade GFLOPs':<24} {g['cascade_gflops']:.3f}  (mean over {g['images']} images of the stages "
              f"each reached, each image at its own size) [{g['convention']}]")
    for path in summary.get("records", []):
        print(f"  record {path}")
    _print_runtime(summary["stage_runtime"], "image")
    sys.stdout.flush()


def _stage_runtime(model) -> dict:
    """The cascade's measured time per sample and peak memory of each stage (this process's)."""
    from mmengine.dist import get_world_size

    note = "this process's share" if get_world_size() > 1 else "every sample"
    return {"measured_on": note, "stages": model.meter.summary()}


def _print_runtime(runtime: dict, unit: str) -> None:
    print(f"  measured per stage ({runtime['measured_on']}; time on the samples that reached it):")
    for row in runtime["stages"]:
        if not row["samples"]:
            print(f"    {row['stage']:<26} reached by no {unit}")
            continue
        print(f"    {row['stage']:<26} {row['ms_per_sample']:9.1f} ms per {unit} over {row['samples']} {unit}s, "
              f"peak memory {row['peak_memory_mb']:.0f} MB ({row['memory']})")


if __name__ == "__main__":
    main()
