"""What an N-stage chain of savers does at given thresholds: answered shares, accuracy, GMACs.

Give the stages in order of increasing cost, the base last, all recorded on the same split, and one
threshold per stage before the base (a sample exits at the first stage whose confidence reaches its
threshold; ``inf`` lets nothing exit there). Cost model: a sample answered at stage k paid stages
1..k.

Example:
  tinysaver chain --stages outputs/fashion_mnist/records/fmnist_cnn_xxs_test.npz \\
      outputs/fashion_mnist/records/fmnist_cnn_s_test.npz outputs/fashion_mnist/records/fmnist_cnn_l_test.npz \\
      --thresholds 0.99 0.95 --json chain.json
"""
from __future__ import annotations

import argparse

from ._outputs import finish
from ._records import CostedRecords, add_cost_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", required=True, nargs="+", metavar="S.npz",
                   help="records of the stages by increasing cost, the base last (same split)")
    p.add_argument("--thresholds", required=True, nargs="+", type=float, metavar="T",
                   help="one threshold per stage before the base ('inf': nothing exits there)")
    p.add_argument("--json", metavar="OUT.json", help="write the result as JSON (accuracy as a fraction)")
    p.add_argument("--markdown", metavar="OUT.md", help="write the markdown table")
    add_cost_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..analysis import chain_from_records
    from ..errors import TinySaverError
    from ..io import check_outputs
    from ..report.plan import chain_markdown
    from ._checks import distinct_models

    check_outputs({"--json": args.json, "--markdown": args.markdown}, inputs=args.stages)
    given = f"--thresholds {' '.join(map(str, args.thresholds))}"
    if len(args.thresholds) != len(args.stages) - 1:
        raise TinySaverError(f"{given}: {len(args.stages)} stages need {len(args.stages) - 1} threshold(s), "
                             f"one per stage before the base ('inf': nothing exits there)")
    if any(t != t for t in args.thresholds):  # t != t: NaN
        raise TinySaverError(f"{given}: a threshold is NaN; give numbers ('inf': nothing exits there)")
    loader = CostedRecords.from_args(args)
    records = loader.load_all(args.stages)
    loader.check_all_used()
    distinct_models(records, "--stages")
    point = chain_from_records(records, args.thresholds)
    # in measured ms the question is how much faster than the base alone (its own ms per sample)
    base_cost = records[-1].gmacs if loader.cost == "latency" else None
    json_data = point.to_json()
    if base_cost is not None:
        json_data["speedup"] = base_cost / point.gmacs
    table = chain_markdown(point, unit=loader.unit, base_cost=base_cost)
    return finish(args, json_data=json_data, markdown=table, unit=loader.unit)
