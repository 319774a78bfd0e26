"""Plan the cheapest chain of savers in front of a base for each allowed accuracy drop.

Searches every chain of 1 to --max-stages models (pool members by increasing cost, then the base)
and every threshold combination: exactly over all distinct confidences on small data, else on
per-stage quantile grids (the JSON's "mode" says which). Reports the Pareto front of accuracy vs
expected GMACs, the cheapest chain within each drop, the best 2-stage chain for comparison and the
oracle (each sample answered by the cheapest model that gets it right). With --calib-base and
--calib-pool every configuration is chosen on that split and measured on --base/--pool (the honest
mode); --ci adds bootstrap intervals there.

Example:
  tinysaver plan --base outputs/fashion_mnist/records/fmnist_cnn_l_test.npz \\
      --pool outputs/fashion_mnist/records/fmnist_cnn_{xxs,xs,s,m}_test.npz \\
      --calib-base outputs/fashion_mnist/records/fmnist_cnn_l_holdout.npz \\
      --calib-pool outputs/fashion_mnist/records/fmnist_cnn_{xxs,xs,s,m}_holdout.npz \\
      --ci 0.95 --json plan.json --markdown plan.md --plot plan.png
"""
from __future__ import annotations

import argparse

from ..analysis import PAPER_DROPS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, metavar="B.npz", help="record of the base model (reported split)")
    p.add_argument("--pool", required=True, nargs="+", metavar="S.npz", help="records of the candidate savers")
    p.add_argument("--max-stages", type=int, default=3, metavar="N", help="longest chain, base included (default 3)")
    p.add_argument("--calib-base", metavar="CB.npz", help="base record of the calibration split")
    p.add_argument("--calib-pool", nargs="+", metavar="CS.npz",
                   help="the pool on the calibration split (same models, same order)")
    p.add_argument("--drops", type=float, nargs="+", default=list(PAPER_DROPS), metavar="PT",
                   help="allowed accuracy drops in percentage points (default: 1 0.5 0.1 0)")
    p.add_argument("--grid", type=int, default=512, metavar="G",
                   help="per-stage quantile grid size for chains too large to search exactly (default 512)")
    p.add_argument("--ci", type=float, metavar="LEVEL",
                   help="bootstrap intervals of the calibrated accuracy and GMACs, e.g. 0.95")
    p.add_argument("--draws", type=int, default=1000, help="bootstrap draws (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", metavar="OUT.json", help="write the plan as JSON (accuracies as fractions)")
    p.add_argument("--markdown", metavar="OUT.md", help="write the markdown table")
    p.add_argument("--plot", metavar="OUT.png", help="plot accuracy vs GMACs: front, best pair, models, oracle")


def run(args: argparse.Namespace) -> int:
    from ..chain import plan_chains
    from ..io import write_json, write_text
    from ..plan_report import plan_markdown, plot_plan
    from ..records import load_record

    base = load_record(args.base)
    pool = [load_record(path) for path in args.pool]
    calib_base = load_record(args.calib_base) if args.calib_base else None
    calib_pool = [load_record(path) for path in args.calib_pool] if args.calib_pool else None
    result = plan_chains(base, pool, max_stages=args.max_stages, drops=args.drops, grid=args.grid,
                         calib_base=calib_base, calib_pool=calib_pool, ci=args.ci, draws=args.draws,
                         seed=args.seed)
    table = plan_markdown(result)
    # Everything is computed before the first file is written.
    if args.json:
        write_json(args.json, result.to_json())
    if args.markdown:
        write_text(args.markdown, table)
    if args.plot:
        plot_plan(result, args.plot)
    print(table, end="")
    return 0
