"""Loading the records an analysis command reads, with a cost it can trust.

Every analysis (``tradeoff``, ``select``, ``chain``, ``plan``, ``calibrate``) weighs accuracy against
cost; a record whose cost is missing, zero or NaN would make every row cost nothing and every saver
look free. Such a record is refused with one line, unless the user states the cost explicitly with
``--gmacs NAME=G`` (a model's GMACs per sample, keyed by the record's model name), which then
replaces the recorded one in every record of that model the command reads.

``--cost latency`` weighs each model's measured milliseconds per sample instead (the record's
``latency_ms``, written by ``tinysaver record --runtime onnxruntime``): every number eq. (1) makes,
``C_S + (1 − r)·C_B``, is then in ms, and the tables, JSON (``gmacs`` keys become ``ms`` keys, and a
``cost`` object says how the ms were measured), CSV and plots say ms and the speed-up over the base.
Refused with one line: a record without ``latency_ms``; latencies measured at another batch size,
thread count, runtime or machine than the first record's (not comparable; ``--allow-mixed-latency``
weighs them anyway); records of one model name made on different exported graphs
(``export_sha256``: e.g. its fp32 and int8 graphs, whose latencies differ); ``--gmacs`` (it states
GMACs: with ``--cost latency`` every cost is a measurement, so there is nothing to override —
record the model on the runtime instead). A model costs the ms of the first record of it the
command reads (the reported split's; commands read it first), in every record of it: like its
GMACs, a model's cost does not depend on the split, and a calibration split's own measurement of
the same graph differs only by timing noise.

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
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import TinySaverError

COST_OPTION = "--gmacs"
#: what ``--cost`` takes: the records' GMACs (default) or their measured latency
COST_KINDS = ("gmacs", "latency")


def add_cost_arguments(p: argparse.ArgumentParser) -> None:
    """Adds ``--gmacs NAME=G ...`` (explicit costs for records written without one), ``--cost
    gmacs|latency`` and ``--allow-mixed-latency``."""
    p.add_argument(COST_OPTION, nargs="+", metavar="NAME=G", default=[],
                   help="cost per sample in GMACs of the model NAME (its records' 'name'), replacing what its "
                        "records say: for records written without a cost (a cost of 0 or none is refused)")
    p.add_argument("--cost", choices=COST_KINDS, default="gmacs",
                   help="what a model costs: its GMACs (default), or latency: its measured ms per sample "
                        "(records of `tinysaver record --runtime onnxruntime`); outputs then say ms and speed-up")
    p.add_argument("--allow-mixed-latency", action="store_true",
                   help="with --cost latency, weigh latencies measured at different batch sizes, threads, "
                        "runtimes or machines together (refused otherwise: they are not comparable)")


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
        cost: ``gmacs`` (the records' GMACs) or ``latency`` (their measured ms per sample, which
            then stands in each record's ``gmacs``, with ``cost_unit`` ``ms``).
        allow_mixed: With ``latency``, accept latencies measured in different settings.
    """

    def __init__(self, costs: Sequence[str] = (), cost: str = "gmacs", allow_mixed: bool = False) -> None:
        if cost not in COST_KINDS:
            raise TinySaverError(f"--cost {cost}: give one of {', '.join(COST_KINDS)}")
        if cost == "latency" and costs:
            raise TinySaverError(f"{COST_OPTION} states GMACs, and --cost latency weighs each record's measured ms "
                                 f"instead: drop {COST_OPTION}, or record the model on the runtime (tinysaver record "
                                 f"--runtime onnxruntime) to measure its latency")
        if allow_mixed and cost != "latency":
            # it weighs latencies only: accepted silently it would look applied to GMACs
            raise TinySaverError("--allow-mixed-latency weighs measured latencies: it needs --cost latency")
        self.costs = parse_costs(costs)
        self.cost, self.allow_mixed = cost, allow_mixed
        self._used: set = set()
        self._ms: Dict[str, Tuple[float, str, Optional[str]]] = {}  # --cost latency: each model's
        # (ms, path, export_sha256) of its first record
        self._setting: Optional[Tuple[str, Any]] = None  # the first latency's (path, Latency)
        self._mixed = False  # latencies of several settings were allowed (--allow-mixed-latency)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CostedRecords":
        return cls(getattr(args, "gmacs", None) or [], getattr(args, "cost", "gmacs"),
                   getattr(args, "allow_mixed_latency", False))

    @property
    def unit(self):
        """The :class:`~tinysaver.report.CostUnit` of the costs loaded: GMACs, or ms with how they
        were measured (the first record's setting; "mixed settings" when others were allowed)."""
        from ..report.text import GMACS, CostUnit

        if self.cost != "latency" or self._setting is None:
            return GMACS
        latency = self._setting[1]
        if self._mixed:
            return CostUnit.latency("mixed settings")
        return CostUnit.latency(latency.describe(), latency.setting)

    def load(self, path: str):
        """The record at ``path`` (labelled), with its cost checked or replaced."""
        from ..records import load_record

        record = load_record(path, labelled=True)
        if self.cost == "latency":
            return self._with_latency(record, path)
        if record.name in self.costs:
            self._used.add(record.name)
            return replace(record, gmacs=self.costs[record.name])
        if not record.gmacs > 0:
            raise TinySaverError(f"{path}: model {record.name!r} has no cost (gmacs {record.gmacs:g}): every "
                                 f"analysis weighs accuracy against cost; record it with its cost, or state it "
                                 f"with {COST_OPTION} {record.name}=G")
        return record

    def _with_latency(self, record, path: str):
        """The record with its measured ms per sample as its cost, after the checks of ``--cost latency``."""
        latency = record.latency
        if latency is None:
            raise TinySaverError(f"{path}: model {record.name!r} has no measured latency (latency_ms): --cost "
                                 f"latency weighs measured ms per sample; record it with tinysaver record --runtime "
                                 f"onnxruntime --export DIR --stage {record.name}, or use --cost gmacs")
        if self._setting is None:
            self._setting = (path, latency)
        first_path, first = self._setting
        if latency.setting != first.setting:
            if not self.allow_mixed:
                differ = ", ".join(f"{k} {v!r} here, {first.setting[k]!r} there" for k, v in latency.setting.items()
                                   if first.setting[k] != v)
                raise TinySaverError(f"{path}: its latency was measured in another setting than {first_path}'s "
                                     f"({differ}): not comparable; record both alike, or give "
                                     f"--allow-mixed-latency to weigh them anyway")
            self._mixed = True
        graph = record.extras.get("export_sha256")
        graph = None if graph is None else str(graph)
        ms, first_of_model, first_graph = self._ms.setdefault(record.name, (latency.ms, path, graph))
        if graph is not None and first_graph is not None and graph != first_graph:
            raise TinySaverError(f"{path}: model {record.name!r} was recorded on another graph than in {first_of_model} "
                                 f"(export_sha256 {graph[:12]}… vs {first_graph[:12]}…): one model has one latency; "
                                 f"give each graph its own name, or use --cost gmacs")
        return replace(record, gmacs=ms, cost_unit="ms")

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
