"""Report: tables (markdown for files, aligned plain text for the terminal) and plots (PNG) of
analysis, plan and detection results. The only package that imports matplotlib (inside
:func:`plots.pyplot`, on the Agg backend, when a plot is drawn).

Modules: :mod:`.text` (shared table helpers), :mod:`.plots` (``pyplot``, ``save_figure``, label
placement), :mod:`.tradeoff` (a saver/base pair: trade-off, selection, exit-accuracy, CSV),
:mod:`.summary` (what a pipeline run prints), :mod:`.plan` (chain plans, calibrations),
:mod:`.detection` (detection sweep and deferral signals).

May import: numpy, matplotlib (inside functions), the core (errors, io, records, thresholds,
confidence), :mod:`tinysaver.analysis` and :mod:`tinysaver.detection`; never torch, models or
runtime. Nothing below it (core, analysis, detection) may import it.
"""
from __future__ import annotations

from .detection import det_tradeoff_markdown, plot_det_tradeoff, plot_signals, signals_markdown
from .plan import calibration_markdown, chain_markdown, plan_markdown, plot_plan
from .plots import label_box, place_labels, pyplot, save_figure
from .summary import summary_console
from .text import CONSOLE_WIDTH, GMACS, CostUnit
from .tradeoff import (curve_table, draw_tradeoff, plot_exit_accuracy, plot_tradeoff, selection_console,
                       selection_markdown, tradeoff_console, tradeoff_markdown, write_csv)

__all__ = ["det_tradeoff_markdown", "plot_det_tradeoff", "plot_signals", "signals_markdown", "calibration_markdown",
           "chain_markdown", "plan_markdown", "plot_plan", "label_box", "place_labels", "pyplot", "save_figure",
           "summary_console", "CONSOLE_WIDTH", "GMACS", "CostUnit", "curve_table", "draw_tradeoff", "plot_exit_accuracy", "plot_tradeoff",
           "selection_console", "selection_markdown", "tradeoff_console", "tradeoff_markdown", "write_csv"]
