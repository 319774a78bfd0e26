"""TinySaver: a tiny pre-trained model in front of a large one.

The analysis API (numpy only; importing it never imports torch)::

    from tinysaver import load_record, ExitCurve, tradeoff, rank_savers

The live cascade (torch) is :class:`tinysaver.Cascade`, imported on first use.
"""
from __future__ import annotations

from typing import Any

from .analysis import (PAPER_DROPS, ExitCurve, MatchPoint, OperatingPoint, SaverScore, Tradeoff,
                       cheapest_within_drop, exit_curve, match_point, max_performance_index,
                       rank_savers, tradeoff, tradeoff_from_records)
from .confidence import CONFIDENCES, ConfidenceFn, build_confidence
from .errors import RecordError, TinySaverError
from .records import Record, check_pair, load_record, save_record

__version__ = "0.1.0"

_LAZY = {"Cascade": "tinysaver.models.cascade"}


def __getattr__(name: str) -> Any:
    # torch-backed objects are imported only when used, so the analysis stays torch-free.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tinysaver' has no attribute {name!r}")


__all__ = ["PAPER_DROPS", "ExitCurve", "MatchPoint", "OperatingPoint", "SaverScore", "Tradeoff",
           "cheapest_within_drop", "exit_curve", "match_point", "max_performance_index", "rank_savers",
           "tradeoff", "tradeoff_from_records", "CONFIDENCES", "ConfidenceFn", "build_confidence",
           "RecordError", "TinySaverError", "Record", "check_pair", "load_record", "save_record",
           "Cascade", "__version__"]
