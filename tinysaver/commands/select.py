"""Rank candidate savers for a base model by ΔC (paper section 3.3).

Give records of the base and of each candidate on the same split (the paper uses the augmented
training split). ΔC = C_S/C_B − r_match: below 0 the saver cuts cost at no accuracy loss there.

Example (the demo's records of the augmented training split):
  tinysaver select --base outputs/fashion_mnist/records/fmnist_cnn_l_train_aug.npz \\
      --saver outputs/fashion_mnist/records/fmnist_cnn_s_train_aug.npz \\
      outputs/fashion_mnist/records/fmnist_cnn_m_train_aug.npz --json ranking.json
"""
from __future__ import annotations

import argparse

from ._outputs import finish
from ._records import CostedRecords, add_cost_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, metavar="B.npz", help="record of the base model")
    p.add_argument("--saver", required=True, nargs="+", metavar="S.npz", help="records of the candidates")
    p.add_argument("--json", metavar="OUT.json", help="write the ranking as a JSON list")
    p.add_argument("--markdown", metavar="OUT.md", help="write the ranking as a markdown table")
    add_cost_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..analysis import rank_savers
    from ..io import check_outputs
    from ..report import selection_console, selection_markdown

    check_outputs({"--json": args.json, "--markdown": args.markdown}, inputs=[args.base, *args.saver])
    records = CostedRecords.from_args(args)
    base, savers = records.load(args.base), records.load_all(args.saver)
    records.check_all_used()
    ranking = rank_savers(base, savers)
    split = base.split_name("selection")
    unit = records.unit
    table = selection_markdown(base.name, ranking, split=split, unit=unit)
    return finish(args, json_data=[s.to_json() for s in ranking], markdown=table,
                  console=selection_console(base.name, ranking, split=split, unit=unit), unit=unit)
