"""Detection records and the detection threshold sweep (paper section 4.5, Table 4).

A detection record holds one model's detections on every image of a split, once; the sweep then
builds the cascade's detections for any threshold (saver's where its image-level confidence is
>= t, base's elsewhere) and scores them with COCO box AP — no model runs again.

Record format (``.npz``): ``image_ids`` int [M] (COCO image ids, in dataset order), ``det_image``
int [K] (row into image_ids), ``det_boxes`` float [K, 4] (xyxy, original image coordinates),
``det_scores`` float [K], ``det_labels`` int [K] (class index in the dataset's order), ``cat_ids``
int [C] (COCO category id of each class index), ``name`` str, ``gflops`` float (per image, 2 FLOPs
per multiply-add), ``kind`` = "detection".
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .confidence import build_confidence
from .errors import RecordError, TinySaverError
from .io import atomic_open
from .records import read_npz

PathLike = Union[str, os.PathLike]
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_ARRAYS = ("image_ids", "det_image", "det_boxes", "det_scores", "det_labels", "cat_ids")


@dataclass
class DetRecord:
    """One detector's detections on one split."""

    name: str
    gflops: float
    image_ids: np.ndarray
    det_image: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_labels: np.ndarray
    cat_ids: np.ndarray
    path: Optional[str] = None

    def __post_init__(self) -> None:
        fail = lambda p: RecordError(self.path, p)  # noqa: E731
        k = len(self.det_scores)
        if self.det_boxes.shape != (k, 4) or len(self.det_image) != k or len(self.det_labels) != k:
            raise fail(f"detection arrays disagree: boxes {self.det_boxes.shape}, image {len(self.det_image)}, "
                       f"scores {k}, labels {len(self.det_labels)}")
        if len(self.image_ids) == 0:
            raise fail("record is empty (0 images)")
        if k and (self.det_image.min() < 0 or self.det_image.max() >= len(self.image_ids)):
            raise fail("det_image points outside image_ids")
        if k and not (np.isfinite(self.det_scores).all() and np.isfinite(self.det_boxes).all()):
            raise fail("non-finite (NaN/inf) scores or boxes")
        if k and (self.det_labels.min() < 0 or self.det_labels.max() >= len(self.cat_ids)):
            raise fail(f"det_labels outside 0..{len(self.cat_ids) - 1} ({len(self.cat_ids)} classes)")

    @classmethod
    def from_lists(cls, name: str, gflops: float, image_ids: Sequence[int], boxes: Sequence[np.ndarray],
                   scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], cat_ids: Sequence[int]) -> "DetRecord":
        """From per-image arrays (``boxes[i]`` is ``[K_i, 4]``)."""
        counts = [len(s) for s in scores]
        return cls(name=name, gflops=float(gflops), image_ids=np.asarray(image_ids, dtype=np.int64),
                   det_image=np.repeat(np.arange(len(counts)), counts).astype(np.int64),
                   det_boxes=np.concatenate([np.reshape(b, (-1, 4)) for b in boxes] or [np.zeros((0, 4))]).astype(np.float32),
                   det_scores=np.concatenate(list(scores) or [np.zeros(0)]).astype(np.float32),
                   det_labels=np.concatenate(list(labels) or [np.zeros(0)]).astype(np.int64),
                   cat_ids=np.asarray(cat_ids, dtype=np.int64))

    def scores_per_image(self) -> List[np.ndarray]:
        order = np.argsort(self.det_image, kind="stable")
        bounds = np.searchsorted(self.det_image[order], np.arange(len(self.image_ids) + 1))
        return [self.det_scores[order[bounds[i]:bounds[i + 1]]] for i in range(len(self.image_ids))]


def save_det_record(path: PathLike, rec: DetRecord) -> Path:
    path = Path(path)
    with atomic_open(path, "wb") as f:
        np.savez(f, name=np.str_(rec.name), gflops=np.float64(rec.gflops), kind=np.str_("detection"),
                 **{k: getattr(rec, k) for k in _ARRAYS})
    return path


def load_det_record(path: PathLike) -> DetRecord:
    data = read_npz(path, (*_ARRAYS, "name", "gflops"), kind="detection record")
    return DetRecord(name=str(data["name"]), gflops=float(data["gflops"]), path=str(path),
                     **{k: data[k] for k in _ARRAYS})


def check_det_pair(saver: DetRecord, base: DetRecord) -> None:
    if not np.array_equal(saver.image_ids, base.image_ids):
        raise RecordError(saver.path, f"image ids differ from the base record {base.path}: record both on the same split")
    if not np.array_equal(saver.cat_ids, base.cat_ids):
        raise RecordError(saver.path, f"class → category mapping differs from the base record {base.path}")


def cascade_detections(saver: DetRecord, base: DetRecord, exits: np.ndarray) -> Dict[str, np.ndarray]:
    """Detections of the cascade: the saver's on exited images, the base's on the others."""
    keep_s = exits[saver.det_image]
    keep_b = ~exits[base.det_image]
    return {"image": np.concatenate([saver.det_image[keep_s], base.det_image[keep_b]]),
            "boxes": np.concatenate([saver.det_boxes[keep_s], base.det_boxes[keep_b]]),
            "scores": np.concatenate([saver.det_scores[keep_s], base.det_scores[keep_b]]),
            "labels": np.concatenate([saver.det_labels[keep_s], base.det_labels[keep_b]])}


class CocoScorer:
    """COCO box AP of detections against one annotation file (pycocotools), ground truth loaded once."""

    def __init__(self, ann_file: PathLike) -> None:
        from pycocotools.coco import COCO

        if not Path(ann_file).is_file():
            raise TinySaverError(f"{ann_file}: annotation file not found")
        with contextlib.redirect_stdout(io.StringIO()):
            self.gt = COCO(str(ann_file))

    def stats(self, dets: Dict[str, np.ndarray], image_ids: np.ndarray, cat_ids: np.ndarray) -> Dict[str, float]:
        """The 12 COCO stats (AP in [0, 1]) of ``dets`` over ``image_ids``."""
        from pycocotools.cocoeval import COCOeval

        boxes = dets["boxes"].astype(np.float64)
        rows = np.column_stack([image_ids[dets["image"]], boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0],
                                boxes[:, 3] - boxes[:, 1], dets["scores"], cat_ids[dets["labels"]]])
        with contextlib.redirect_stdout(io.StringIO()):
            dt = self.gt.loadRes(rows) if len(rows) else None
            if dt is None:
                return {k: 0.0 for k in COCO_STATS}
            ev = COCOeval(self.gt, dt, "bbox")
            ev.params.imgIds = [int(i) for i in image_ids]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {k: float(v) for k, v in zip(COCO_STATS, ev.stats)}


def det_tradeoff(ann_file: PathLike, saver: DetRecord, base: DetRecord, thresholds: Sequence[float],
                 confidence: str = "mean_box_score", min_score: float = 0.05, progress: bool = True) -> Dict[str, object]:
    """COCO AP and average GFLOPs of the cascade at each threshold, plus each model alone.

    Thresholds that let the same images exit share one evaluation.
    """
    from tqdm import tqdm

    check_det_pair(saver, base)
    conf = build_confidence(confidence, min_score=min_score)(saver.scores_per_image())
    scorer = CocoScorer(ann_file)
    cache: Dict[int, Dict[str, float]] = {}
    rows = []
    order = np.sort(conf)
    for t in tqdm(list(thresholds), desc="det-tradeoff", unit="threshold", disable=not progress):
        exits = conf >= t
        n_exit = int(len(order) - np.searchsorted(order, t, side="left"))
        if n_exit not in cache:  # the exit set is determined by its size
            cache[n_exit] = scorer.stats(cascade_detections(saver, base, exits), saver.image_ids, saver.cat_ids)
        r = n_exit / len(conf)
        rows.append({"threshold": float(t), "exit_ratio": r, "gflops": saver.gflops + (1 - r) * base.gflops,
                     **cache[n_exit]})
    alone = lambda rec: scorer.stats(cascade_detections(rec, rec, np.ones(len(conf), bool)), rec.image_ids, rec.cat_ids)  # noqa: E731
    return {"saver": {"name": saver.name, "gflops": saver.gflops, **alone(saver)},
            "base": {"name": base.name, "gflops": base.gflops, **alone(base)},
            "confidence": confidence, "min_score": min_score, "images": int(len(conf)), "rows": rows}


def det_tradeoff_markdown(result: Dict[str, object]) -> str:
    """Table 4 layout: method, model, box AP, GFLOPs (2 FLOPs per multiply-add)."""
    s, b = result["saver"], result["base"]
    lines = ["| Method | Model | Box AP | AP50 | GFLOPs | exit ratio |", "|---|---|---|---|---|---|",
             f"| - | {s['name']} | {s['AP'] * 100:.1f} | {s['AP50'] * 100:.1f} | {s['gflops']:.2f} | - |",
             f"| - | {b['name']} | {b['AP'] * 100:.1f} | {b['AP50'] * 100:.1f} | {b['gflops']:.2f} | - |"]
    for row in result["rows"]:
        lines.append(f"| TinySaver (t = {row['threshold']:.2f}) | {s['name']} → {b['name']} | {row['AP'] * 100:.1f} | "
                     f"{row['AP50'] * 100:.1f} | {row['gflops']:.2f} | {row['exit_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_det_tradeoff(result: Dict[str, object], path: PathLike) -> None:
    """Box AP vs GFLOPs: the cascade over the thresholds, both models as points."""
    from .report import _pyplot, _save

    plt = _pyplot()
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
    _save(fig, path)
