"""What a pipeline run prints at the end (:func:`summary_console`), read back from its JSON summary."""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Any, Mapping, Optional

from ..analysis import OperatingPoint, SaverScore, Tradeoff
from ..thresholds import threshold_from_json
from .text import CONSOLE_WIDTH, aligned
from .tradeoff import selection_console, tradeoff_console


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
        parts += aligned(table, [True, False] + [True] * 7, indent="  ") + [""]
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
    lines += aligned(table, [False, False, True, True, True, True, True], indent="  ")
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
