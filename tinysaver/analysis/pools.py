"""A base and its pool of savers as records: which savers can save, and the checks of a pool and of
its calibration split (same models, same costs, in the same roles)."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from ..errors import TinySaverError
from ..records import Record, check_pair


def split_pool(base: Record, pool: Sequence[Record]) -> Tuple[List[int], List[Dict[str, object]]]:
    """Indices of the usable savers sorted by cost, and the skipped ones with why."""
    usable, skipped = [], []
    for i, rec in enumerate(pool):
        if rec.gmacs >= base.gmacs:
            skipped.append({"name": rec.name, "gmacs": rec.gmacs,
                            "why": f"costs {rec.gmacs:g} {rec.cost_unit} >= the base's {base.gmacs:g}: cannot save"})
        else:
            usable.append(i)
    return sorted(usable, key=lambda i: pool[i].gmacs), skipped


def check_pool(base: Record, pool: Sequence[Record], what: str) -> None:
    names = [r.name for r in pool] + [base.name]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TinySaverError(f"{what}: model name(s) {', '.join(map(repr, twice))} appear more than once "
                             f"(each model of the pool once, the base not in the pool)")
    for rec in pool:
        check_pair(rec, base)


def check_calibration(pool: Sequence[Record], calib_pool: Sequence[Record], base: Record,
                       calib_base: Record) -> None:
    if len(calib_pool) != len(pool):
        raise TinySaverError(f"--calib-pool has {len(calib_pool)} record(s) but --pool has {len(pool)}: give "
                             f"the same models in the same order")
    for rec, cal in zip(list(pool) + [base], list(calib_pool) + [calib_base]):
        if rec.name != cal.name:
            raise TinySaverError(f"calibration record {cal.path} is model {cal.name!r} but its report-split "
                                 f"counterpart {rec.path} is {rec.name!r}: same models, same order")
        if rec.gmacs != cal.gmacs:
            raise TinySaverError(f"model {rec.name!r} costs {rec.gmacs:g} {rec.cost_unit} in {rec.path} but "
                                 f"{cal.gmacs:g} in {cal.path}")


__all__ = ["split_pool", "check_pool", "check_calibration"]
