"""Tables (markdown, in the paper's layout) and plots (PNG) of analysis results.

matplotlib is imported only when a plot is drawn, with the non-interactive Agg backend.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .analysis import ExitCurve, SaverScore, Tradeoff, match_point
from .io import atomic_open

PathLike = Union[str, os.PathLike]
_PLOT_POINTS = 2000  # a curve of 500k thresholds is thinned to this many points for drawing


def _pct(value: float, reference: float) -> str:
    return f"{(value - reference) / reference * 100:+.1f}%" if reference else "n/a"


def _cell(point, base_gmacs: float) -> str:
    return "-" if point is None else f"{point.gmacs:.4g} ({_pct(point.gmacs, base_gmacs)})"


def tradeoff_markdown(rows: Iterable[Tradeoff]) -> str:
    """Markdown table with the columns of the paper's Tables 1 and 5 (GMACs instead of "GFLOPs",
    which the paper reports as multiply-adds)."""
    rows = list(rows)
    drops = list(rows[0].required) if rows else []
    head = (["Base", "GMACs", "Acc.", "Saver", "GMACs", "Acc."]
            + [f"GMACs (%) at drop ≤ {d:g} pt" for d in drops] + ["Max perf. GMACs", "Acc.", "ΔC", "Mode"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mp = r.max_performance
        cells = [r.base, f"{r.base_gmacs:.4g}", f"{r.base_acc:.2%}", r.saver, f"{r.saver_gmacs:.4g}",
                 f"{r.saver_acc:.2%}"]
        cells += [_cell(r.required[d], r.base_gmacs) for d in drops]
        cells += [_cell(mp, r.base_gmacs), f"{mp.acc:.2%} ({(mp.acc - r.base_acc) * 100:+.2f} pt)",
                  f"{r.delta_c:+.3f}", r.mode]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def selection_markdown(base_name: str, scores: Sequence[SaverScore]) -> str:
    """Ranking of candidate savers by ΔC, with a plain verdict per row."""
    lines = [f"Saver selection for base {base_name} (lower ΔC is better; ΔC < 0 compresses)", "",
             "| rank | saver | GMACs | C_S/C_B | acc. | r_match | threshold | ΔC | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(scores, 1):
        verdict = ("compresses" if s.compresses
                   else "does not compress this base")
        lines.append(f"| {i} | {s.saver} | {s.saver_gmacs:.4g} | {s.saver_gmacs / s.base_gmacs:.3f} | "
                     f"{s.saver_acc:.2%} | {s.r_match:.4f} | {s.threshold:.6g} | {s.delta_c:+.4f} | {verdict} |")
    return "\n".join(lines) + "\n"


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
    operating points of the table."""
    plt = _pyplot()
    idx = _thin(len(curve.n_exit))
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    ax.plot(curve.expected_gmacs[idx], curve.system_acc[idx] * 100, "-", lw=1.5,
            label=f"TinySaver {result.saver} → {result.base}")
    ax.plot([result.base_gmacs], [result.base_acc * 100], "s", ms=8, label=f"base {result.base}")
    ax.plot([result.saver_gmacs], [result.saver_acc * 100], "o", ms=8, label=f"saver {result.saver}")
    # Drops that land on the same point share one label ("≤1/0.5pt").
    labels: Dict[tuple, list] = {}
    for drop, p in result.required.items():
        if p is not None:
            labels.setdefault((p.gmacs, p.acc), []).append(f"{drop:g}")
    for (gmacs, acc), drops in labels.items():
        ax.plot([gmacs], [acc * 100], "x", color="k")
        ax.annotate(f"≤{'/'.join(drops)}pt", (gmacs, acc * 100), textcoords="offset points", xytext=(4, -10),
                    fontsize=7)
    ax.set_xlabel("expected GMACs per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or f"{result.base} with saver {result.saver} ({result.mode})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


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
    ax.set_xlabel("early exit ratio")
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
