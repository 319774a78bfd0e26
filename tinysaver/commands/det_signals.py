"""Deferral signals vs the oracle: AP-vs-GFLOPs curves of every detection confidence, on one plot.

From the two models' detection records (no model runs again): for each registered detection
confidence (mean box score of the boxes >= 0.05, max score, box count, mean of the top-k scores,
score certainty = 1 - mean binary entropy, ...) the cascade's exact curve, with the oracle (images
deferred in the order the base's detections beat the saver's on them, by per-image AP or matched-TP
F1 at IoU 0.5: --oracle) and a random order, and each signal's area to the oracle
(smaller is better). A signal with options: name:key=value, e.g. topk_mean_box_score:k=5.

Example (the detection records and annotations `make demo` writes):
  tinysaver det-signals --ann data/fashion_det/annotations/instances_val.json \\
      --saver outputs/fashion_det/records/saver.npz --base outputs/fashion_det/records/base.npz \\
      --json signals.json --plot signals.png
"""
from __future__ import annotations

import argparse

from ._outputs import finish
from ._records import add_det_cost_arguments, load_costed_det_record


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ann", required=True, help="COCO annotation file of the split")
    p.add_argument("--saver", required=True, help="saver detection record")
    p.add_argument("--base", required=True, help="base detection record")
    p.add_argument("--signals", nargs="+", metavar="NAME[:k=v,...]",
                   help="signals to compare (default: every registered detection confidence)")
    p.add_argument("--oracle", choices=["ap", "f1"], default="ap",
                   help="per-image quality the oracle defers by (default ap: COCO AP of the image alone; "
                        "f1: matched-TP F1 at IoU 0.5)")
    p.add_argument("--min-score", type=float, default=0.05,
                   help="boxes scoring below this are ignored by the signals and the oracle (default 0.05)")
    p.add_argument("--max-points", type=int, default=201,
                   help="most points per curve, spread over its distinct exit sets (0: all of them)")
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument("--markdown", metavar="OUT.md")
    p.add_argument("--plot", metavar="OUT.png")
    add_det_cost_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..detection import check_min_score, signal_panel
    from ..report.detection import plot_signals, signals_markdown
    from ..errors import TinySaverError
    from ._checks import check_png
    from ..io import check_outputs

    if args.max_points < 0 or args.max_points == 1:
        raise TinySaverError(f"--max-points must be 0 (all) or at least 2, got {args.max_points}")
    check_min_score(args.min_score)
    check_png(args.plot)
    check_outputs({"--json": args.json, "--markdown": args.markdown, "--plot": args.plot},
                  inputs=[args.ann, args.saver, args.base])
    saver = load_costed_det_record(args.saver, args.saver_gflops, "--saver-gflops")
    base = load_costed_det_record(args.base, args.base_gflops, "--base-gflops")
    panel = signal_panel(args.ann, saver, base, args.signals,
                         oracle=args.oracle, min_score=args.min_score, max_points=args.max_points or None)
    table = signals_markdown(panel)
    return finish(args, json_data=panel, markdown=table, plot=lambda path: plot_signals(panel, path))
