"""Detection trade-off from records: COCO box AP and GFLOPs of the cascade per threshold.

Paper Table 4, computed from the two models' saved detections, without running any model again.

The records come from `tools/test.py CONFIG none --dump-records DIR` (saver.npz, base.npz).
The image-level confidence is computed from the saver's box scores (default: mean score of the
boxes scoring at least 0.05; an image with none goes to the base).

On COCO: --ann data/coco/annotations/instances_val2017.json with the records of your models.

Example (the detection records and annotations `make demo` writes):
  tinysaver det-tradeoff --ann data/fashion_det/annotations/instances_val.json \\
      --saver outputs/fashion_det/records/saver.npz --base outputs/fashion_det/records/base.npz \\
      --json det.json --plot det.png
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ann", required=True, help="COCO annotation file of the split")
    p.add_argument("--saver", required=True, help="saver detection record")
    p.add_argument("--base", required=True, help="base detection record")
    p.add_argument("--confidence", default="mean_box_score", help="mean_box_score, max_box_score or box_count")
    p.add_argument("--min-score", type=float, default=0.05,
                   help="boxes scoring below this are ignored; exactly this counts (default 0.05, the paper's)")
    p.add_argument("--thresholds", type=float, nargs=3, default=[0.0, 1.0, 0.02], metavar=("START", "STOP", "STEP"),
                   help="grid, STOP included (default 0 1 0.02)")
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument("--markdown", metavar="OUT.md")
    p.add_argument("--plot", metavar="OUT.png")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..detection import det_tradeoff, det_tradeoff_markdown, load_det_record, plot_det_tradeoff
    from ..errors import TinySaverError
    from ..io import write_json, write_text

    start, stop, step = args.thresholds
    if step <= 0 or stop < start:
        raise TinySaverError("--thresholds needs START <= STOP and STEP > 0")
    grid = np.round(np.arange(start, stop + step / 2, step), 10)
    result = det_tradeoff(args.ann, load_det_record(args.saver), load_det_record(args.base), grid,
                          confidence=args.confidence, min_score=args.min_score)
    table = det_tradeoff_markdown(result)
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        write_text(args.markdown, table)
    if args.plot:
        plot_det_tradeoff(result, args.plot)
    print(table, end="")
    return 0
