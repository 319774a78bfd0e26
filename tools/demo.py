#!/usr/bin/env python
"""The main job on the embedded default data: the paper's pipeline on Fashion-MNIST.

Pool: five classifiers of one family (``fmnist_cnn_{xxs,xs,s,m,l}``, ~0.13 to ~29 MMACs), trained by
``tools/train_fashion_mnist.py`` on the first 50k training images; their weights are committed in
``weights/fashion_mnist/``. Base: the largest. Steps: record train (augmented), holdout and test;
rank savers by ΔC on train; Tables 1/5 rows on test with thresholds chosen on test, on train and
on the held-out split; plots; the live cascade checked against the simulation; its measured
speed-up on this CPU; then chains of the whole pool (``plan``: any length, chosen on holdout,
measured on test, certified by Learn-then-Test and, on average, by conformal risk control)
against the best pair and the oracle, with the
chain of the 0.5-pt drop run live against its simulation.

Outputs land in ``outputs/fashion_mnist/`` (records are reused on a second run; ``--force``
re-records). Then the EfficientNet-Lite run on the shipped photos reports its verdict
(``tools/eval_efficientnet_lite.py``, outputs in ``outputs/efficientnet_lite/``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from tinysaver.pipeline import ModelSpec, PipelineConfig, Split, run_pipeline
from tinysaver.report import summary_console
from tinysaver.plugins.datasets import ArrayImageDataset, load_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
POOL = ["fmnist_cnn_xxs", "fmnist_cnn_xs", "fmnist_cnn_s", "fmnist_cnn_m"]
BASE = "fmnist_cnn_l"


def split(name: str, augment: bool = False) -> Split:
    images, labels = load_fashion_mnist(name)
    return Split(name, lambda transform: ArrayImageDataset(images, labels, transform), augment=augment,
                 source="fashion_mnist")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "fashion_mnist"))
    ap.add_argument("--force", action="store_true", help="re-record even when records exist")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lite-views", type=int, default=10, help="views per photo for the EfficientNet-Lite run (0: skip)")
    args = ap.parse_args()
    # The pool loads by name: its weights are registered with timm (sha256-checked, weights/).
    cfg = PipelineConfig(base=ModelSpec(BASE), savers=[ModelSpec(n) for n in POOL],
                         select_split=split("train", augment=True), calib_splits=[split("holdout")],
                         report_split=split("test"), out_dir=Path(args.out), batch_size=256, device=args.device,
                         speed_batch_sizes=(1, 64), speed_samples={1: 300, 64: 2048}, force=args.force,
                         plan=True, plan_certify_expected=True)
    print(summary_console(run_pipeline(cfg)))  # summary.md keeps the full markdown tables
    print(f"Tables, plots and records: {args.out}")
    if args.lite_views:
        subprocess.run([sys.executable, str(ROOT / "tools" / "eval_efficientnet_lite.py"), "--views", str(args.lite_views),
                        "--device", args.device] + (["--force"] if args.force else []), check=True)


if __name__ == "__main__":
    main()
