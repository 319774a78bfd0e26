"""Argument checks the commands share: each refuses a bad value with one line naming the option.

A command checks its arguments (and, with :func:`tinysaver.io.check_outputs`, where it will write)
before it loads a model or reads a dataset, so bad input never costs minutes of work, never leaves a
half-made output behind and never ends in a traceback.

Examples:
    >>> at_least(64, 1, "--batch-size")
    >>> check_drops([1.0, 0.5, 0.0])
    >>> at_least(0, 1, "--limit")  # doctest: +SKIP
    tinysaver.errors.TinySaverError: --limit must be >= 1, got 0
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Optional, Sequence

from ..errors import TinySaverError

#: device types a command can run on (checked for presence on this machine)
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def at_least(value: Optional[float], minimum: float, option: str) -> None:
    """Refuses ``value < minimum`` (None: the option was not given, nothing to check)."""
    if value is not None and not value >= minimum:  # `not >=` also refuses NaN
        raise TinySaverError(f"{option} must be >= {minimum:g}, got {value:g}")


#: Most bootstrap draws a command takes: a draw keeps a few numbers per drop and stage, and a million
#: draws already run for hours; 10**12 ended in a MemoryError traceback.
MAX_DRAWS = 1_000_000


def at_most(value: Optional[float], maximum: float, option: str, why: str = "") -> None:
    """Refuses ``value > maximum`` (None: not given); ``why`` is appended to the bound."""
    if value is not None and not value <= maximum:  # `not <=` also refuses NaN
        raise TinySaverError(f"{option} must be at most {maximum:g}{why}, got {value:g}")


def distinct_models(records: Sequence, option: str) -> None:
    """Refuses a chain that names one model twice: the second run of a model can answer nothing the
    first did not, yet its cost would be paid again (records are told apart by their ``name``)."""
    names = [record.name for record in records]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TinySaverError(f"{option}: model name(s) {', '.join(map(repr, twice))} appear more than once "
                             f"(each model of a chain once)")


def check_png(path: Optional[str], option: str = "--plot") -> None:
    """Plots are written as PNG: a file named ``.pdf`` or ``.svg`` would hold PNG bytes under the
    wrong name, so another suffix is refused (no suffix, e.g. ``/dev/null``, is fine)."""
    suffix = os.path.splitext(path or "")[1]
    if suffix and suffix.lower() != ".png":
        raise TinySaverError(f"{option} {path}: plots are written as PNG; give a .png file name")


def all_at_least(values: Optional[Iterable[float]], minimum: float, option: str) -> None:
    """:func:`at_least` for every value of a list option."""
    for value in values or ():
        at_least(value, minimum, option)


def check_drops(drops: Iterable[float], option: str = "--drops") -> None:
    """Allowed accuracy drops in percentage points: finite, within [-100, 100] (a negative drop asks
    for a gain over the base)."""
    for drop in drops:
        if not (math.isfinite(drop) and -100.0 <= drop <= 100.0):
            raise TinySaverError(f"{option} takes accuracy drops in percentage points within [-100, 100] "
                                 f"(negative: a gain over the base), got {drop:g}")


def check_device(device: str, option: str = "--device") -> None:
    """Refuses a device string torch does not parse, or a device this machine does not have
    (``cuda:7`` on a machine with one GPU or none)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise TinySaverError(f"{option} {device!r}: not a device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type not in DEVICE_TYPES:
        raise TinySaverError(f"{option} {device!r}: device type {dev.type!r} cannot run models here "
                             f"(use one of {', '.join(DEVICE_TYPES)})")
    if dev.type == "cpu":
        return
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    available = bool(backend is not None and backend.is_available())
    if not available:
        raise TinySaverError(f"{option} {device}: no {dev.type.upper()} device is available on this machine "
                             f"(use --device cpu)")
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise TinySaverError(f"{option} {device}: this machine has {count} {dev.type} device(s) "
                             f"({dev.type}:0..{dev.type}:{count - 1})")


__all__ = ["DEVICE_TYPES", "MAX_DRAWS", "all_at_least", "at_least", "at_most", "check_device", "check_drops", "check_png",
           "distinct_models"]
