"""Accuracy-vs-GMACs trade-off of a saver/base pair, as a row of the paper's Tables 1/5.

For each allowed accuracy drop (percentage points) it reports the lowest expected GMACs and its
threshold, plus the max-performance point. With --calib-base/--calib-saver the thresholds are chosen
on that split and the accuracy and cost are measured on --base/--saver (the honest mode); without,
they are chosen on the reported split itself, as in the paper.

The terminal gets a compact table (cost vs the base and measured accuracy per allowed drop, ✗ where
a calibrated threshold missed its target); --markdown/--json/--curve-csv/--plot write the files.

Example (the demo's records: thresholds chosen on holdout, reported on test):
  tinysaver tradeoff --base outputs/fashion_mnist/records/fmnist_cnn_l_test.npz \\
      --saver outputs/fashion_mnist/records/fmnist_cnn_m_test.npz \\
      --calib-base outputs/fashion_mnist/records/fmnist_cnn_l_holdout.npz \\
      --calib-saver outputs/fashion_mnist/records/fmnist_cnn_m_holdout.npz --json row.json --plot row.png
"""
from __future__ import annotations

import argparse

from ._outputs import finish
from ._records import CostedRecords, add_cost_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, metavar="B.npz", help="record of the base model (reported split)")
    p.add_argument("--saver", required=True, metavar="S.npz", help="record of the saver (reported split)")
    p.add_argument("--calib-base", metavar="CB.npz", help="base record of the calibration split")
    p.add_argument("--calib-saver", metavar="CS.npz", help="saver record of the calibration split")
    p.add_argument("--drops", type=float, nargs="+", default=[1.0, 0.5, 0.1, 0.0], metavar="PT",
                   help="allowed accuracy drops in percentage points, within [-100, 100] (negative: a gain "
                        "over the base is required; default: 1 0.5 0.1 0)")
    p.add_argument("--json", metavar="OUT.json", help="write the row as JSON (accuracies as fractions)")
    p.add_argument("--markdown", metavar="OUT.md", help="write the markdown table")
    p.add_argument("--plot", metavar="OUT.png", help="plot accuracy vs GMACs (ms with --cost latency)")
    p.add_argument("--curve-csv", metavar="OUT.csv", help="write the exit curve at every threshold")
    p.add_argument("--ci", type=float, metavar="LEVEL",
                   help="calibrated mode: bootstrap intervals (e.g. 0.95) of each cell's measured accuracy and "
                        "GMACs, resampling both splits and re-choosing the threshold on each draw")
    p.add_argument("--ci-draws", type=int, default=1000, metavar="B", help="bootstrap draws (default 1000)")
    add_cost_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..analysis import ExitCurve, tradeoff
    from ..errors import TinySaverError
    from ..io import check_outputs
    from ..report import curve_table, plot_tradeoff, tradeoff_console, tradeoff_markdown, write_csv
    from ._checks import MAX_DRAWS, at_most, check_drops, check_png

    if (args.calib_base is None) != (args.calib_saver is None):
        raise TinySaverError("--calib-base and --calib-saver go together")
    check_drops(args.drops)
    if args.ci is not None and args.calib_base is None:
        raise TinySaverError("--ci needs the calibrated mode (--calib-base/--calib-saver): the intervals "
                             "cover choosing the threshold on one split and measuring it on another")
    if args.ci is not None and (not 0 < args.ci < 1 or args.ci_draws < 10):
        raise TinySaverError(f"--ci takes a level in (0, 1) and --ci-draws at least 10, got {args.ci}, {args.ci_draws}")
    at_most(args.ci_draws, MAX_DRAWS, "--ci-draws")
    check_png(args.plot)
    check_outputs({"--json": args.json, "--markdown": args.markdown, "--plot": args.plot, "--curve-csv": args.curve_csv},
                  inputs=[args.base, args.saver, args.calib_base, args.calib_saver])
    records = CostedRecords.from_args(args)
    saver, base = records.load(args.saver), records.load(args.base)
    curve = ExitCurve.from_records(saver, base)
    calib, calib_split = None, "calibration"
    if args.calib_base:
        calib_base, calib_saver = records.load(args.calib_base), records.load(args.calib_saver)
        calib = ExitCurve.from_records(calib_saver, calib_base)
        calib_split = calib_base.split_name("calibration")
    records.check_all_used()
    result = tradeoff(curve, args.drops, saver=saver.name, base=base.name, calibration=calib,
                      split=base.split_name("report"), calib_split=calib_split)
    if args.ci is not None:
        from ..analysis import tradeoff_ci

        intervals = tradeoff_ci(calib_saver, calib_base, saver, base, args.drops,
                                level=args.ci, draws=args.ci_draws)
        for drop, cell in result.required.items():
            if cell is not None:
                cell.ci = intervals.get(drop)
    unit = records.unit
    table = tradeoff_markdown([result], unit=unit)
    return finish(args, json_data=result.to_json(), markdown=table, console=tradeoff_console([result], unit=unit),
                  extra={"curve_csv": lambda path: write_csv(path, curve_table(curve, unit=unit))},
                  plot=lambda path: plot_tradeoff(curve, result, path, unit=unit), unit=unit)
