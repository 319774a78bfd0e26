#!/usr/bin/env python
"""Trains an Exit Sequence Network (paper §3.4, §6.3, §6.4) for a frozen saver and base, then writes
one record per ESN stage on the calibration and report splits.

Table 7 by default, from timm's parts: AdamW (``timm.optim.create_optimizer_v2``), cosine decay with
warm-up (``timm.scheduler.CosineLRScheduler``), AutoAugment (``timm.data.create_transform(
auto_augment=...)``), Mixup 0.8 / CutMix 1.0 (``timm.data.Mixup``; its soft targets enter eq. (11)
per sample), 10 epochs, lr 6.25e-4, 8 heads. Warm-up: 1 epoch (Table 7's 20 warm-up epochs for 10
training epochs would never leave the warm-up; ``--warmup-epochs 20`` reproduces it literally).

The saver and base are frozen, so their features for ``--views`` augmented passes over the training
split are computed once and cached (``OUT/cache/``); training then runs on those cached features.
Everything resumes: the cache chunk by chunk, training from ``OUT/checkpoint.pth`` (state dicts only,
written after each epoch). Under torchrun each process computes its share of the cache and trains
on its share of every batch (gloo on the CPU, nccl on GPUs):

  torchrun --nproc_per_node 2 tools/train_esn.py --saver fmnist_cnn_m --base fmnist_cnn_l --out OUT

Outputs (rank 0): ``OUT/esn.pth`` (the exit sequence's state dict and configuration),
``OUT/records/<stage>_<split>.npz`` for the stages ``<saver>``, ``<base>:exit<n>``, ``<base>:output``
(incremental GMACs) and the plain ``<saver>``/``<base>`` records (full GMACs) in ``OUT/records/plain/``,
``OUT/train.json`` (settings, loss per epoch, each stage's cost and accuracy).

Example (the demo pool, a short run):
  python tools/train_esn.py --saver fmnist_cnn_m --base fmnist_cnn_l --out outputs/fashion_mnist/esn/run \\
      --epochs 2 --views 1 --layers 1 --dim 32
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--saver", required=True, help="saver model (timm name; the demo pool loads by name)")
    ap.add_argument("--base", required=True, help="base model")
    ap.add_argument("--saver-weights", help="weights of the saver (default: its registered weights)")
    ap.add_argument("--base-weights", help="weights of the base (default: its registered weights)")
    ap.add_argument("--data", default="fashion_mnist", help="fashion_mnist, or an ImageFolder root DATA/<split>/<class>/")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--calib-split", default="holdout", help="split the thresholds are chosen on")
    ap.add_argument("--report-split", default="test", help="split the results are measured on")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--exits", type=int, nargs="+", help="0-based segments with an exit (default: all but the last)")
    ap.add_argument("--layers", type=int, default=1, help="causal attention layers L (Table 7: 0..3)")
    ap.add_argument("--dim", type=int, default=128, help="token width (Table 7: 8, 32, 128, 512)")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--loss", choices=("eq11", "ce"), default="eq11", help="eq. (11) weighting or plain CE")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=6.25e-4)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--views", type=int, default=4, help="augmented passes over the training split to cache")
    ap.add_argument("--auto-augment", default="original", help="timm AutoAugment policy ('' for none)")
    ap.add_argument("--mixup", type=float, default=0.8, help="Mixup alpha (0: off)")
    ap.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha (0: off)")
    ap.add_argument("--smoothing", type=float, default=0.1, help="label smoothing of the mixed targets")
    ap.add_argument("--limit", type=int, help="use only the first N images of each split (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads while training the exit sequence (its ops are too small to gain from more)")
    ap.add_argument("--no-progress", action="store_true")


# --- pieces shared with tools/esn_fashion_mnist.py -------------------------------------------------

def build_models(saver: str, base: str, saver_weights: Optional[str] = None, base_weights: Optional[str] = None):
    from tinysaver.plugins.timm import create_classifier

    return create_classifier(saver, saver_weights), create_classifier(base, base_weights)


def split_dataset(data: str, split: str, transform: Callable, limit: Optional[int] = None):
    """The images of a split with ``transform`` (fashion_mnist, or an ImageFolder root)."""
    from tinysaver.plugins.datasets import ArrayImageDataset, image_folder, load_fashion_mnist

    if data == "fashion_mnist":
        dataset = ArrayImageDataset(*load_fashion_mnist(split), transform)
    else:  # classes numbered by sorted folder name (torchvision's ImageFolder)
        dataset = image_folder(str(Path(data) / split), transform)
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    return dataset


def train_transform(model: torch.nn.Module, auto_augment: str):
    """Training augmentation at the model's input size: random resized crop (scale 0.5-1, as the
    demo's augmented recording), horizontal flip, AutoAugment (timm)."""
    from timm.data import create_transform

    from tinysaver.plugins.timm import data_config

    cfg = data_config(model)
    return create_transform(input_size=cfg["input_size"], is_training=True, scale=(0.5, 1.0), hflip=0.5,
                            color_jitter=None, auto_augment=auto_augment or None, interpolation=cfg["interpolation"],
                            mean=cfg["mean"], std=cfg["std"])


def make_mix(num_classes: int, mixup: float, cutmix: float, smoothing: float):
    """timm's Mixup/CutMix (one of the two per batch, as timm switches between them), or None."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing, num_classes=num_classes)


def caches(esn, saver: torch.nn.Module, args: argparse.Namespace, out: Path, splits: Sequence[str],
           numerics, progress: bool) -> Dict[str, Any]:
    """Feature caches: the training split under augmentation (``views`` passes), the others clean."""
    from tinysaver.esn.training import build_feature_cache
    from tinysaver.plugins.timm import eval_transform

    meta = {"saver": args.saver, "base": args.base, "saver_weights": args.saver_weights,
            "base_weights": args.base_weights, "data": args.data, "limit": args.limit}
    train_tf = train_transform(saver, args.auto_augment)
    out_caches = {"train": build_feature_cache(
        esn, lambda view: split_dataset(args.data, args.train_split, train_tf, args.limit), out / "cache" / "train",
        views=args.views, batch_size=args.batch_size, seed=args.seed, numerics=numerics, progress=progress,
        mix=make_mix(esn.num_classes, args.mixup, args.cutmix, args.smoothing),
        meta=dict(meta, split=args.train_split, auto_augment=args.auto_augment, mixup=args.mixup,
                  cutmix=args.cutmix, smoothing=args.smoothing))}
    clean = eval_transform(saver)
    for split in splits:
        out_caches[split] = build_feature_cache(
            esn, lambda view, split=split: split_dataset(args.data, split, clean, args.limit), out / "cache" / split,
            views=1, batch_size=args.batch_size, seed=args.seed, numerics=numerics, progress=progress,
            meta=dict(meta, split=split))
    return out_caches


def write_records(esn, cache, out: Path, split: str, args: argparse.Namespace, gmacs: Sequence[float],
                  saver_gmacs: float, base_gmacs: float) -> List[Any]:
    """Writes the ESN stage records and the plain saver/base records of one split; returns the
    stage records."""
    from tinysaver.esn import esn_config
    from tinysaver.esn.evaluation import plain_records, stage_names, stage_records
    from tinysaver.records import save_record

    settings = np.str_(json.dumps({"esn": esn_config(esn), "saver": args.saver, "base": args.base, "split": split,
                                   "loss": args.loss}, sort_keys=True))
    names = stage_names(esn, args.saver, args.base)
    records = stage_records(esn, cache, names, gmacs, extra={"esn_settings": settings})
    for rec in records:
        save_record(out / "records" / f"{_safe(rec.name)}_{split}.npz", rec)
    for rec in plain_records(cache, args.saver, saver_gmacs, args.base, base_gmacs):
        save_record(out / "records" / "plain" / f"{_safe(rec.name)}_{split}.npz", rec)
    return records


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(":", "_")


def main(argv: Optional[List[str]] = None) -> int:
    sys.path.insert(0, str(ROOT))
    from tinysaver.errors import TinySaverError
    from tinysaver.esn import ExitSequenceNetwork
    from tinysaver.esn.training import TrainConfig, save_sequence, train_sequence
    from tinysaver.io import write_json
    from tinysaver.models.complexity import count_gmacs
    from tinysaver.models.numerics import Numerics
    from tinysaver.models.recording import init_distributed_from_env

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        rank, world = init_distributed_from_env(args.device)
        progress = not args.no_progress and rank == 0
        out = Path(args.out)
        saver, base = build_models(args.saver, args.base, args.saver_weights, args.base_weights)
        input_size = tuple(saver.pretrained_cfg["input_size"])
        torch.manual_seed(args.seed)  # the ESN's initial weights
        esn = ExitSequenceNetwork(saver, base, input_size, exits=args.exits, dim=args.dim, heads=args.heads,
                                  layers=args.layers)
        numerics = Numerics(device=args.device)
        feats = caches(esn, saver, args, out, [args.calib_split, args.report_split], numerics, progress)
        cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                          warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, loss=args.loss, seed=args.seed)
        esn.to(args.device)
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        log = train_sequence(esn.sequence, _to(feats["train"], args.device), cfg, out / "checkpoint.pth",
                             progress=progress)
        torch.set_num_threads(threads)
        if rank != 0:
            return 0
        esn.cpu()
        save_sequence(out / "esn.pth", esn)
        gmacs = esn.stage_gmacs()
        saver_gmacs, base_gmacs = count_gmacs(saver, input_size), count_gmacs(base, input_size)
        summary: Dict[str, Any] = {"args": vars(args), "train": log, "stage_gmacs": gmacs, "splits": {}}
        for split in (args.calib_split, args.report_split):
            records = write_records(esn, feats[split], out, split, args, gmacs, saver_gmacs, base_gmacs)
            summary["splits"][split] = {r.name: r.accuracy for r in records}
        write_json(out / "train.json", summary)
        print(json.dumps(summary["splits"], indent=2))
        print(f"ESN and records: {out}")
    except TinySaverError as exc:
        print(f"train_esn: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _to(cache, device: str):
    """The cache's tensors on the training device."""
    from dataclasses import replace

    if device == "cpu":
        return cache
    return replace(cache, saver_logits=cache.saver_logits.to(device), saver_feat=cache.saver_feat.to(device),
                   exit_feats=[f.to(device) for f in cache.exit_feats], base_logits=cache.base_logits.to(device),
                   target=cache.target.to(device), label=cache.label.to(device))


if __name__ == "__main__":
    sys.exit(main())
