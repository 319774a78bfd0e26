#!/usr/bin/env python
"""Packs a cascade config's stage checkpoints into one cascade checkpoint for tools/test.py.

The result holds the cascade's state dict (``stages.<k>.*``: each stage's weights) and plain metadata
only, so mmengine's Runner loads it under torch's
``weights_only`` protection like any checkpoint.

Usage: python tools/pack_checkpoint.py CONFIG OUT.pth
"""
from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("out")
    args = ap.parse_args()
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from tinysaver.io import atomic_open

    register_all_modules()
    cfg = Config.fromfile(args.config)
    detector = MODELS.build(cfg.model)
    state = {k: v.detach().cpu() for k, v in detector.state_dict().items()}
    with atomic_open(args.out, "wb") as f:
        torch.save({"state_dict": state, "meta": {"config": args.config,
                                                  "stages": [s.get("checkpoint") for s in cfg.model.stages]}}, f)
    print(f"{args.out}: {len(state)} tensors (stages.<k>.*)")


if __name__ == "__main__":
    main()
