"""Plain-text table helpers shared by the report modules: percentages, aligned columns that fit a
100-column terminal, and the unit the costs are shown in (:class:`CostUnit`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

CONSOLE_WIDTH = 100


@dataclass(frozen=True)
class CostUnit:
    """The unit of every cost a table, plot or JSON shows: GMACs per sample (:data:`GMACS`, the
    default) or measured milliseconds per sample (:meth:`latency`). The analysis only needs one
    cost per model; this says what that number is.

    Attributes:
        name: ``GMACs`` or ``ms``, in headers, titles and axis labels.
        note: The setting the milliseconds were measured in (``onnxruntime 1.17.1
            (CPUExecutionProvider), batch 32, 1 thread``; ``mixed settings``).
        setting: The measurement's setting (batch size, threads, runtime, device), for the JSON.
    """

    name: str = "GMACs"
    note: str = ""
    setting: Dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def latency(cls, note: str = "", setting: Optional[Dict[str, Any]] = None) -> "CostUnit":
        return cls("ms", note, dict(setting or {}))

    @property
    def is_time(self) -> bool:
        return self.name == "ms"

    def versus(self, value: float, reference: float) -> str:
        """A cost against the base's: a percentage for GMACs (``-43.6%``), the speed-up for time
        (``1.77×``: the base's ms over the cascade's)."""
        if not self.is_time:
            return pct(value, reference)
        return f"{reference / value:.2f}×" if value > 0 else "n/a"

    @property
    def versus_name(self) -> str:
        """What :meth:`versus` gives, for a header: ``%`` or ``speed-up``."""
        return "speed-up" if self.is_time else "%"

    @property
    def column(self) -> str:
        """The header of a cost column that also compares with the base."""
        return "ms (speed-up)" if self.is_time else f"{self.name} (vs base)"

    def axis(self, what: str = "expected cost", scale: str = "") -> str:
        """A plot's cost axis label: ``expected cost (GMACs per sample)`` (``scale``, e.g. `` (log
        scale)``, follows); time adds, on a second line, how it was measured."""
        note = f"\n(measured on {self.note})" if self.is_time and self.note else ""
        return f"{what} ({self.name} per sample){scale}{note}"

    def relabel(self, data: Any) -> Any:
        """JSON data with every key that names GMACs (``gmacs``, ``base_gmacs``...) naming this unit
        instead (``ms``, ``base_ms``...), and, in a top-level object, ``cost``: the unit and how it
        was measured. GMACs: unchanged."""
        if not self.is_time:
            return data
        out = _rename_keys(data)
        if isinstance(out, dict):
            out["cost"] = {"unit": self.name, "measured_on": self.note, **self.setting}
        return out


#: the default unit: GMACs per sample, as records state them
GMACS = CostUnit()


def _rename_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k).replace("gmacs", "ms"): _rename_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_rename_keys(v) for v in data]
    return data


def pct(value: float, reference: float) -> str:
    """``value`` vs ``reference`` as a signed percentage ("-43.6%"), "n/a" for a zero reference."""
    return f"{(value - reference) / reference * 100:+.1f}%" if reference else "n/a"


def aligned(table: Sequence[Sequence[str]], right: Sequence[bool], indent: str = "",
            widths: Optional[Sequence[int]] = None) -> List[str]:
    """Lines of a plain table: columns padded to their widest cell (or ``widths``), two spaces apart."""
    widths = widths or column_widths(table)
    return [indent + "  ".join(cell.rjust(w) if r else cell.ljust(w)
                               for cell, w, r in zip(row, widths, right)).rstrip() for row in table]


def column_widths(table: Sequence[Sequence[str]]) -> List[int]:
    """The widest cell of each column."""
    return [max(len(row[i]) for row in table) for i in range(len(table[0]))]


def column_groups(widths: Sequence[int], keep: int, indent: int) -> List[List[int]]:
    """Column indices of consecutive tables that each fit :data:`CONSOLE_WIDTH`: the first ``keep``
    columns in every table, the others packed in order (one per table at least)."""
    fixed = list(range(keep))
    width = lambda cols: indent + sum(widths[c] for c in cols) + 2 * (len(cols) - 1)  # noqa: E731
    groups: List[List[int]] = []
    for c in range(keep, len(widths)):
        if groups and width(fixed + groups[-1] + [c]) <= CONSOLE_WIDTH:
            groups[-1].append(c)
        else:
            groups.append([c])
    return [fixed + g for g in groups] or [fixed]

