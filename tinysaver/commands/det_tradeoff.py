"""Detection trade-off from records: COCO box AP and GFLOPs of the cascade per threshold.

Paper Table 4, computed from the two models' saved detections, without running any model again.
Each model's detections are matched to the ground truth once; each threshold only re-accumulates
COCO's per-image results (the same 12 stats as a full COCOeval, tens of times faster), so
`--thresholds all` (every distinct exit set: the exact curve) is affordable even on COCO val.

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

from ._outputs import finish
from ._records import add_det_cost_arguments, load_costed_det_record


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ann", required=True, help="COCO annotation file of the split")
    p.add_argument("--saver", required=True, help="saver detection record")
    p.add_argument("--base", required=True, help="base detection record")
    p.add_argument("--confidence", default="mean_box_score", help="mean_box_score, max_box_score or box_count")
    p.add_argument("--min-score", type=float, default=0.05,
                   help="boxes scoring below this are ignored; exactly this counts (default 0.05, the paper's)")
    p.add_argument("--thresholds", nargs="+", default=["0", "1", "0.02"], metavar="START STOP STEP | all",
                   help="grid START STOP STEP, STOP included (default 0 1 0.02), or 'all': every distinct image "
                        "confidence of the saver, then inf (nothing exits)")
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument("--markdown", metavar="OUT.md")
    p.add_argument("--plot", metavar="OUT.png")
    add_det_cost_arguments(p)


#: most thresholds a START STOP STEP grid may hold ('all' is exact with fewer)
MAX_GRID = 1_000_000


def parse_thresholds(values: list):
    """``['all']`` or ``[START, STOP, STEP]`` → ``'all'`` or the grid (STOP included)."""
    import numpy as np

    from ..errors import TinySaverError

    if values == ["all"]:
        return "all"
    try:
        start, stop, step = (float(v) for v in values)
    except ValueError:
        raise TinySaverError(f"--thresholds takes START STOP STEP or 'all', got {' '.join(values)}") from None
    if not all(np.isfinite([start, stop, step])):
        raise TinySaverError(f"--thresholds START STOP STEP must be finite numbers, got {' '.join(values)} "
                             f"('all' ends with inf: nothing exits)")
    if step <= 0 or stop < start:
        raise TinySaverError(f"--thresholds needs START <= STOP and STEP > 0, got {' '.join(values)}")
    if (stop - start) / step > MAX_GRID:
        raise TinySaverError(f"--thresholds {' '.join(values)} makes more than {MAX_GRID:,} thresholds; use a larger "
                             f"STEP, or 'all' (every distinct exit set, the exact curve)")
    return np.round(np.arange(start, stop + step / 2, step), 10)


def run(args: argparse.Namespace) -> int:
    from ..detection import det_tradeoff, detection_confidence
    from ..report.detection import det_tradeoff_markdown, plot_det_tradeoff
    from ._checks import check_png
    from ..io import check_outputs

    grid = parse_thresholds(args.thresholds)
    detection_confidence(args.confidence, args.min_score)  # a known detection confidence, a score floor in [0, 1]
    check_png(args.plot)
    check_outputs({"--json": args.json, "--markdown": args.markdown, "--plot": args.plot},
                  inputs=[args.ann, args.saver, args.base])
    saver = load_costed_det_record(args.saver, args.saver_gflops, "--saver-gflops")
    base = load_costed_det_record(args.base, args.base_gflops, "--base-gflops")
    result = det_tradeoff(args.ann, saver, base, grid,
                          confidence=args.confidence, min_score=args.min_score)
    table = det_tradeoff_markdown(result)
    return finish(args, json_data=result, markdown=table, plot=lambda path: plot_det_tradeoff(result, path))
