"""A threshold that keeps the accuracy drop within a target with probability >= 1 - delta.

Learn then Test (Angelopoulos et al., 2021) with fixed-sequence testing from the most confident
threshold down, on the per-sample loss 1[base right] - 1[saver right] of the exited samples: with
probability >= 1 - delta over the draw of the calibration records, the accuracy drop vs the base on
new data from the same distribution is <= --drop points. --method: wsr (default; Waudby-Smith &
Ramdas betting bound), bernstein (Maurer & Pontil empirical Bernstein) or hoeffding-bentkus (Bates
et al.). For a chain (--stages S1 S2 B) half the records order the chain's configurations and the
other half tests them (data splitting). See tinysaver/analysis/calibrate.py for the references.

--guarantee expected instead: conformal risk control (Angelopoulos et al., 2022) on the loss
1[base right and the answering stage wrong]: averaged over the draw of the calibration records, the
accuracy drop vs the base on new data is <= --drop points (no delta, no method; it needs at least
100/--drop - 1 records, and lets nothing exit at a drop of 0). See tinysaver/analysis/crc.py.

Example:
  tinysaver calibrate --base outputs/fashion_mnist/records/fmnist_cnn_l_holdout.npz \\
      --saver outputs/fashion_mnist/records/fmnist_cnn_s_holdout.npz --drop 0.5 --delta 0.1 --json cal.json
"""
from __future__ import annotations

import argparse

from ._outputs import finish
from ._records import CostedRecords, add_cost_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", metavar="B.npz", help="base record of the calibration split")
    p.add_argument("--saver", metavar="S.npz", help="saver record of the calibration split")
    p.add_argument("--stages", nargs="+", metavar="S.npz",
                   help="instead of --saver/--base: a chain by increasing cost, the base last")
    add_guarantee_arguments(p, drop_required=True)
    p.add_argument("--json", metavar="OUT.json", help="write the result as JSON")
    p.add_argument("--markdown", metavar="OUT.md", help="write the result as markdown")
    add_cost_arguments(p)


def add_guarantee_arguments(p: argparse.ArgumentParser, drop_required: bool) -> None:
    """``--drop``, ``--guarantee``, ``--delta``, ``--method``, ``--seed`` (also used by ``export --calib-records``)."""
    p.add_argument("--drop", type=float, required=drop_required, metavar="PT", help="allowed accuracy drop (points)")
    p.add_argument("--guarantee", default="high-probability", choices=["high-probability", "expected"],
                   help="high-probability: Learn then Test, the drop holds with probability >= 1 - delta (default); "
                        "expected: conformal risk control, the drop holds on average over calibration draws")
    p.add_argument("--delta", type=float, help="allowed failure probability (default 0.1; high-probability only)")
    p.add_argument("--method", choices=["wsr", "bernstein", "hoeffding-bentkus"],
                   help="upper confidence bound of the drop (default wsr; high-probability only)")
    p.add_argument("--seed", type=int, default=0, help="sample order (wsr) and data split (chains)")


def check_guarantee_args(args: argparse.Namespace) -> None:
    """Checks --drop/--guarantee/--delta/--method together and fills the defaults in ``args``."""
    from ..analysis import check_target
    from ..analysis.crc import check_drop
    from ..errors import TinySaverError

    if args.guarantee == "expected":
        given = [flag for flag, value in (("--delta", args.delta), ("--method", args.method)) if value is not None]
        if given:
            raise TinySaverError(f"{' and '.join(given)} belong to --guarantee high-probability (Learn then Test); "
                                 "--guarantee expected has neither")
        try:
            check_drop(args.drop)
        except TinySaverError as err:
            raise TinySaverError(f"--drop: {err}") from None
    else:
        args.delta = 0.1 if args.delta is None else args.delta
        args.method = args.method or "wsr"
        check_target(args.drop, args.delta, args.method)


def calibrate_with(records, args: argparse.Namespace):
    """The :class:`~tinysaver.analysis.calibrate.Calibration` that --guarantee asks for, on ``records``
    (savers by increasing cost, the base last; arguments checked by :func:`check_guarantee_args`)."""
    from ..analysis import calibrate_records, crc_calibrate_records

    if args.guarantee == "expected":
        return crc_calibrate_records(records, args.drop, args.seed)
    return calibrate_records(records, args.drop, args.delta, args.method, args.seed)


def run(args: argparse.Namespace) -> int:
    from ..errors import TinySaverError
    from ..io import check_outputs
    from ..report.plan import calibration_markdown
    from ._checks import distinct_models

    if args.stages and (args.saver or args.base):
        raise TinySaverError("give either --stages or --saver and --base, not both")
    if not args.stages and not (args.saver and args.base):
        raise TinySaverError("give --saver and --base (or a chain with --stages S1 S2 B)")
    check_guarantee_args(args)
    paths = args.stages or [args.saver, args.base]
    if len(paths) < 2:
        raise TinySaverError("--stages needs at least one saver and the base")
    check_outputs({"--json": args.json, "--markdown": args.markdown}, inputs=paths)
    loader = CostedRecords.from_args(args)
    records = loader.load_all(paths)
    loader.check_all_used()
    distinct_models(records, "--stages" if args.stages else "--saver/--base")
    result = calibrate_with(records, args)
    text = calibration_markdown(result, unit=loader.unit)
    return finish(args, json_data=result.to_json(), markdown=text, unit=loader.unit)
