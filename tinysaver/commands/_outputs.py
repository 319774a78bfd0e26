"""The epilogue every analysis command shares: write what was asked (JSON, markdown, a plot, ...)
from results computed beforehand, then print the table.

Examples:
    >>> finish(args, json_data=result.to_json(), markdown=table, plot=lambda p: plot_plan(result, p))  # doctest: +SKIP
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Optional

from ..io import write_json, write_text


def finish(args: argparse.Namespace, *, json_data: Any, markdown: str, console: Optional[str] = None,
           plot: Optional[Callable[[str], None]] = None, extra: Optional[Dict[str, Callable[[str], None]]] = None,
           unit: Any = None) -> int:
    """Writes ``--json``, ``--markdown``, every ``extra`` option given (``{"curve_csv": writer}``)
    and ``--plot`` (in that order; everything was computed before the first file is written), then
    prints ``console`` (default: the markdown table).

    Args:
        args: The parsed command line (``json``, ``markdown`` and, when ``plot`` is given, ``plot``).
        json_data: What ``--json`` gets (JSON-able).
        markdown: What ``--markdown`` gets.
        console: What is printed; None prints ``markdown``.
        plot: Draws the plot to the path ``--plot`` names.
        extra: Further outputs: option name -> writer of that path.
        unit: The :class:`~tinysaver.report.CostUnit` of the costs: with ms, the JSON's ``gmacs``
            keys say ``ms`` and a top-level ``cost`` object says how they were measured.

    Returns:
        0, the command's exit status.
    """
    if args.json:
        write_json(args.json, json_data if unit is None else unit.relabel(json_data))
    if args.markdown:
        write_text(args.markdown, markdown)
    for option, write in (extra or {}).items():
        if getattr(args, option):
            write(getattr(args, option))
    if plot is not None and args.plot:
        plot(args.plot)
    print(markdown if console is None else console, end="")
    return 0
