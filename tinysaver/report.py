"""Tables (markdown, in the paper's layout, for files; aligned plain text for the terminal) and
plots (PNG) of analysis results.

matplotlib is imported only when a plot is drawn, with the non-interactive Agg backend.
"""
from __future__ import annotations

import dataclasses
import os
import textwrap
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from .analysis import ExitCurve, OperatingPoint, SaverScore, Tradeoff, match_point, threshold_from_json
from .io import atomic_open

PathLike = Union[str, os.PathLike]
_PLOT_POINTS = 2000  # a curve of 500k thresholds is thinned to this many points for drawing


def _pct(value: float, reference: float) -> str:
    return f"{(value - reference) / reference * 100:+.1f}%" if reference else "n/a"


def _cell(point, base_gmacs: float) -> str:
    if point is None:
        return "-"
    text = f"{point.gmacs:.4g} ({_pct(point.gmacs, base_gmacs)})"
    if point.calib_acc is not None:
        # Honest mode: the threshold came from another split; show what it measured here.
        text += f", acc {point.acc:.2%}"
        if point.ci and point.ci.get("acc"):
            lo, hi = point.ci["acc"]
            text += f" [{lo:.2%}, {hi:.2%}]"
    if point.meets_target is False:
        text += " ✗ missed"
    return text


def tradeoff_markdown(rows: Iterable[Tradeoff]) -> str:
    """Markdown table with the columns of the paper's Tables 1 and 5 (GMACs instead of "GFLOPs",
    which the paper reports as multiply-adds).

    In the calibrated mode each cell is what its threshold *measured* on the reported split (with
    that accuracy), and a cell whose measured accuracy fell below the base's minus the drop is
    marked "✗ missed". ΔC is given for the reported split, and for the calibration split when the
    thresholds came from there.
    """
    rows = list(rows)
    drops = list(rows[0].required) if rows else []
    head = (["Base", "GMACs", "Acc.", "Saver", "GMACs", "Acc."]
            + [f"GMACs (%) at drop ≤ {d:g} pt" for d in drops]
            + ["Max perf. GMACs", "Acc.", "ΔC (split)", "Mode"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mp = r.max_performance
        cells = [r.base, f"{r.base_gmacs:.4g}", f"{r.base_acc:.2%}", r.saver, f"{r.saver_gmacs:.4g}",
                 f"{r.saver_acc:.2%}"]
        cells += [_cell(r.required[d], r.base_gmacs) for d in drops]
        delta_c = f"{r.delta_c:+.3f} ({r.split})"
        if r.calib_delta_c is not None:
            delta_c += f", {r.calib_delta_c:+.3f} ({r.calib_split})"
        cells += [f"{mp.gmacs:.4g} ({_pct(mp.gmacs, r.base_gmacs)})",
                  f"{mp.acc:.2%} ({(mp.acc - r.base_acc) * 100:+.2f} pt)", delta_c, r.mode]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def selection_markdown(base_name: str, scores: Sequence[SaverScore], split: str = "selection") -> str:
    """Ranking of candidate savers by ΔC (measured on ``split``), with a plain verdict per row."""
    lines = [f"Saver selection for base {base_name}: ΔC on the {split} split (lower is better; "
             f"ΔC < 0 compresses)", "",
             "| rank | saver | GMACs | C_S/C_B | acc. | r_match | threshold | ΔC | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(scores, 1):
        verdict = ("compresses" if s.compresses
                   else "does not compress this base")
        lines.append(f"| {i} | {s.saver} | {s.saver_gmacs:.4g} | {s.saver_gmacs / s.base_gmacs:.3f} | "
                     f"{s.saver_acc:.2%} | {s.r_match:.4f} | {s.threshold:.6g} | {s.delta_c:+.4f} | {verdict} |")
    return "\n".join(lines) + "\n"


# --- console: aligned plain-text tables that fit a 100-column terminal --------------------------

CONSOLE_WIDTH = 100


def _aligned(table: Sequence[Sequence[str]], right: Sequence[bool], indent: str = "",
             widths: Optional[Sequence[int]] = None) -> List[str]:
    """Lines of a plain table: columns padded to their widest cell (or ``widths``), two spaces apart."""
    widths = widths or _widths(table)
    return [indent + "  ".join(cell.rjust(w) if r else cell.ljust(w)
                               for cell, w, r in zip(row, widths, right)).rstrip() for row in table]


def _widths(table: Sequence[Sequence[str]]) -> List[int]:
    return [max(len(row[i]) for row in table) for i in range(len(table[0]))]


def _console_cell(point: Optional[OperatingPoint], base_gmacs: float) -> str:
    # "-43.6% 92.60✗": GMACs vs the base, measured accuracy (%) and the missed-target mark; the
    # trailing space of a met target keeps the numbers of a column right-aligned.
    if point is None:
        return "- "
    mark = "✗" if point.meets_target is False else " "
    return f"{_pct(point.gmacs, base_gmacs)} {point.acc * 100:.2f}{mark}"


def tradeoff_console(rows: Iterable[Tradeoff]) -> str:
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
        title = (f"saver {saver} ({first.saver_gmacs:.4g} GMACs, {first.saver_acc:.2%}) → base {base} "
                 f"({first.base_gmacs:.4g} GMACs, {first.base_acc:.2%}) on {split}")
        if len(title) > CONSOLE_WIDTH:  # long model names: the base goes on a line of its own
            title = title.replace(" → ", "\n  → ", 1)
        table = [head]
        for r in group:
            source = r.calib_split or (r.split if r.mode == "same-split" else r.mode)
            delta_c = r.calib_delta_c if r.calib_delta_c is not None else r.delta_c
            table.append([source, f"{delta_c:+.3f}"] + [_console_cell(r.required.get(d), r.base_gmacs) for d in drops]
                         + [_console_cell(r.max_performance, r.base_gmacs)])
        blocks.append((title, table))
    # One set of column widths for all pairs, so their columns line up.
    widths = _widths([row for _, table in blocks for row in table])
    right = [False] + [True] * (len(head) - 1)
    lines: List[str] = []
    for title, table in blocks:
        lines.append(title)
        # Many drops: the cells go on as many stacked tables as needed to stay within the width,
        # each with the threshold source and ΔC again.
        for columns in _column_groups(widths, keep=2, indent=2):
            lines += _aligned([[row[c] for c in columns] for row in table], [right[c] for c in columns],
                              indent="  ", widths=[widths[c] for c in columns])
    split = rows[0].split
    legend = (f"Cells: expected GMACs vs the base's and accuracy (%) measured on {split}, at the cheapest "
              f"threshold within each allowed accuracy drop, chosen on the split on the left (ΔC is that "
              f"split's). ✗: below the base's accuracy minus the drop on {split}; -: no threshold meets "
              f"the drop where it is chosen.")
    return "\n".join(lines + [""] + textwrap.wrap(legend, CONSOLE_WIDTH)) + "\n"


def _column_groups(widths: Sequence[int], keep: int, indent: int) -> List[List[int]]:
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


def _pairs(rows: Sequence[Tradeoff]) -> Dict[tuple, List[Tradeoff]]:
    pairs: Dict[tuple, List[Tradeoff]] = {}
    for r in rows:
        pairs.setdefault((r.saver, r.base, r.split), []).append(r)
    return pairs


def selection_console(base_name: str, scores: Sequence[SaverScore], split: str = "selection") -> str:
    """:func:`selection_markdown` as an aligned plain table for a terminal."""
    table = [["rank", "saver", "GMACs", "C_S/C_B", "acc.", "r_match", "threshold", "ΔC", "verdict"]]
    for i, s in enumerate(scores, 1):
        table.append([str(i), s.saver, f"{s.saver_gmacs:.4g}", f"{s.saver_gmacs / s.base_gmacs:.3f}",
                      f"{s.saver_acc:.2%}", f"{s.r_match:.4f}", f"{s.threshold:.6g}", f"{s.delta_c:+.4f}",
                      "compresses" if s.compresses else "does not compress this base"])
    right = [True, False, True, True, True, True, True, True, False]
    title = f"Saver selection for base {base_name} (ΔC on the {split} split; lower is better, < 0 compresses)"
    return "\n".join([title] + _aligned(table, right, indent="  ")) + "\n"


def summary_console(summary: Mapping[str, Any]) -> str:
    """What a pipeline run prints at the end (the ``summary`` that
    :func:`tinysaver.pipeline.run_pipeline` returns): verdict, selection, the chosen pair's
    trade-off, the live check and the measured speed, within 100 columns for the demo.
    ``summary.md`` and the other files keep the full markdown tables."""
    wrap = lambda text: textwrap.wrap(text, CONSOLE_WIDTH)  # noqa: E731
    scores = [_score_from_json(s) for s in summary["selection"]]
    chosen = [_tradeoff_from_json(r) for r in summary["chosen_tradeoff"].values()]
    parts = [f"TinySaver: base {summary['base']}, chosen saver {summary['chosen_saver']}", "",
             *wrap(f"Verdict: {summary['verdict']}"), "", selection_console(summary["base"], scores),
             "Trade-off of the chosen pair (all pairs: tradeoff.md)", tradeoff_console(chosen)]
    if "live_check" in summary:
        lc = summary["live_check"]
        parts += wrap(f"Live cascade vs simulation at threshold {lc['threshold']:.6g}: accuracy "
                      f"{lc['live_acc']:.4%} live vs {lc['simulated_acc']:.4%} simulated, exit ratio "
                      f"{lc['live_exit_ratio']:.4f} vs {lc['simulated_exit_ratio']:.4f}; "
                      f"{lc['routing_mismatches']} routing and {lc['prediction_mismatches']} prediction "
                      f"mismatches over {lc['samples']} samples.") + [""]
    if summary.get("speed"):
        table = [["batch", "device", "samples", "exit ratio", "base img/s", "cascade img/s", "speed-up", "ideal",
                  "of ideal"]]
        for r in summary["speed"]:
            table.append([str(r["batch_size"]), str(r["device"]), str(r["samples"]), f"{r['exit_ratio']:.3f}",
                          f"{r['base_throughput']:.1f}", f"{r['cascade_throughput']:.1f}", f"{r['speedup']:.2f}x",
                          f"{r['ideal_speedup']:.2f}x", f"{r['fraction_of_ideal']:.0%}"])
        parts += ["Measured speed, base alone vs cascade"]
        parts += _aligned(table, [True, False] + [True] * 7, indent="  ") + [""]
    if summary.get("plan"):
        parts += _plan_console(summary["plan"])
    return "\n".join(parts)


def _plan_console(plan: Mapping[str, Any]) -> list:
    """The plan section of :func:`summary_console`: per drop the chain, its measured accuracy and
    saving (✗ where the target was missed), the best pair's saving and the headroom captured."""
    base = plan["base_gmacs"]
    # rounded first, so the base alone reads +0.0% and not -0.0%
    saving = lambda p: "-" if not p else f"{round(1 - p['gmacs'] / base, 4) + 0.0:+.1%}"  # noqa: E731
    certified = plan.get("certified") or {}
    table = [["drop", "chain", "acc.", "saving", "best pair", "headroom"]]
    if certified:
        table[0].append("certified: saving, acc.")
    for drop, point in plan["required"].items():
        pair = plan["best_pair"].get(drop)
        head = plan["headroom_captured"].get(drop)
        chain = "-" if not point else " → ".join(n.replace("fmnist_cnn_", "") for n in point["stages"])
        acc = "-" if not point else f"{point['acc']:.2%}" + (" ✗" if point.get("meets_target") is False else "")
        row = [f"≤{float(drop):g} pt", chain, acc, saving(point), saving(pair), "-" if head is None else f"{head:.0%}"]
        if certified:
            cert = certified.get(drop)
            row.append("-" if not cert or "acc" not in cert else
                       f"{saving(cert)} {cert['acc']:.2%}" + (" ✗" if cert.get("meets_target") is False else ""))
        table.append(row)
    oracle = plan["oracle"]
    where = ("chosen on the calibration split, measured on the report split" if plan.get("selection") == "calibrated"
             else "chosen and measured on the report split")
    lines = [f"Chains of savers ({where}; saving vs the base)"]
    lines += _aligned(table, [False, False, True, True, True, True, True], indent="  ")
    if certified:
        delta = next(iter(certified.values()), {}).get("delta")
        lines += textwrap.wrap(f"Certified: chosen by Learn-then-Test on the calibration split, so that with "
                               f"probability ≥ {1 - delta:g} the drop on new data stays within the target "
                               f"(+0.0%: only the base could be certified).", CONSOLE_WIDTH)
    lines += textwrap.wrap(f"Oracle (each sample to the cheapest model that is right): accuracy {oracle['acc']:.2%}, "
                           f"saving {1 - oracle['gmacs'] / base:+.1%}.", CONSOLE_WIDTH)
    lc = plan.get("live_check")
    if lc:
        lines += textwrap.wrap(f"Live chain at ≤ {lc['drop']:g} pt ({len(lc['stages'])} stages): accuracy "
                               f"{lc['live_acc']:.4%} live vs {lc['simulated_acc']:.4%} simulated; "
                               f"{lc['routing_mismatches']} routing and {lc['prediction_mismatches']} prediction "
                               f"mismatches over {lc['samples']} samples.", CONSOLE_WIDTH)
    return lines + [""]


def _point_from_json(data: Optional[Mapping[str, Any]]) -> Optional[OperatingPoint]:
    if data is None:
        return None
    known = {f.name for f in dataclasses.fields(OperatingPoint)}
    values = {k: v for k, v in data.items() if k in known}
    values["threshold"] = threshold_from_json(data.get("threshold"))
    return OperatingPoint(**values)


def _tradeoff_from_json(data: Mapping[str, Any]) -> Tradeoff:
    # The inverse of Tradeoff.to_json, for rows read back from a summary.
    known = {f.name for f in dataclasses.fields(Tradeoff)} - {"required", "max_performance", "extra"}
    return Tradeoff(required={float(d): _point_from_json(p) for d, p in data["required"].items()},
                    max_performance=_point_from_json(data["max_performance"]),
                    **{k: v for k, v in data.items() if k in known})


def _score_from_json(data: Mapping[str, Any]) -> SaverScore:
    known = {f.name for f in dataclasses.fields(SaverScore)}
    values = {k: v for k, v in data.items() if k in known}
    values["threshold"] = threshold_from_json(data.get("threshold"))
    return SaverScore(**values)


def _thin(n: int) -> np.ndarray:
    if n <= _PLOT_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, _PLOT_POINTS).round().astype(int))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tradeoff(curve: ExitCurve, result: Tradeoff, path: PathLike,
                  title: Optional[str] = None) -> None:
    """Accuracy vs expected GMACs: the cascade over all thresholds, both models as points and the
    operating points of the table (see :func:`draw_tradeoff`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    draw_tradeoff(ax, curve, result, title=title)
    _save(fig, path)


def draw_tradeoff(ax, curve: ExitCurve, result: Tradeoff, title: Optional[str] = None) -> List[Any]:
    """Draws the trade-off on a matplotlib ``ax`` and returns the drop labels.

    Each operating point is labelled with its allowed drops ("≤1/0.5 pt" where several share it);
    the labels are placed so that no two overlap (nor the legend). In the calibrated mode a point
    whose target was missed on the reported split is a red ✗ with "missed" in its label.

    Returns:
        The label artists (matplotlib ``Annotation``), e.g. to check their boxes.
    """
    idx = _thin(len(curve.n_exit))
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
    ax.set_xlabel("expected cost (GMACs per sample)")
    ax.set_ylabel(f"accuracy on {result.split} (%)")
    source = f"thresholds chosen on {result.calib_split}" if result.calib_split else result.mode
    ax.set_title(title or f"{result.base} with saver {result.saver} on {result.split} ({source})", fontsize=9)
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=7, loc="lower right")
    # Labels keep off the curve and the markers as well as each other, so each stays legible.
    drawn = np.column_stack([curve.expected_gmacs[idx], curve.system_acc[idx] * 100])
    marks = [(result.base_gmacs, result.base_acc * 100), (result.saver_gmacs, result.saver_acc * 100)]
    marks += [(x, y) for x, y, _, _ in labels]
    return place_labels(ax, labels, avoid=[legend], points=drawn, markers=np.array(marks))


# Label positions tried around a point, in points: beside it first, then stacked ever further
# above and below with a leader line, so a free place always exists.
_NEAR = [(6, -9), (6, 5), (-6, -9), (-6, 5)]
_STACKED = [(18, sign * 11 * k) for k in range(1, 40) for sign in (-1, 1)]


def place_labels(ax, labels: Sequence[tuple], avoid: Sequence[Any] = (), points: Optional[np.ndarray] = None,
                 markers: Optional[np.ndarray] = None, marker_size: float = 8, fontsize: float = 7) -> List[Any]:
    """Annotates ``(x, y, text, color)`` points so that no label box overlaps another label, an
    artist of ``avoid`` (e.g. the legend) or a marker (``markers``: data coordinates ``[N, 2]``,
    ``marker_size`` points wide), and, where possible, covers none of ``points`` (data coordinates
    ``[N, 2]``, e.g. a curve) and stays inside the axes.

    Placement is greedy, left to right: each label takes the first free position of a fixed list
    (beside the point, then stacked further away with a leader line), measured with the figure's
    renderer.

    Returns:
        The annotations, in the order of ``labels``.
    """
    from matplotlib.transforms import Bbox

    # A full draw first: it settles the axis limits (autoscaling is lazy), hence where points land.
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = [a.get_window_extent(renderer) for a in avoid]
    half = marker_size / 2 * ax.figure.dpi / 72  # points to pixels
    if markers is not None:
        taken += [Bbox.from_extents(x - half, y - half, x + half, y + half)
                  for x, y in ax.transData.transform(markers)]
    covered = ax.transData.transform(points) if points is not None and len(points) else np.zeros((0, 2))
    placed: Dict[int, Any] = {}
    order = sorted(range(len(labels)), key=lambda i: (labels[i][0], -labels[i][1]))
    for i in order:
        x, y, text, color = labels[i]
        best = None  # (annotation, box): a free place, a clear one if found
        for dx, dy in _NEAR + _STACKED:
            leader = None if (dx, dy) in _NEAR else dict(arrowstyle="-", lw=0.5, color=color)
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              color=color, ha="left" if dx > 0 else "right", va="center", arrowprops=leader)
            box = label_box(ann, renderer).padded(1.5)
            free = not any(box.overlaps(t) for t in taken)
            clear = box.count_contains(covered) == 0 and inside.contains(box.x0, box.y0) \
                and inside.contains(box.x1, box.y1)
            if free and clear:
                if best is not None:
                    best[0].remove()
                best = (ann, box)
                break
            if free and best is None:
                best = (ann, box)  # on the curve or outside: kept unless a clear place turns up
            else:
                ann.remove()
        if best is None:  # 80 positions for a handful of labels: cannot happen
            raise RuntimeError(f"no free place for the label {text!r}")
        placed[i], box = best
        taken.append(box)
    return [placed[i] for i in range(len(labels))]


def label_box(label: Any, renderer: Any = None):
    """Display-space box of an annotation's text alone (without its leader line)."""
    from matplotlib.text import Text

    label.get_window_extent(renderer)  # lays out the annotation (its text position) first
    return Text.get_window_extent(label, renderer)


def plot_exit_accuracy(curves: Mapping[str, ExitCurve], path: PathLike,
                       title: str = "Accuracy on exited samples vs exit ratio") -> None:
    """The paper's Fig. 3: saver and base accuracy on the exited samples against the exit ratio,
    one pair of lines per split (e.g. ``{"train": ..., "val": ...}``), crossings marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    styles = ["-", "--", ":", "-."]
    for (split, curve), ls in zip(curves.items(), styles):
        idx = _thin(len(curve.n_exit))[1:] if len(curve.n_exit) > 1 else []
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
    _save(fig, path)


def _save(fig, path: PathLike) -> None:
    plt = _pyplot()
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def curve_table(curve: ExitCurve) -> Dict[str, np.ndarray]:
    """The full exit curve as columns (for CSV export)."""
    return {"threshold": curve.threshold, "exit_ratio": curve.exit_ratio,
            "saver_acc_exited": curve.saver_acc_exited, "base_acc_exited": curve.base_acc_exited,
            "system_acc": curve.system_acc, "expected_gmacs": curve.expected_gmacs}


def write_csv(path: PathLike, columns: Mapping[str, np.ndarray]) -> None:
    """Writes equal-length columns as CSV, atomically."""
    names = list(columns)
    data = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in names])
    with atomic_open(path, "w") as f:
        np.savetxt(f, data, delimiter=",", header=",".join(names), comments="", fmt="%.10g")
