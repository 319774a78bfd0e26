"""The detection threshold sweep (paper Table 4): which stage answers each image at given
thresholds, and the cascade's COCO AP and average GFLOPs over a grid of thresholds (or every
distinct exit set), from the records alone — no model runs again.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from ..confidence import CONFIDENCES, MIN_BOX_SCORE, build_confidence, detection_confidences
from ..errors import TinySaverError
from ..thresholds import threshold_to_json
from .coco import CocoScorer
from .records import DEFAULT_MAX_DETS, DetRecord, check_det_pair

PathLike = Union[str, os.PathLike]


def check_min_score(min_score: float, option: str = "--min-score") -> float:
    """A box-score floor in [0, 1] (scores are probabilities), else a clear error."""
    if not 0.0 <= float(min_score) <= 1.0:  # NaN fails too
        raise TinySaverError(f"{option} must be a box score in [0, 1], got {min_score}")
    return float(min_score)


def detection_confidence(name: str, min_score: float = MIN_BOX_SCORE, option: str = "--confidence"):
    """The registered *detection* confidence ``name`` (one value per image from its box scores);
    a classification confidence (it reads logits) or an unknown name is a clear error."""
    check_min_score(min_score)
    if getattr(CONFIDENCES.get(name), "kind", "") != "detection":
        raise TinySaverError(f"{option} {name!r} is not a detection confidence (known: "
                             f"{', '.join(detection_confidences())})")
    return build_confidence(name, min_score=min_score)


def chain_stages(records: Sequence[DetRecord], thresholds: Sequence[float], confidence: str = "mean_box_score",
                 min_score: float = MIN_BOX_SCORE) -> Tuple[np.ndarray, np.ndarray]:
    """Which stage answers each image at ``thresholds`` (the live routing rule, from the records).

    Returns:
        ``(stage [M], confidence [M])``: the first stage k whose image confidence is ``>=
        thresholds[k]`` (float64), else the last; and the answering stage's confidence.
    """
    if len(thresholds) != len(records) - 1:
        raise TinySaverError(f"{len(records)} stages need {len(records) - 1} thresholds, got {len(thresholds)}")
    for rec in records[1:]:
        check_det_pair(records[0], rec)
    fn = detection_confidence(confidence, min_score)
    conf = np.stack([fn(rec.scores_per_image()) for rec in records])  # [N, M]
    answers = conf >= np.asarray([*thresholds, -np.inf], dtype=np.float64)[:, None]
    stage = answers.argmax(axis=0)  # first stage that answers; the last always does
    return stage, conf[stage, np.arange(conf.shape[1])]


def exact_thresholds(conf: np.ndarray) -> np.ndarray:
    """Every distinct exit set of a confidence: each distinct value (images at or above it exit),
    then +inf (nothing exits). A sweep over these is exact: no threshold between them changes
    which images exit."""
    return np.append(np.unique(np.asarray(conf, dtype=np.float64)), np.inf)


def det_tradeoff(ann_file: PathLike, saver: DetRecord, base: DetRecord, thresholds: Union[Sequence[float], str],
                 confidence: str = "mean_box_score", min_score: float = MIN_BOX_SCORE, progress: bool = True,
                 max_dets: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """COCO AP and average GFLOPs of the cascade at each threshold, plus each model alone.

    Each model's detections are matched to the ground truth once (:class:`CocoSweep`); each threshold
    only re-accumulates, and thresholds that let the same images exit share one accumulation. The
    cost of a threshold is the mean over images of the saver's cost plus, on the images that do not
    exit, the base's (per image when the records carry ``image_gflops``).

    Args:
        thresholds: The grid, or ``"all"``: every distinct exit set (:func:`exact_thresholds`).
        max_dets: Defaults to the records' own (what ``tools/test.py`` evaluated with), else
            :data:`DEFAULT_MAX_DETS`.
    """
    check_det_pair(saver, base)
    max_dets = max_dets or saver.max_dets or base.max_dets or DEFAULT_MAX_DETS
    conf = detection_confidence(confidence, min_score)(saver.scores_per_image())
    if isinstance(thresholds, str):
        if thresholds != "all":
            raise TinySaverError(f"thresholds must be numbers or 'all', got {thresholds!r}")
        thresholds = exact_thresholds(conf)
    sweep = CocoScorer(ann_file, max_dets).sweep([saver, base])
    saver_cost, base_cost = saver.cost_per_image(), base.cost_per_image()
    cache: Dict[int, Dict[str, float]] = {}
    rows = []
    order = np.sort(conf)
    for t in tqdm(list(thresholds), desc="det-tradeoff", unit="threshold", disable=not progress):
        exits = conf >= t
        n_exit = int(len(order) - np.searchsorted(order, t, side="left"))
        if n_exit not in cache:  # the exit set is determined by its size
            cache[n_exit] = sweep.stats(np.where(exits, 0, 1))
        rows.append({"threshold": threshold_to_json(t), "exit_ratio": n_exit / len(conf),
                     "gflops": float(np.mean(saver_cost + np.where(exits, 0.0, base_cost))), **cache[n_exit]})
    every = np.ones(len(conf), np.int64)
    return {"saver": {"name": saver.name, "gflops": float(saver_cost.mean()), **sweep.stats(0 * every)},
            "base": {"name": base.name, "gflops": float(base_cost.mean()), **sweep.stats(every)},
            "confidence": confidence, "min_score": min_score, "max_dets": list(sweep.scorer.max_dets),
            "cost": "per image" if saver.image_gflops is not None or base.image_gflops is not None else "per model",
            "images": int(len(conf)), "rows": rows}
