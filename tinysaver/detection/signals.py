"""Which image-level signal should decide? Deferral signals against the oracle (detection).

The paper defers an image to the base when the mean score of the saver's boxes (at least 0.05) is
below a threshold, and calls it a first choice. This module draws, for each registered detection
confidence, the cascade's exact AP-vs-GFLOPs curve (one point per distinct exit set), next to

- the **oracle**: the images are deferred in the order of how much the base's detections beat the
  saver's on that image, measured with the ground truth (an upper reference no signal can see);
- **random**: a seeded random deferral order (what a signal with no information does).

and scores each signal by the area between its curve and the oracle's (smaller is better).

Per-image quality (the oracle's measure), documented choices:

- ``ap`` (default): COCO AP of the image alone (IoU 0.50:0.95, 101 recall points), averaged over
  the classes present in it; an image with no object scores 1 without a box of at least
  ``min_score``, else 0. Boxes of absent classes do not lower it (COCO AP is per class).
- ``f1``: matched-TP F1 at IoU 0.5 of the boxes scoring at least ``min_score`` (the boxes the
  confidences see), with COCO's matching (greedy by score, crowd regions ignored):
  ``2 TP / (2 TP + FP + FN)``, 1 for an image with no object and no box. False positives of
  classes absent from the image count.

``ap`` is the default because it gave the stronger reference (a higher curve) on the demo data:
on 100 and 500 Fashion-MNIST canvases its best mix reaches 58.5 / 55.1 AP against 55.7 / 54.5
for ``f1`` (and the base's 54.9 / 54.5); ``f1`` ignores localisation beyond IoU 0.5 and ranking.

Ties of the primary measure are broken by the other one, then by image order. Since COCO AP is not
a sum over images, deferring by per-image gain is a strong reference rather than the best
possible mix; a signal can beat it at some budgets.

Examples:
    >>> panel = signal_panel("instances_val.json", saver, base)     # doctest: +SKIP
    >>> panel["signals"]["mean_box_score"]["mean_gap_to_oracle"]    # doctest: +SKIP
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from ..confidence import CONFIDENCES, MIN_BOX_SCORE, build_confidence, detection_confidences
from ..errors import TinySaverError
from ..thresholds import threshold_to_json
from .coco import CocoScorer, CocoSweep, precision_recall
from .records import DetRecord, check_det_pair
from .sweep import exact_thresholds

PathLike = Union[str, os.PathLike]
ORACLE_MEASURES = ("f1", "ap")


def parse_signal(spec: str) -> Tuple[str, Dict[str, float]]:
    """``name`` or ``name:key=value,key=value`` → ``(name, options)`` (e.g. ``topk_mean_box_score:k=5``)."""
    name, _, rest = spec.partition(":")
    options: Dict[str, float] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise TinySaverError(f"signal {spec!r}: options are key=value, got {part!r}")
        try:
            options[key.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise TinySaverError(f"signal {spec!r}: {key} must be a number, got {value!r}") from None
    return name.strip(), options


def image_quality(sweep: CocoSweep, model: int, measure: str = "ap", min_score: float = MIN_BOX_SCORE) -> np.ndarray:
    """Per-image quality of record ``model``'s detections (module docstring), in record order.

    Args:
        sweep: The per-image COCO evaluation of the records.
        model: Index of the record in the sweep.
        measure: ``f1`` or ``ap``.
        min_score: Boxes scoring below it are ignored (``f1``) / make a no-object image imperfect
            (``ap``).

    Returns:
        ``[M]`` values in [0, 1].
    """
    if measure not in ORACLE_MEASURES:
        raise TinySaverError(f"unknown oracle measure {measure!r} (known: {', '.join(ORACLE_MEASURES)})")
    n_img = sweep.npig_image.shape[1]
    gt = sweep.npig_image.sum(axis=0)  # kept objects per image (sorted image order)
    rec = sweep.records[model]
    confident = np.bincount(rec.det_image[rec.det_scores >= min_score], minlength=len(rec.image_ids)) > 0
    confident = confident[np.argsort(sweep.sorted_pos)]  # to sorted image order
    if measure == "f1":
        tp, fp = np.zeros(n_img), np.zeros(n_img)
        for cat in sweep.cats:
            mine = (cat["model"] == model) & (cat["score"] >= min_score)
            img = cat["image"][mine]
            tp += np.bincount(img, weights=cat["tp"][0][0, mine], minlength=n_img)  # area "all", IoU 0.5
            fp += np.bincount(img, weights=cat["fp"][0][0, mine], minlength=n_img)
        denom = 2 * tp + fp + (gt - tp)
        quality = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    else:
        rec_thrs = np.asarray(sweep.params.recThrs)
        total, classes = np.zeros(n_img), np.zeros(n_img)
        for k, cat in enumerate(sweep.cats):
            mine = cat["model"] == model
            img = cat["image"][mine]
            tps, fps = cat["tp"][0][:, mine], cat["fp"][0][:, mine]
            for i in np.flatnonzero(sweep.npig_image[k] > 0):
                rows = img == i  # already in score order
                q, _ = precision_recall(tps[:, rows], fps[:, rows], int(sweep.npig_image[k, i]), rec_thrs)
                total[i] += q.mean()
                classes[i] += 1
        quality = np.where(classes > 0, total / np.maximum(classes, 1), np.where(confident, 0.0, 1.0))
    return quality[sweep.sorted_pos]  # back to record order


def oracle_confidence(sweep: CocoSweep, measure: str = "ap", min_score: float = MIN_BOX_SCORE) -> np.ndarray:
    """A "confidence" that defers the images where the base beats the saver most first (module
    docstring): distinct values in (0, 1], higher = the saver is better there, relative to the base."""
    other = "ap" if measure == "f1" else "f1"
    gain = image_quality(sweep, 1, measure, min_score) - image_quality(sweep, 0, measure, min_score)
    gain2 = image_quality(sweep, 1, other, min_score) - image_quality(sweep, 0, other, min_score)
    m = len(gain)
    order = np.lexsort((np.arange(m), gain2, gain))  # smallest gain first: those exit first
    conf = np.empty(m)
    conf[order] = np.arange(m, 0, -1) / m
    return conf


def signal_curve(sweep: CocoSweep, conf: np.ndarray, costs: Tuple[np.ndarray, np.ndarray],
               max_points: Optional[int] = None) -> List[Dict[str, float]]:
    """The cascade's COCO stats and average GFLOPs at every distinct exit set of ``conf`` (at most
    ``max_points`` of them, evenly spread over the sorted thresholds, both ends kept)."""
    thresholds = exact_thresholds(conf)
    if max_points is not None and len(thresholds) > max_points:
        thresholds = thresholds[np.unique(np.round(np.linspace(0, len(thresholds) - 1, max_points)).astype(int))]
    saver_cost, base_cost = costs
    points = []
    for t in thresholds:
        exits = conf >= t
        stats = sweep.stats(np.where(exits, 0, 1))
        points.append({"threshold": threshold_to_json(t), "exit_ratio": float(exits.mean()),
                       "gflops": float(np.mean(saver_cost + np.where(exits, 0.0, base_cost))),
                       "AP": stats["AP"], "AP50": stats["AP50"]})
    return points


def area_between(curve: Sequence[Dict[str, float]], reference: Sequence[Dict[str, float]]) -> Tuple[float, float]:
    """Area between ``reference``'s AP-vs-GFLOPs curve and ``curve``'s (reference minus curve, AP
    points x GFLOPs, each curve linear between its points) over their common GFLOPs range, and
    the same divided by the range: the mean AP gap in points."""
    g1, a1 = ap_vs_gflops(curve)
    g2, a2 = ap_vs_gflops(reference)
    lo, hi = max(g1[0], g2[0]), min(g1[-1], g2[-1])
    if hi <= lo:
        return 0.0, 0.0
    grid = np.unique(np.concatenate([g1, g2, [lo, hi]]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    gap = np.interp(grid, g2, a2) - np.interp(grid, g1, a1)
    area = float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(grid)))
    return area, area / (hi - lo)


def ap_vs_gflops(curve: Sequence[Dict[str, float]]) -> Tuple[np.ndarray, np.ndarray]:
    """A curve's points as ``(gflops, AP in points)``, by increasing cost, one point per cost."""
    g = np.array([p["gflops"] for p in curve])
    ap = np.array([p["AP"] for p in curve]) * 100
    order = np.argsort(g, kind="stable")
    g, ap = g[order], ap[order]
    # equal costs (several exit sets of one cost): keep the last AP of each cost, interp needs x increasing
    keep = np.append(np.diff(g) > 0, True)
    return g[keep], ap[keep]


def signal_panel(ann_file: PathLike, saver: DetRecord, base: DetRecord, signals: Optional[Sequence[str]] = None,
                 oracle: str = "ap", min_score: float = MIN_BOX_SCORE, max_points: Optional[int] = 201,
                 seed: int = 0, progress: bool = True) -> Dict[str, Any]:
    """AP-vs-GFLOPs curves of deferral signals, the oracle and random, with each signal's area to
    the oracle.

    Args:
        ann_file: COCO annotations of the split.
        saver, base: Detection records of the two models (same images).
        signals: Signal specs (:func:`parse_signal`); default every registered detection confidence.
        oracle: Per-image quality of the oracle: ``f1`` or ``ap`` (module docstring).
        min_score: Passed to every signal (unless its spec sets it) and to the oracle's measure.
        max_points: Most points per curve (None: every distinct exit set).
        seed: Of the random order.

    Returns:
        ``{"signals": {spec: {"points", "area_to_oracle", "mean_gap_to_oracle"}}, "oracle",
        "random", "best", ...}`` (AP in [0, 1], areas in AP points x GFLOPs).
    """
    check_det_pair(saver, base)
    specs = list(signals) if signals else detection_confidences()
    sweep = CocoScorer(ann_file, saver.max_dets or base.max_dets or (100, 300, 1000)).sweep([saver, base])
    costs = (saver.cost_per_image(), base.cost_per_image())
    scores = saver.scores_per_image()
    curves: Dict[str, List[Dict[str, float]]] = {}
    oracle_conf = oracle_confidence(sweep, oracle, min_score)
    rng = np.random.default_rng(seed)
    references = {"oracle": oracle_conf, "random": rng.permutation(len(oracle_conf)) / len(oracle_conf)}
    jobs = [(name, conf) for name, conf in references.items()]
    for spec in specs:
        name, options = parse_signal(spec)
        if getattr(CONFIDENCES.get(name), "kind", "") != "detection":
            raise TinySaverError(f"signal {spec!r} is not a detection confidence "
                                 f"(known: {', '.join(detection_confidences())})")
        options.setdefault("min_score", min_score)
        try:
            fn = build_confidence(name, **options)
        except (TypeError, ValueError) as exc:
            raise TinySaverError(f"signal {spec!r}: {exc}") from None
        jobs.append((spec, fn(scores)))
    for name, conf in tqdm(jobs, desc="det-signals", unit="curve", disable=not progress):
        curves[name] = signal_curve(sweep, np.asarray(conf, dtype=np.float64), costs, max_points)
    result: Dict[str, Any] = {"oracle": {"measure": oracle, "points": curves["oracle"]},
                              "random": {"seed": seed, "points": curves["random"]}, "signals": {},
                              "saver": saver.name, "base": base.name, "min_score": min_score,
                              "images": int(len(oracle_conf)), "max_dets": list(sweep.scorer.max_dets),
                              "cost": "per image" if saver.image_gflops is not None else "per model"}
    for name in ["random", *specs]:
        area, gap = area_between(curves[name], curves["oracle"])
        entry = {"points": curves[name], "area_to_oracle": area, "mean_gap_to_oracle": gap}
        if name == "random":
            result["random"].update(entry)
        else:
            result["signals"][name] = entry
    result["best"] = min(result["signals"], key=lambda s: result["signals"][s]["area_to_oracle"])
    return result


__all__ = ["signal_panel", "image_quality", "oracle_confidence", "signal_curve", "area_between", "ap_vs_gflops",
           "parse_signal", "ORACLE_MEASURES"]
