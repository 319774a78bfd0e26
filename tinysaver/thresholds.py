"""Exit thresholds: the one check, their JSON form, and the ``thresholds`` property of every cascade.

A cascade of ``n`` stages has ``n - 1`` thresholds (the last stage answers whatever reaches it).
A threshold is a float or ``inf`` ("nothing exits here"), never NaN: a NaN comparison would
silently let nothing exit. Every cascade class (the torch :class:`~tinysaver.models.cascade.Cascade`,
the ESN, the mmengine classifier, the mmdet detector, the ultralytics cascade, the ONNX runtime)
gets its ``thresholds``/``threshold`` properties from :class:`ThresholdsMixin`, so all of them
check the same way.

May import: :mod:`tinysaver.errors` only (numpy-free, torch-free).
"""
from __future__ import annotations

import math
from typing import Any, List, Sequence, Union

from .errors import ThresholdError

__all__ = ["check_thresholds", "threshold_to_json", "threshold_from_json", "ThresholdsMixin"]


def check_thresholds(values: Sequence[Any], num_stages: int) -> List[float]:
    """Thresholds as floats, one per stage but the last: numbers or "inf" (nothing exits there, as
    in JSON reports), never NaN.

    Args:
        values: One threshold per stage but the last (numbers, numeric strings, 0-d arrays).
        num_stages: How many stages the cascade has.

    Returns:
        The thresholds as Python floats.

    Raises:
        ThresholdError: A value that is not a number or is NaN, or not ``num_stages - 1`` of them.

    Examples:
        >>> check_thresholds([0.9, "inf"], 3)
        [0.9, inf]
    """
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ThresholdError(f"thresholds must be a sequence (one per stage but the last), got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool):
            # float(True) is 1.0: a flag passed where a threshold belongs, not a threshold
            raise ThresholdError(f"threshold {v!r} is not a number or 'inf'")
        try:
            t = float(v)
        except (TypeError, ValueError):
            raise ThresholdError(f"threshold {v!r} is not a number or 'inf'") from None
        if math.isnan(t):
            raise ThresholdError("a threshold is NaN")
        out.append(t)
    if len(out) != num_stages - 1:
        raise ThresholdError(f"{num_stages} stages need {num_stages - 1} thresholds, got {len(out)}")
    return out


def threshold_to_json(t: float) -> Union[float, str]:
    """A threshold for JSON: +inf ("nothing exits") becomes the string ``"inf"``, which ``float()``
    reads back (JSON itself has no infinity); NaN is refused.

    Examples:
        >>> threshold_to_json(float("inf")), threshold_to_json(0.25)
        ('inf', 0.25)
    """
    t = float(t)
    if math.isnan(t):
        raise ThresholdError("a threshold is NaN")
    # JSON has no infinities: "inf" (nothing exits) and "-inf" (everything exits), read back by float()
    return ("inf" if t > 0 else "-inf") if math.isinf(t) else t


def threshold_from_json(value: Union[float, str, None]) -> float:
    """Inverse of :func:`threshold_to_json` (``None`` is also read as +inf)."""
    return math.inf if value is None else float(value)


class ThresholdsMixin:
    """``thresholds`` (one per stage but the last) and ``threshold`` (the first: the two-stage
    vocabulary) for a cascade class, checked by :func:`check_thresholds` on every assignment.

    A class says how many stages it has (``num_stages``) and, when it keeps its thresholds
    somewhere other than a plain list (torch buffers that move with the module, say), overrides
    :meth:`_threshold_values` and :meth:`_store_thresholds`.

    Examples:
        >>> class Pair(ThresholdsMixin):
        ...     num_stages = 2
        >>> p = Pair(); p.thresholds = [0.7]; p.threshold
        0.7
    """

    num_stages: int

    def _threshold_values(self) -> List[float]:
        return list(self.__dict__.get("_thresholds_list", []))

    def _store_thresholds(self, values: List[float]) -> None:
        self.__dict__["_thresholds_list"] = values

    @property
    def thresholds(self) -> List[float]:
        """One per stage but the last (``inf``: nothing exits at that stage)."""
        return [float(t) for t in self._threshold_values()]

    @thresholds.setter
    def thresholds(self, values: Sequence[Any]) -> None:
        self._store_thresholds(check_thresholds(values, self.num_stages))

    @property
    def threshold(self) -> float:
        """The first stage's threshold."""
        return self.thresholds[0]

    @threshold.setter
    def threshold(self, value: Any) -> None:
        self.thresholds = [value, *self.thresholds[1:]]
