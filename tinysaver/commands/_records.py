"""Loading the records an analysis command reads, with a cost it can trust.

Every analysis (``tradeoff``, ``select``, ``chain``, ``plan``, ``calibrate``) weighs accuracy against
cost; a record whose cost is missing, zero or NaN would make every row cost nothing and every saver
look free. Such a record is refused with one line, unless the user states the cost explicitly with
``--gmacs NAME=G`` (a model's GMACs per sample, keyed by the record's model name), which then
replaces the recorded one in every record of that model the command reads.

Detection records (``det-tradeoff``, ``det-signals``) likewise: a record without GFLOPs is refused
unless ``--saver-gflops``/``--base-gflops`` state them (:func:`load_costed_det_record`).

Examples:
    >>> loader = CostedRecords(["mnv3=0.22"])        # from --gmacs mnv3=0.22
    >>> saver = loader.load("mnv3_val.npz")           # doctest: +SKIP
    >>> loader.check_all_used()                       # a name no record carries is refused
"""
from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from ..errors import TinySaverError

COST_OPTION = "--gmacs"


def add_cost_arguments(p: argparse.ArgumentParser) -> None:
    """Adds ``--gmacs NAME=G ...``: explicit costs for records written without one."""
    p.add_argument(COST_OPTION, nargs="+", metavar="NAME=G", default=[],
                   help="cost per sample in GMACs of the model NAME (its records' 'name'), replacing what its "
                        "records say: for records written without a cost (a cost of 0 or none is refused)")


def parse_costs(items: Sequence[str], option: str = COST_OPTION) -> Dict[str, float]:
    """``["a=0.2", "b=4.1"]`` → ``{"a": 0.2, "b": 4.1}``; each cost finite and > 0."""
    costs: Dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            cost = float(value)
        except ValueError:
            cost = math.nan
        if not sep or not name or not (math.isfinite(cost) and cost > 0):
            raise TinySaverError(f"{option} {item}: give NAME=COST with a finite cost > 0 (e.g. {option} mnv3=0.22)")
        if name in costs:
            raise TinySaverError(f"{option}: {name!r} is given twice")
        costs[name] = cost
    return costs


class CostedRecords:
    """Loads labelled classification records and refuses any without a usable cost.

    Args:
        costs: ``NAME=G`` items (``--gmacs``): the cost of model NAME replaces its records' own.
    """

    def __init__(self, costs: Sequence[str] = ()) -> None:
        self.costs = parse_costs(costs)
        self._used: set = set()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CostedRecords":
        return cls(getattr(args, "gmacs", None) or [])

    def load(self, path: str):
        """The record at ``path`` (labelled), with its cost checked or replaced."""
        from ..records import load_record

        record = load_record(path, labelled=True)
        if record.name in self.costs:
            self._used.add(record.name)
            return replace(record, gmacs=self.costs[record.name])
        if not record.gmacs > 0:
            raise TinySaverError(f"{path}: model {record.name!r} has no cost (gmacs {record.gmacs:g}): every "
                                 f"analysis weighs accuracy against cost; record it with its cost, or state it "
                                 f"with {COST_OPTION} {record.name}=G")
        return record

    def load_all(self, paths: Optional[Sequence[str]]) -> List:
        return [self.load(path) for path in paths or ()]

    def check_all_used(self) -> None:
        """Refuses a ``--gmacs`` name that no record read carried (a typo would be ignored silently)."""
        unused = sorted(set(self.costs) - self._used)
        if unused:
            raise TinySaverError(f"{COST_OPTION}: no record read is of a model named {', '.join(map(repr, unused))}")


def add_det_cost_arguments(p: argparse.ArgumentParser) -> None:
    """Adds ``--saver-gflops``/``--base-gflops``: explicit costs for detection records without one."""
    for who in ("saver", "base"):
        p.add_argument(f"--{who}-gflops", type=float, metavar="G",
                       help=f"the {who}'s GFLOPs per image, replacing its record's (per-image costs included): for "
                            f"records written without a cost (a cost of 0 or none is refused)")


def load_costed_det_record(path: str, gflops: Optional[float], option: str):
    """The detection record at ``path``, its cost replaced by ``gflops`` when given (``option`` names
    the flag), else checked: a record whose GFLOPs are 0 is refused with one line."""
    from ..detection import load_det_record

    record = load_det_record(path)
    if gflops is not None:
        if not (math.isfinite(gflops) and gflops > 0):
            raise TinySaverError(f"{option} {gflops:g}: give the GFLOPs per image, a finite number > 0")
        return replace(record, gflops=float(gflops), image_gflops=None)
    if not record.gflops > 0:
        raise TinySaverError(f"{path}: model {record.name!r} has no cost (gflops {record.gflops:g}): "
                             f"re-run tools/test.py --dump-records (it stamps each model's GFLOPs), or state it "
                             f"with {option} G")
    return record


__all__ = ["COST_OPTION", "CostedRecords", "add_cost_arguments", "add_det_cost_arguments", "load_costed_det_record",
           "parse_costs"]
