"""Detection records and the detection threshold sweep (paper section 4.5, Table 4).

A detection record holds one model's detections on every image of a split, once; the sweep then
builds the cascade's detections for any threshold (saver's where its image-level confidence is
>= t, base's elsewhere) and scores them with COCO box AP — no model runs again.

Record format (``.npz``): ``image_ids`` int [M] (COCO image ids, in dataset order), ``det_image``
int [K] (row into image_ids), ``det_boxes`` float [K, 4] (xyxy, original image coordinates),
``det_scores`` float [K], ``det_labels`` int [K] (class index in the dataset's order), ``cat_ids``
int [C] (COCO category id of each class index), ``name`` str, ``gflops`` float (per image, 2 FLOPs
per multiply-add), ``kind`` = "detection", optional ``max_dets`` int [3] (the COCO ``maxDets`` of the
evaluation that produced it).

COCO ``maxDets``: pycocotools' default is (1, 10, 100); mmdet's ``CocoMetric`` uses (100, 300, 1000)
(its ``proposal_nums``), and AP is computed at the last value. For the same detections,
``tools/test.py`` and ``det-tradeoff`` must agree, so there is one setting, :data:`DEFAULT_MAX_DETS`,
which ``tools/test.py`` gives the ``CocoMetric`` and stores in the records it dumps, and which
``det-tradeoff`` reads back from them.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .confidence import MIN_BOX_SCORE, build_confidence
from .errors import RecordError, TinySaverError
from .io import atomic_open
from .records import read_npz

PathLike = Union[str, os.PathLike]
#: mmdet CocoMetric's default ``proposal_nums``: the maxDets of every COCO evaluation here
DEFAULT_MAX_DETS = (100, 300, 1000)
_ARRAYS = ("image_ids", "det_image", "det_boxes", "det_scores", "det_labels", "cat_ids")


@dataclass
class Detections:
    """One image's detections in original image coordinates (what every detection stage returns).

    Attributes:
        bboxes: ``[K, 4]`` xyxy float32.
        scores: ``[K]`` float32.
        labels: ``[K]`` int64, class index in the dataset's order.
    """

    bboxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


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
    max_dets: Optional[Tuple[int, int, int]] = None

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
        if self.max_dets is not None:
            self.max_dets = check_max_dets(self.max_dets, self.path)

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


def check_max_dets(max_dets: Sequence[int], where: Optional[str] = None) -> Tuple[int, int, int]:
    """Three increasing positive integers (COCO's maxDets), else a clear error."""
    values = tuple(int(v) for v in max_dets)
    if len(values) != 3 or values[0] < 1 or list(values) != sorted(set(values)):
        problem = f"max_dets must be three increasing positive integers, got {tuple(max_dets)}"
        raise RecordError(where, problem) if where else TinySaverError(problem)
    return values  # type: ignore[return-value]


def coco_stat_names(max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> Tuple[str, ...]:
    """Names of COCOeval's 12 stats (AP at the largest maxDets; AR at each)."""
    a, b, c = max_dets
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", f"AR@{a}", f"AR@{b}", f"AR@{c}",
            f"ARs@{c}", f"ARm@{c}", f"ARl@{c}")


def save_det_record(path: PathLike, rec: DetRecord) -> Path:
    path = Path(path)
    extra = {} if rec.max_dets is None else {"max_dets": np.asarray(rec.max_dets, dtype=np.int64)}
    with atomic_open(path, "wb") as f:
        np.savez(f, name=np.str_(rec.name), gflops=np.float64(rec.gflops), kind=np.str_("detection"),
                 **{k: getattr(rec, k) for k in _ARRAYS}, **extra)
    return path


def load_det_record(path: PathLike) -> DetRecord:
    data = read_npz(path, (*_ARRAYS, "name", "gflops"), kind="detection record")
    max_dets = tuple(data["max_dets"].tolist()) if "max_dets" in data else None
    return DetRecord(name=str(data["name"]), gflops=float(data["gflops"]), path=str(path), max_dets=max_dets,
                     **{k: data[k] for k in _ARRAYS})


def check_det_pair(saver: DetRecord, base: DetRecord) -> None:
    if not np.array_equal(saver.image_ids, base.image_ids):
        raise RecordError(saver.path, f"image ids differ from the base record {base.path}: record both on the same split")
    if not np.array_equal(saver.cat_ids, base.cat_ids):
        raise RecordError(saver.path, f"class → category mapping differs from the base record {base.path}")
    if saver.max_dets is not None and base.max_dets is not None and saver.max_dets != base.max_dets:
        raise RecordError(saver.path, f"evaluated with maxDets {saver.max_dets} but the base record {base.path} "
                                      f"with {base.max_dets}")


def cascade_detections(saver: DetRecord, base: DetRecord, exits: np.ndarray) -> Dict[str, np.ndarray]:
    """Detections of a pair: the saver's on exited images, the base's on the others."""
    return chain_detections([saver, base], np.where(exits, 0, 1))


def chain_detections(records: Sequence[DetRecord], stage_of_image: np.ndarray) -> Dict[str, np.ndarray]:
    """Detections of a cascade: on each image, those of the stage that answered it.

    Args:
        records: One detection record per stage, same images in the same order.
        stage_of_image: ``[M]`` index of the answering stage per image.
    """
    keep = [stage_of_image[rec.det_image] == k for k, rec in enumerate(records)]
    return {"image": np.concatenate([r.det_image[m] for r, m in zip(records, keep)]),
            "boxes": np.concatenate([r.det_boxes[m] for r, m in zip(records, keep)]),
            "scores": np.concatenate([r.det_scores[m] for r, m in zip(records, keep)]),
            "labels": np.concatenate([r.det_labels[m] for r, m in zip(records, keep)])}


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
    fn = build_confidence(confidence, min_score=min_score)
    conf = np.stack([fn(rec.scores_per_image()) for rec in records])  # [N, M]
    answers = conf >= np.asarray([*thresholds, -np.inf], dtype=np.float64)[:, None]
    stage = answers.argmax(axis=0)  # first stage that answers; the last always does
    return stage, conf[stage, np.arange(conf.shape[1])]


class CocoScorer:
    """COCO box AP of detections against one annotation file (pycocotools), ground truth loaded once.

    Args:
        ann_file: COCO annotation file.
        max_dets: COCO maxDets; AP is computed at the last (see :data:`DEFAULT_MAX_DETS`).
    """

    def __init__(self, ann_file: PathLike, max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> None:
        from pycocotools.coco import COCO

        if not Path(ann_file).is_file():
            raise TinySaverError(f"{ann_file}: annotation file not found")
        self.max_dets = check_max_dets(max_dets)
        self.stat_names = coco_stat_names(self.max_dets)
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
                return {k: 0.0 for k in self.stat_names}
            ev = COCOeval(self.gt, dt, "bbox")
            ev.params.imgIds = [int(i) for i in image_ids]
            ev.params.maxDets = list(self.max_dets)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {k: float(v) for k, v in zip(self.stat_names, ev.stats)}


def det_tradeoff(ann_file: PathLike, saver: DetRecord, base: DetRecord, thresholds: Sequence[float],
                 confidence: str = "mean_box_score", min_score: float = MIN_BOX_SCORE, progress: bool = True,
                 max_dets: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """COCO AP and average GFLOPs of the cascade at each threshold, plus each model alone.

    Thresholds that let the same images exit share one evaluation. ``max_dets`` defaults to the
    records' own (what ``tools/test.py`` evaluated with), else :data:`DEFAULT_MAX_DETS`.
    """
    from tqdm import tqdm

    check_det_pair(saver, base)
    max_dets = max_dets or saver.max_dets or base.max_dets or DEFAULT_MAX_DETS
    conf = build_confidence(confidence, min_score=min_score)(saver.scores_per_image())
    scorer = CocoScorer(ann_file, max_dets)
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
            "confidence": confidence, "min_score": min_score, "max_dets": list(scorer.max_dets),
            "images": int(len(conf)), "rows": rows}


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
