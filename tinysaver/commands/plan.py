"""Plan the cheapest chain of savers in front of a base for each allowed accuracy drop.

Searches chains of 1 to --max-stages models (pool members by increasing cost, then the base; any
length up to the pool size + 1) and their thresholds: a table over every threshold combination for
each chain of up to 3 stages (exact over all distinct confidences on small data, else on per-stage
quantile grids) and for every longer chain small enough to be exact; then, unless that was
exhaustive, a coordinate descent (tinysaver/analysis/descent.py) from the best table answers that moves one
or two stages' thresholds at a time over every distinct confidence, adding or removing stages, and
keeps only cheaper answers (never worse than the tables; the JSON's "mode" says what ran). Reports
the Pareto front of accuracy vs expected GMACs, the cheapest chain within each drop, the best
2-stage chain for comparison and the oracle (each sample answered by the cheapest model that gets
it right). With --calib-base and --calib-pool every configuration is chosen on that split and
measured on --base/--pool (the honest mode); --ci adds bootstrap intervals there, and --certify
DELTA a Learn-then-Test choice per drop whose drop holds on new data with probability >= 1 - DELTA;
--certify-method crc (alone, or after the Learn-then-Test method, e.g. "wsr crc") a conformal-risk-
control choice per drop whose drop holds on new data on average over calibration draws (no DELTA).

Example:
  tinysaver plan --base outputs/fashion_mnist/records/fmnist_cnn_l_test.npz \\
      --pool outputs/fashion_mnist/records/fmnist_cnn_{xxs,xs,s,m}_test.npz \\
      --calib-base outputs/fashion_mnist/records/fmnist_cnn_l_holdout.npz \\
      --calib-pool outputs/fashion_mnist/records/fmnist_cnn_{xxs,xs,s,m}_holdout.npz \\
      --max-stages 5 --certify 0.1 --ci 0.95 --json plan.json --markdown plan.md --plot plan.png
"""
from __future__ import annotations

import argparse
import math

from ..analysis import PAPER_DROPS
from ._outputs import finish
from ._records import CostedRecords, add_cost_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, metavar="B.npz", help="record of the base model (reported split)")
    p.add_argument("--pool", required=True, nargs="+", metavar="S.npz", help="records of the candidate savers")
    p.add_argument("--max-stages", type=int, default=3, metavar="N",
                   help="longest chain, base included, up to the pool size + 1 (default 3)")
    p.add_argument("--calib-base", metavar="CB.npz", help="base record of the calibration split")
    p.add_argument("--calib-pool", nargs="+", metavar="CS.npz",
                   help="the pool on the calibration split (same models, same order)")
    p.add_argument("--drops", type=float, nargs="+", default=list(PAPER_DROPS), metavar="PT",
                   help="allowed accuracy drops in percentage points (default: 1 0.5 0.1 0)")
    p.add_argument("--grid", type=int, default=512, metavar="G",
                   help="per-stage quantile grid size for chains too large to search exactly (default 512)")
    p.add_argument("--no-descent", action="store_true",
                   help="tables only: no coordinate descent (chains longer than a table holds are not searched)")
    p.add_argument("--starts", type=int, default=2, metavar="N",
                   help="table chains the descent starts from at each drop (default 2)")
    p.add_argument("--pair-grid", type=int, default=128, metavar="P",
                   help="quantile grid of the descent's two-stage moves (default 128; 0: one stage at a time)")
    p.add_argument("--sweep", type=int, default=16, metavar="N",
                   help="values of the descent's Lagrangian sweep, which finds starts (default 16; 0: none)")
    p.add_argument("--certify", type=float, metavar="DELTA",
                   help="calibrated mode: also a Learn-then-Test chain per drop that keeps it on new data with "
                        "probability >= 1 - DELTA, e.g. 0.1")
    p.add_argument("--certify-method", nargs="+", default=["wsr"], metavar="METHOD",
                   choices=["wsr", "bernstein", "hoeffding-bentkus", "crc"],
                   help="upper confidence bound of --certify: wsr (default), bernstein or hoeffding-bentkus; and/or "
                        "crc: conformal risk control, the expected drop within each target (no --certify needed)")
    p.add_argument("--ci", type=float, metavar="LEVEL",
                   help="bootstrap intervals of the calibrated accuracy and GMACs, e.g. 0.95")
    p.add_argument("--draws", type=int, default=1000, help="bootstrap draws (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", metavar="OUT.json", help="write the plan as JSON (accuracies as fractions)")
    p.add_argument("--markdown", metavar="OUT.md", help="write the markdown table")
    p.add_argument("--plot", metavar="OUT.png", help="plot accuracy vs GMACs (ms with --cost latency): front, best pair, models, oracle")
    add_cost_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..analysis import MAX_CELLS, plan_chains
    from ..errors import TinySaverError
    from ..io import check_outputs
    from ..report.plan import plan_markdown, plot_plan
    from ._checks import MAX_DRAWS, at_most, check_drops, check_png

    check_drops(args.drops)
    ltt = [m for m in args.certify_method if m != "crc"]
    expected = "crc" in args.certify_method
    if len(set(ltt)) > 1:
        raise TinySaverError(f"--certify-method takes one Learn-then-Test method (and/or crc), got {' '.join(ltt)}")
    if args.certify is not None and not ltt:
        raise TinySaverError("--certify DELTA is Learn then Test's; --certify-method crc alone takes none "
                             "(give --certify-method wsr crc for both)")
    at_most(args.draws, MAX_DRAWS, "--draws")
    # a pair move fills a table of up to --pair-grid² cells: the same cap as one chain's table
    at_most(args.pair_grid, math.isqrt(MAX_CELLS), "--pair-grid", f" (a {math.isqrt(MAX_CELLS)}² table per pair move)")
    check_png(args.plot)
    check_outputs({"--json": args.json, "--markdown": args.markdown, "--plot": args.plot},
                  inputs=[args.base, *args.pool, args.calib_base, *(args.calib_pool or [])])
    records = CostedRecords.from_args(args)
    base, pool = records.load(args.base), records.load_all(args.pool)
    calib_base = records.load(args.calib_base) if args.calib_base else None
    calib_pool = records.load_all(args.calib_pool) if args.calib_pool else None
    records.check_all_used()
    result = plan_chains(base, pool, max_stages=args.max_stages, drops=args.drops, grid=args.grid,
                         calib_base=calib_base, calib_pool=calib_pool, ci=args.ci, draws=args.draws,
                         seed=args.seed, descent=not args.no_descent, starts=args.starts, pair_grid=args.pair_grid,
                         sweep=args.sweep,
                         certify=args.certify, certify_method=ltt[0] if ltt else "wsr", certify_expected=expected)
    unit = records.unit
    table = plan_markdown(result, unit=unit)
    return finish(args, json_data=result.to_json(), markdown=table, unit=unit,
                  plot=lambda path: plot_plan(result, path, unit=unit))
