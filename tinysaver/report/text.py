"""Plain-text table helpers shared by the report modules: percentages and aligned columns that
fit a 100-column terminal."""
from __future__ import annotations

from typing import List, Optional, Sequence

CONSOLE_WIDTH = 100


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

