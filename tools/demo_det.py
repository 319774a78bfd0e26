#!/usr/bin/env python
"""The detection cascade end to end, offline: YOLOv8n saver + RetinaNet base (weights/det/) on the
Fashion-MNIST detection canvases.

1. make the val split (100 canvases, ``data/fashion_det``) if missing;
2. ``tools/test.py`` at the config's threshold, dumping both models' detection records: COCO box
   AP (12 stats), exit ratio, GFLOPs per model and for the cascade;
3. ``tinysaver det-tradeoff`` over thresholds 0..1 (step 0.02) from the records: the Table 4-style
   table and the AP-vs-GFLOPs plot.

Outputs land in ``outputs/fashion_det/``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tinysaver" / "yolov8n_retinanet-r18-tiny_fashion-det.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FASHION_DET_ROOT", str(ROOT / "data" / "fashion_det")))
    ap.add_argument("--out", default=str(ROOT / "outputs" / "fashion_det"))
    args = ap.parse_args()
    from tinysaver.cli import main as cli
    from tinysaver.plugins.fashion_det import make_fashion_det

    make_fashion_det(args.data, {"val": 100})
    out = Path(args.out)
    env = dict(os.environ, FASHION_DET_ROOT=args.data)
    subprocess.run([sys.executable, str(ROOT / "tools" / "test.py"), str(CONFIG), "none", "--work-dir", str(out / "work"),
                    "--dump-records", str(out / "records"), "--out-json", str(out / "test.json")], check=True, env=env)
    code = cli(["det-tradeoff", "--ann", str(Path(args.data) / "annotations" / "instances_val.json"),
                "--saver", str(out / "records" / "saver.npz"), "--base", str(out / "records" / "base.npz"),
                "--json", str(out / "det_tradeoff.json"), "--markdown", str(out / "det_tradeoff.md"),
                "--plot", str(out / "det_tradeoff.png")])
    print(f"Detection results: {out}")
    sys.exit(code)


if __name__ == "__main__":
    main()
