"""Tables (markdown) and plots (PNG) of chain plans, calibrations and single chains.

matplotlib is imported only when a plot is drawn (via :func:`tinysaver.report.plots.pyplot`).
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional, Union

from ..analysis import Calibration, ChainPoint, Plan
from . import plots
from .text import GMACS, CostUnit

PathLike = Union[str, os.PathLike]


def _threshold(t: float) -> str:
    return "inf" if math.isinf(t) else f"{t:.6g}"


def _chain(p: ChainPoint) -> str:
    return " → ".join(p.stages)


def _thresholds(p: ChainPoint) -> str:
    return ", ".join(_threshold(t) for t in p.thresholds) or "–"


def _answered(p: ChainPoint) -> str:
    return " / ".join(f"{a:.1%}" for a in p.answered)


def _interval(ci: Optional[Dict[str, object]], key: str, fmt: str) -> str:
    if not ci:
        return ""
    lo, hi = ci[key]
    return f" [{format(lo, fmt)}, {format(hi, fmt)}]"


def plan_markdown(plan: Plan, unit: CostUnit = GMACS) -> str:
    """The plan as markdown: per drop the cheapest chain and the best pair, then the oracle (costs
    in ``unit``: GMACs and the saving in %, or measured ms and the speed-up over the base).

    In the calibrated mode every number is what the chosen thresholds *measured* on the reported
    split (with bootstrap intervals when computed); "✗ missed" marks a drop the measured accuracy
    did not keep.
    """
    calibrated = plan.selection == "calibrated"
    lines = [f"Chain plan for base {plan.base} ({plan.base_gmacs:.4g} {unit.name}, acc. {plan.base_acc:.2%}), "
             f"pool: {', '.join(plan.pool) or 'none'}; up to {plan.max_stages} stages; search: {plan.mode} "
             f"({plan.search['chains']} chains); thresholds chosen on the "
             f"{'calibration split, measured on the reported split' if calibrated else 'reported split'}",
             ""]
    head = ["drop ≤", "chain", "thresholds", "answered", "acc.", unit.column, "best pair", f"pair {unit.name}",
            "headroom captured"]
    if calibrated:
        head[5:5] = ["calib. acc.", "target"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    headroom = plan.headroom_captured
    for drop, p in plan.required.items():
        pair = plan.best_pair.get(drop)
        pair_cells = (["-", "-"] if pair is None
                      else [_chain(pair), f"{pair.gmacs:.4g} ({unit.versus(pair.gmacs, plan.base_gmacs)})"])
        if p is None:
            cells = [f"{drop:g} pt", "none reaches it", "-", "-", "-", "-"] + (["-", "-"] if calibrated else [])
        else:
            cells = [f"{drop:g} pt", _chain(p), _thresholds(p), _answered(p),
                     f"{p.acc:.2%}" + _interval(p.ci, "acc", ".2%"),
                     f"{p.gmacs:.4g} ({unit.versus(p.gmacs, plan.base_gmacs)})" + _interval(p.ci, "gmacs", ".4g")]
            if calibrated:
                cells[5:5] = [f"{p.calib_acc:.2%}", "kept" if p.meets_target else "✗ missed"]
        h = headroom.get(drop)
        cells += pair_cells + ["-" if h is None else f"{h:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    certified = plan.extra.get("certified")
    if certified:
        first = next(iter(certified.values()))
        lines += ["", f"Certified (Learn then Test, {first['method']}, δ = {first['delta']:g}: for each drop, with "
                      f"probability ≥ {1 - first['delta']:g} over the calibration draw, the expected drop on new "
                      "data from the calibration split's distribution is within the target (a finite split such as "
                      "the reported one adds its own sampling noise); chosen on the calibration split, measured on "
                      "the reported split):", ""]
        lines += _certified_rows(certified, plan.base_gmacs, unit)
    expected = plan.extra.get("certified_expected")
    if expected:
        lines += ["", "Certified on average (conformal risk control on the loss 1[base right and the answering stage "
                      "wrong]: for each drop, averaged over calibration draws, the drop on new data from the "
                      "calibration split's distribution is within the target; one draw may land above it; chosen on "
                      "the calibration split, measured on the reported split):", ""]
        lines += _certified_rows(expected, plan.base_gmacs, unit)
    if certified or expected:
        gains = [d for d in plan.required if d < 0]
        if gains:
            lines += ["", f"Not certified: {', '.join(f'{d:g} pt' for d in gains)} (a negative drop asks for a gain "
                          "over the base; " + ("the certifications here bound" if expected else
                                               "Learn then Test here bounds") + " a drop >= 0)."]
    o = plan.oracle
    lines += ["", f"Oracle (each sample answered by the cheapest model that gets it right): acc. {o.acc:.2%}, "
                  f"{o.gmacs:.4g} {unit.name} ({unit.versus(o.gmacs, plan.base_gmacs)}). Pareto front: {len(plan.front)} "
                  f"configurations (JSON)."]
    above = [d for d, h in headroom.items() if h is not None and h > 1]
    if above:
        lines.append(f"Headroom above 100 % ({', '.join(f'{d:g} pt' for d in above)}): the chain is cheaper than "
                     "the oracle: within the allowed drop it answers some samples wrong with a cheap model, where "
                     "the oracle pays for a right answer or, when no model is right, for the base.")
    if plan.skipped:
        lines.append("Skipped: " + "; ".join(f"{s['name']} ({s['why']})" for s in plan.skipped) + ".")
    return "\n".join(lines) + "\n"


def _certified_rows(certified: Dict[str, Dict[str, object]], base_gmacs: float, unit: CostUnit = GMACS) -> list:
    """The table of certified choices (JSON form, by drop) measured on the reported split."""
    lines = [f"| drop ≤ | chain | thresholds | acc. | calib. acc. | target | {unit.column} |",
             "|---|---|---|---|---|---|---|"]
    for drop, c in certified.items():
        alone = len(c["stages"]) == 1
        chain = " → ".join(c["stages"]) + (" (nothing could be certified: the base alone)" if alone else "")
        t = c.get("thresholds", [c.get("threshold")])
        t_text = ", ".join(_threshold(float(x)) for x in t) if not alone else "–"
        lines.append(f"| {float(drop):g} pt | {chain} | {t_text} | {c['acc']:.2%} | {c['calib_acc']:.2%} | "
                     f"{'kept' if c['meets_target'] else '✗ missed'} | "
                     f"{c['gmacs']:.4g} ({unit.versus(c['gmacs'], base_gmacs)}) |")
    return lines


def chain_markdown(point: ChainPoint, unit: CostUnit = GMACS, base_cost: Optional[float] = None) -> str:
    """One chain at given thresholds as a one-row markdown table (its expected cost in ``unit``;
    with ``base_cost``, the base alone's cost in that unit, also the speed-up over the base)."""
    head = ["chain", "thresholds", "answered", "acc.", unit.name]
    row = [_chain(point), _thresholds(point), _answered(point), f"{point.acc:.2%}", f"{point.gmacs:.4g}"]
    if base_cost is not None:
        head.append("speed-up vs base")
        row.append(f"{base_cost / point.gmacs:.2f}×")
    return ("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n| " + " | ".join(row) + " |\n")


def calibration_markdown(cal: Calibration, unit: CostUnit = GMACS) -> str:
    """A calibrated threshold with its guarantee, as a short markdown block."""
    t = ", ".join(_threshold(x) for x in cal.thresholds)
    expected = cal.guarantee == "expected"
    if all(math.isinf(x) for x in cal.thresholds):
        t += (" — nothing exits: no threshold could be certified for this drop with these samples "
              + ("(a larger drop or more calibration samples may allow one; a drop of 0 never does here)" if expected
                 else "(a larger drop, more calibration samples or a bigger δ may allow one)"))
    if expected:
        method = "conformal risk control"
        promise = (f"Averaged over the draw of the calibration set, the accuracy drop vs the base on new data from the "
                   f"same distribution is ≤ {cal.drop:g} points (one draw may land above it; a finite test set adds "
                   "its own sampling noise to what it measures). Loss: 1[base right and the answering stage wrong].")
    else:
        method = cal.method
        promise = (f"With probability ≥ {1 - cal.delta:g} over the calibration draw, the expected accuracy drop vs "
                   f"the base on new data from the same distribution is ≤ {cal.drop:g} points (a finite test set "
                   "adds its own sampling noise to what it measures).")
    return (f"Calibrated {'threshold' if len(cal.thresholds) == 1 else 'thresholds'} for {' → '.join(cal.stages)}: "
            f"**{t}** ({method}, {cal.samples} calibration samples)\n\n{promise}\n\n"
            f"| calib. exit ratio | calib. acc. | calib. base acc. | calib. {unit.name} |\n|---|---|---|---|\n"
            f"| {cal.calib_exit_ratio:.1%} | {cal.calib_acc:.2%} | {cal.calib_base_acc:.2%} | {cal.calib_gmacs:.4g} |\n")


def plot_plan(plan: Plan, path: PathLike, title: Optional[str] = None, unit: CostUnit = GMACS) -> None:
    """Accuracy vs expected GMACs (or ms, ``unit``): the chain front, the best pairs' front, every
    model, the oracle and the cheapest chain per drop. Every label is in the legend (outside the
    axes), so none can overlap a point or another label."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 4.8), dpi=120)
    # in the order of the split the front was found on: measured costs of neighbours may swap
    front = sorted(plan.front, key=lambda p: p.gmacs if p.calib_gmacs is None else p.calib_gmacs)
    searched = (f"front: tables, plus the descent's answer per drop (chains of ≤ {plan.max_stages} stages)"
                if plan.mode.endswith("+descent") else f"chains of ≤ {plan.max_stages} stages (front)")
    ax.plot([p.gmacs for p in front], [p.acc * 100 for p in front], "-", lw=1.6, color="tab:blue", label=searched)
    pairs = plan.extra.get("pair_front")
    if pairs:
        ax.plot(pairs["gmacs"], [a * 100 for a in pairs["acc"]], "--", lw=1.2, color="tab:orange",
                label="best pairs (2-stage front)")
    markers = "os^vD<>ph*"
    for i, model in enumerate(plan.models):
        is_base = model["name"] == plan.base
        ax.plot([model["gmacs"]], [model["acc"] * 100], "s" if is_base else markers[i % len(markers)], ms=7,
                color="k" if is_base else None, mfc="none" if not is_base else "k",
                label=f"{'base' if is_base else 'model'} {model['name']}")
    ax.plot([plan.oracle.gmacs], [plan.oracle.acc * 100], "*", ms=13, color="gold", mec="k",
            label="oracle (cheapest right model)")
    for drop, p in plan.required.items():
        if p is not None:
            ax.plot([p.gmacs], [p.acc * 100], "x", ms=8, mew=2,
                    label=f"≤ {drop:g} pt: {_chain(p)}")
    gmacs = [m["gmacs"] for m in plan.models if m["gmacs"] > 0] + [p.gmacs for p in front if p.gmacs > 0]
    if gmacs and max(gmacs) / min(gmacs) > 20:
        ax.set_xscale("log")
    log = " (log scale)" if ax.get_xscale() == "log" else ""
    ax.set_xlabel(unit.axis("expected cost", log) if unit.is_time else "expected GMACs per sample" + log)
    ax.set_ylabel("accuracy (%)")
    how = "calibrated, measured on the reported split" if plan.selection == "calibrated" else "same split"
    ax.set_title(title or f"Chains in front of {plan.base} ({plan.mode}, {how})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    plots.save_figure(fig, path)
