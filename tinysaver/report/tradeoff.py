"""Tables (markdown, in the paper's layout, for files; aligned plain text for the terminal) and
plots (PNG) of a saver/base pair: the trade-off, the saver selection, the exit-accuracy curves, and
the exit curve as CSV columns.
"""
from __future__ import annotations

import os
import textwrap
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..analysis import ExitCurve, OperatingPoint, SaverScore, Tradeoff, match_point
from ..io import atomic_open
from . import plots
from .text import CONSOLE_WIDTH, GMACS, CostUnit, aligned, column_groups, column_widths

PathLike = Union[str, os.PathLike]


def _cell(point, base_gmacs: float, unit: CostUnit = GMACS) -> str:
    if point is None:
        return "-"
    text = f"{point.gmacs:.4g} ({unit.versus(point.gmacs, base_gmacs)})"
    if point.calib_acc is not None:
        # Honest mode: the threshold came from another split; show what it measured here.
        text += f", acc {point.acc:.2%}"
        if point.ci and point.ci.get("acc"):
            lo, hi = point.ci["acc"]
            text += f" [{lo:.2%}, {hi:.2%}]"
    if point.meets_target is False:
        text += " ✗ missed"
    return text


def tradeoff_markdown(rows: Iterable[Tradeoff], unit: CostUnit = GMACS) -> str:
    """Markdown table with the columns of the paper's Tables 1 and 5 (GMACs instead of "GFLOPs",
    which the paper reports as multiply-adds; or measured ms per sample and the speed-up over the
    base, with ``unit`` :meth:`CostUnit.latency`).

    In the calibrated mode each cell is what its threshold *measured* on the reported split (with
    that accuracy), and a cell whose measured accuracy fell below the base's minus the drop is
    marked "✗ missed". ΔC is given for the reported split, and for the calibration split when the
    thresholds came from there.
    """
    rows = list(rows)
    drops = list(rows[0].required) if rows else []
    u = unit.name
    head = (["Base", u, "Acc.", "Saver", u, "Acc."]
            + [f"{u} ({unit.versus_name}) at drop ≤ {d:g} pt" for d in drops]
            + [f"Max perf. {u}", "Acc.", "ΔC (split)", "Mode"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mp = r.max_performance
        cells = [r.base, f"{r.base_gmacs:.4g}", f"{r.base_acc:.2%}", r.saver, f"{r.saver_gmacs:.4g}",
                 f"{r.saver_acc:.2%}"]
        cells += [_cell(r.required[d], r.base_gmacs, unit) for d in drops]
        delta_c = f"{r.delta_c:+.3f} ({r.split})"
        if r.calib_delta_c is not None:
            delta_c += f", {r.calib_delta_c:+.3f} ({r.calib_split})"
        cells += [f"{mp.gmacs:.4g} ({unit.versus(mp.gmacs, r.base_gmacs)})",
                  f"{mp.acc:.2%} ({(mp.acc - r.base_acc) * 100:+.2f} pt)", delta_c, r.mode]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def selection_markdown(base_name: str, scores: Sequence[SaverScore], split: str = "selection",
                       unit: CostUnit = GMACS) -> str:
    """Ranking of candidate savers by ΔC (measured on ``split``), with a plain verdict per row."""
    lines = [f"Saver selection for base {base_name}: ΔC on the {split} split (lower is better; "
             f"ΔC < 0 compresses)", "",
             f"| rank | saver | {unit.name} | C_S/C_B | acc. | r_match | threshold | ΔC | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(scores, 1):
        verdict = ("compresses" if s.compresses
                   else "does not compress this base")
        lines.append(f"| {i} | {s.saver} | {s.saver_gmacs:.4g} | {s.saver_gmacs / s.base_gmacs:.3f} | "
                     f"{s.saver_acc:.2%} | {s.r_match:.4f} | {s.threshold:.6g} | {s.delta_c:+.4f} | {verdict} |")
    return "\n".join(lines) + "\n"


# --- console: aligned plain-text tables that fit a 100-column terminal --------------------------


def _console_cell(point: Optional[OperatingPoint], base_gmacs: float, unit: CostUnit = GMACS) -> str:
    # "-43.6% 92.60✗": GMACs vs the base (or the speed-up, "1.77×"), measured accuracy (%) and the
    # missed-target mark; the trailing space of a met target keeps the numbers of a column right-aligned.
    if point is None:
        return "- "
    mark = "✗" if point.meets_target is False else " "
    return f"{unit.versus(point.gmacs, base_gmacs)} {point.acc * 100:.2f}{mark}"


def tradeoff_console(rows: Iterable[Tradeoff], unit: CostUnit = GMACS) -> str:
    """The trade-off rows for a terminal: one block per saver/base pair, one line per threshold
    source, each cell the cost vs the base and the accuracy measured on the reported split.

    Fits 100 columns for the names of the demo (the markdown of :func:`tradeoff_markdown`, 14
    columns, stays the file format).

    Examples:
        >>> print(tradeoff_console([row]))  # doctest: +SKIP
        saver fmnist_cnn_m (0.01643 GMACs, 69.00%) → base fmnist_cnn_l (0.02913 GMACs, 76.00%) on test
          chosen on      ΔC          ≤1 pt        ≤0.5 pt        ≤0.1 pt          ≤0 pt      max acc.
          holdout    -0.436  -43.6% 69.00✗  -43.6% 69.00✗  -43.6% 69.00✗  -43.6% 69.00✗  -8.1% 75.00
        ...
    """
    rows = list(rows)
    if not rows:
        return ""
    drops = list(rows[0].required)
    head = ["chosen on", "ΔC"] + [f"≤{d:g} pt" for d in drops] + ["max acc."]
    blocks = []
    for (saver, base, split), group in _pairs(rows).items():
        first = group[0]
        title = (f"saver {saver} ({first.saver_gmacs:.4g} {unit.name}, {first.saver_acc:.2%}) → base {base} "
                 f"({first.base_gmacs:.4g} {unit.name}, {first.base_acc:.2%}) on {split}")
        if len(title) > CONSOLE_WIDTH:  # long model names: the base goes on a line of its own
            title = title.replace(" → ", "\n  → ", 1)
        table = [head]
        for r in group:
            source = r.calib_split or (r.split if r.mode == "same-split" else r.mode)
            delta_c = r.calib_delta_c if r.calib_delta_c is not None else r.delta_c
            table.append([source, f"{delta_c:+.3f}"]
                         + [_console_cell(r.required.get(d), r.base_gmacs, unit) for d in drops]
                         + [_console_cell(r.max_performance, r.base_gmacs, unit)])
        blocks.append((title, table))
    # One set of column widths for all pairs, so their columns line up.
    widths = column_widths([row for _, table in blocks for row in table])
    right = [False] + [True] * (len(head) - 1)
    lines: List[str] = []
    for title, table in blocks:
        lines.append(title)
        # Many drops: the cells go on as many stacked tables as needed to stay within the width,
        # each with the threshold source and ΔC again.
        for columns in column_groups(widths, keep=2, indent=2):
            lines += aligned([[row[c] for c in columns] for row in table], [right[c] for c in columns],
                              indent="  ", widths=[widths[c] for c in columns])
    split = rows[0].split
    measured = f"; measured on {unit.note}" if unit.note else ""
    cost = (f"speed-up over the base (its ms per sample / the expected ms per sample{measured})" if unit.is_time
            else "expected GMACs vs the base's")
    legend = (f"Cells: {cost} and accuracy (%) measured on {split}, at the cheapest "
              f"threshold within each allowed accuracy drop, chosen on the split on the left (ΔC is that "
              f"split's). ✗: below the base's accuracy minus the drop on {split}; -: no threshold meets "
              f"the drop where it is chosen.")
    return "\n".join(lines + [""] + textwrap.wrap(legend, CONSOLE_WIDTH)) + "\n"


def _pairs(rows: Sequence[Tradeoff]) -> Dict[tuple, List[Tradeoff]]:
    pairs: Dict[tuple, List[Tradeoff]] = {}
    for r in rows:
        pairs.setdefault((r.saver, r.base, r.split), []).append(r)
    return pairs


def selection_console(base_name: str, scores: Sequence[SaverScore], split: str = "selection",
                      unit: CostUnit = GMACS) -> str:
    """:func:`selection_markdown` as an aligned plain table for a terminal."""
    table = [["rank", "saver", unit.name, "C_S/C_B", "acc.", "r_match", "threshold", "ΔC", "verdict"]]
    for i, s in enumerate(scores, 1):
        table.append([str(i), s.saver, f"{s.saver_gmacs:.4g}", f"{s.saver_gmacs / s.base_gmacs:.3f}",
                      f"{s.saver_acc:.2%}", f"{s.r_match:.4f}", f"{s.threshold:.6g}", f"{s.delta_c:+.4f}",
                      "compresses" if s.compresses else "does not compress this base"])
    right = [True, False, True, True, True, True, True, True, False]
    title = f"Saver selection for base {base_name} (ΔC on the {split} split; lower is better, < 0 compresses)"
    return "\n".join([title] + aligned(table, right, indent="  ")) + "\n"


def plot_tradeoff(curve: ExitCurve, result: Tradeoff, path: PathLike,
                  title: Optional[str] = None, unit: CostUnit = GMACS) -> None:
    """Accuracy vs expected GMACs (or ms): the cascade over all thresholds, both models as points
    and the operating points of the table (see :func:`draw_tradeoff`)."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    draw_tradeoff(ax, curve, result, title=title, unit=unit)
    plots.save_figure(fig, path)


def draw_tradeoff(ax, curve: ExitCurve, result: Tradeoff, title: Optional[str] = None,
                  unit: CostUnit = GMACS) -> List[Any]:
    """Draws the trade-off on a matplotlib ``ax`` and returns the drop labels.

    Each operating point is labelled with its allowed drops ("≤1/0.5 pt" where several share it);
    the labels are placed so that no two overlap (nor the legend). In the calibrated mode a point
    whose target was missed on the reported split is a red ✗ with "missed" in its label.

    Returns:
        The label artists (matplotlib ``Annotation``), e.g. to check their boxes.
    """
    idx = plots.thin(len(curve.n_exit))
    ax.plot(curve.expected_gmacs[idx], curve.system_acc[idx] * 100, "-", lw=1.5,
            label=f"TinySaver {result.saver} → {result.base}")
    ax.plot([result.base_gmacs], [result.base_acc * 100], "s", ms=8, label=f"base {result.base}")
    ax.plot([result.saver_gmacs], [result.saver_acc * 100], "o", ms=8, label=f"saver {result.saver}")
    # Drops that land on one point share a label; a missed target gets its own, in red.
    groups: Dict[tuple, List[str]] = {}
    for drop, p in result.required.items():
        if p is not None:
            groups.setdefault((p.gmacs, p.acc * 100, p.meets_target is False), []).append(f"{drop:g}")
    labels = []
    for missed in (False, True):
        points = [(x, y, drops) for (x, y, m), drops in groups.items() if m == missed]
        if not points:
            continue
        style = dict(color="tab:red", ms=8, mew=2) if missed else dict(color="k", ms=6, mew=1.2)
        what = f"target missed on {result.split}" if missed else "cheapest point within the drop"
        ax.plot([x for x, _, _ in points], [y for _, y, _ in points], "x", ls="none", label=what, **style)
        labels += [(x, y, f"≤{'/'.join(drops)} pt" + (" missed" if missed else ""), style["color"])
                   for x, y, drops in points]
    ax.set_xlabel(unit.axis())
    ax.set_ylabel(f"accuracy on {result.split} (%)")
    source = f"thresholds chosen on {result.calib_split}" if result.calib_split else result.mode
    ax.set_title(title or f"{result.base} with saver {result.saver} on {result.split} ({source})", fontsize=9)
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=7, loc="lower right")
    # Labels keep off the curve and the markers as well as each other, so each stays legible.
    drawn = np.column_stack([curve.expected_gmacs[idx], curve.system_acc[idx] * 100])
    marks = [(result.base_gmacs, result.base_acc * 100), (result.saver_gmacs, result.saver_acc * 100)]
    marks += [(x, y) for x, y, _, _ in labels]
    return plots.place_labels(ax, labels, avoid=[legend], points=drawn, markers=np.array(marks))


def plot_exit_accuracy(curves: Mapping[str, ExitCurve], path: PathLike,
                       title: str = "Accuracy on exited samples vs exit ratio") -> None:
    """The paper's Fig. 3: saver and base accuracy on the exited samples against the exit ratio,
    one pair of lines per split (e.g. ``{"train": ..., "val": ...}``), crossings marked."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    styles = ["-", "--", ":", "-."]
    for (split, curve), ls in zip(curves.items(), styles):
        idx = plots.thin(len(curve.n_exit))[1:] if len(curve.n_exit) > 1 else []
        r = curve.exit_ratio[idx]
        ax.plot(r, curve.saver_acc_exited[idx] * 100, ls, color="tab:orange", label=f"saver ({split})")
        ax.plot(r, curve.base_acc_exited[idx] * 100, ls, color="tab:blue", label=f"base ({split})")
        m = match_point(curve)
        if m.index > 0:
            ax.plot([m.r_match], [curve.saver_acc_exited[m.index] * 100], "o", mfc="none", mec="red", ms=10)
    ax.set_xlabel("early exit ratio (fraction of samples answered by the saver)")
    ax.set_ylabel("accuracy on exited samples (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    plots.save_figure(fig, path)


def curve_table(curve: ExitCurve, unit: CostUnit = GMACS) -> Dict[str, np.ndarray]:
    """The full exit curve as columns (for CSV export); the cost column is ``expected_gmacs``, or
    ``expected_ms`` for time."""
    return {"threshold": curve.threshold, "exit_ratio": curve.exit_ratio,
            "saver_acc_exited": curve.saver_acc_exited, "base_acc_exited": curve.base_acc_exited,
            "system_acc": curve.system_acc, "expected_" + ("ms" if unit.is_time else "gmacs"): curve.expected_gmacs}


def write_csv(path: PathLike, columns: Mapping[str, np.ndarray]) -> None:
    """Writes equal-length columns as CSV, atomically."""
    names = list(columns)
    data = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in names])
    with atomic_open(path, "w") as f:
        np.savetxt(f, data, delimiter=",", header=",".join(names), comments="", fmt="%.10g")
