"""Tables (markdown) and plots (PNG) of detection results: the threshold sweep of
:func:`tinysaver.detection.det_tradeoff` (paper Table 4) and the deferral-signal panel of
:func:`tinysaver.detection.signal_panel`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Union

import numpy as np

from ..detection.signals import ap_vs_gflops
from . import plots

PathLike = Union[str, os.PathLike]


def det_tradeoff_markdown(result: Dict[str, object]) -> str:
    """Table 4 layout: method, model, box AP, GFLOPs (2 FLOPs per multiply-add)."""
    s, b = result["saver"], result["base"]
    lines = ["| Method | Model | Box AP | AP50 | GFLOPs | exit ratio |", "|---|---|---|---|---|---|",
             f"| - | {s['name']} | {s['AP'] * 100:.1f} | {s['AP50'] * 100:.1f} | {s['gflops']:.2f} | - |",
             f"| - | {b['name']} | {b['AP'] * 100:.1f} | {b['AP50'] * 100:.1f} | {b['gflops']:.2f} | - |"]
    for row in result["rows"]:
        t = float(row["threshold"])
        lines.append(f"| TinySaver (t = {_threshold_text(t)}) | {s['name']} → {b['name']} | {row['AP'] * 100:.1f} | "
                     f"{row['AP50'] * 100:.1f} | {row['gflops']:.2f} | {row['exit_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def _threshold_text(t: float) -> str:
    """Two decimals for a grid value, more when needed to tell exact thresholds apart."""
    if np.isinf(t):
        return "inf"
    return f"{t:.2f}" if round(t, 2) == t else f"{t:.4g}"


def plot_det_tradeoff(result: Dict[str, object], path: PathLike) -> None:
    """Box AP vs GFLOPs: the cascade over the thresholds, both models as points."""
    plt = plots.pyplot()
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    ax.plot([r["gflops"] for r in rows], [r["AP"] * 100 for r in rows], "-", marker=".", ms=3,
            label=f"TinySaver {result['saver']['name']} → {result['base']['name']}")
    ax.plot([result["base"]["gflops"]], [result["base"]["AP"] * 100], "s", ms=8, label=f"base {result['base']['name']}")
    ax.plot([result["saver"]["gflops"]], [result["saver"]["AP"] * 100], "o", ms=8, label=f"saver {result['saver']['name']}")
    ax.set_xlabel("average GFLOPs per image (2 FLOPs per multiply-add)")
    ax.set_ylabel("COCO box AP (%)")
    ax.set_title(f"confidence: {result['confidence']} (min score {result['min_score']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    plots.save_figure(fig, path)


def signals_markdown(panel: Dict[str, Any]) -> str:
    """One row per signal: area and mean AP gap to the oracle, best AP and its cost."""
    lines = [f"Deferral signals, {panel['saver']} → {panel['base']}, {panel['images']} images; oracle: per-image "
             f"{panel['oracle']['measure']} (min score {panel['min_score']:g}). Smaller area = closer to the oracle.",
             "", "| signal | area to oracle (AP pts x GFLOPs) | mean AP gap (pts) | best AP | at GFLOPs |",
             "|---|---|---|---|---|"]
    rows = [(name, e) for name, e in sorted(panel["signals"].items(), key=lambda x: x[1]["area_to_oracle"])]
    rows.append(("random", panel["random"]))
    for name, entry in rows:
        best = max(entry["points"], key=lambda p: (p["AP"], -p["gflops"]))
        mark = " (best)" if name == panel["best"] else ""
        lines.append(f"| {name}{mark} | {entry['area_to_oracle']:.3f} | {entry['mean_gap_to_oracle']:.2f} | "
                     f"{best['AP'] * 100:.1f} | {best['gflops']:.2f} |")
    best = max(panel["oracle"]["points"], key=lambda p: (p["AP"], -p["gflops"]))
    lines.append(f"| oracle | 0 | 0 | {best['AP'] * 100:.1f} | {best['gflops']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_signals(panel: Dict[str, Any], path: PathLike) -> None:
    """Every signal's AP-vs-GFLOPs curve, the oracle and random on one plot."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    g, ap = ap_vs_gflops(panel["oracle"]["points"])
    ax.plot(g, ap, "k--", lw=2, label=f"oracle (per-image {panel['oracle']['measure']})")
    g, ap = ap_vs_gflops(panel["random"]["points"])
    ax.plot(g, ap, ":", color="0.5", lw=1.5, label=f"random (gap {panel['random']['mean_gap_to_oracle']:.2f} AP)")
    for name, entry in sorted(panel["signals"].items(), key=lambda x: x[1]["area_to_oracle"]):
        g, ap = ap_vs_gflops(entry["points"])
        width = 2.2 if name == panel["best"] else 1.2
        ax.plot(g, ap, "-", lw=width, label=f"{name} (gap {entry['mean_gap_to_oracle']:.2f} AP)")
    ax.set_xlabel("average GFLOPs per image (2 FLOPs per multiply-add)")
    ax.set_ylabel("COCO box AP (%)")
    ax.set_title(f"Deferral signals: {panel['saver']} → {panel['base']} ({panel['images']} images); "
                 "gap = mean AP below the oracle", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.subplots_adjust(right=0.62)
    plots.save_figure(fig, path)
