"""Detection records and the detection threshold sweep (paper section 4.5, Table 4).

A detection record holds one model's detections on every image of a split, once; the sweep then
builds the cascade's detections for any threshold (saver's where its image-level confidence is
>= t, base's elsewhere) and scores them with COCO box AP — no model runs again.

Record format (``.npz``): ``image_ids`` int [M] (COCO image ids, in dataset order), ``det_image``
int [K] (row into image_ids), ``det_boxes`` float [K, 4] (xyxy, original image coordinates),
``det_scores`` float [K], ``det_labels`` int [K] (class index in the dataset's order), ``cat_ids``
int [C] (COCO category id of each class index), ``name`` str, ``gflops`` float (per image, 2 FLOPs
per multiply-add: the average of ``image_gflops`` when present), ``kind`` = "detection", optional
``max_dets`` int [3] (the COCO ``maxDets`` of the evaluation that produced it), optional
``image_gflops`` float [M] (the model's GFLOPs on each image, at the size it actually ran at: a
cascade's cost is then the sum over the images of the stages each one reached).

COCO ``maxDets``: pycocotools' default is (1, 10, 100); mmdet's ``CocoMetric`` uses (100, 300, 1000)
(its ``proposal_nums``), and AP is computed at the last value. For the same detections,
``tools/test.py`` and ``det-tradeoff`` must agree, so there is one setting, :data:`DEFAULT_MAX_DETS`,
which ``tools/test.py`` gives the ``CocoMetric`` and stores in the records it dumps, and which
``det-tradeoff`` reads back from them.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .confidence import CONFIDENCES, MIN_BOX_SCORE, build_confidence, detection_confidences
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
    image_gflops: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        fail = lambda p: RecordError(self.path, p)  # noqa: E731
        self._check_types(fail)
        k = len(self.det_scores)
        if self.det_boxes.shape != (k, 4) or len(self.det_image) != k or len(self.det_labels) != k:
            raise fail(f"detection arrays disagree: boxes {self.det_boxes.shape} (expected ({k}, 4)), "
                       f"image {len(self.det_image)}, scores {k}, labels {len(self.det_labels)}")
        if len(self.image_ids) == 0:
            raise fail("record is empty (0 images)")
        if len(self.cat_ids) == 0 or len(np.unique(self.cat_ids)) != len(self.cat_ids):
            raise fail(f"cat_ids must list each class's COCO category id once, got {self.cat_ids.tolist()[:10]}")
        if k and (self.det_image.min() < 0 or self.det_image.max() >= len(self.image_ids)):
            bad = int(np.flatnonzero((self.det_image < 0) | (self.det_image >= len(self.image_ids)))[0])
            raise fail(f"det_image points outside image_ids: detection {bad} names image row "
                       f"{int(self.det_image[bad])}, but there are {len(self.image_ids)} images")
        if k and not (np.isfinite(self.det_scores).all() and np.isfinite(self.det_boxes).all()):
            raise fail("non-finite (NaN/inf) scores or boxes")
        if k and ((self.det_boxes[:, 2] < self.det_boxes[:, 0]) | (self.det_boxes[:, 3] < self.det_boxes[:, 1])).any():
            bad = int(np.flatnonzero((self.det_boxes[:, 2] < self.det_boxes[:, 0])
                                     | (self.det_boxes[:, 3] < self.det_boxes[:, 1]))[0])
            raise fail(f"det_boxes must be x1 y1 x2 y2 with x2 >= x1 and y2 >= y1; box {bad} is "
                       f"{self.det_boxes[bad].tolist()}")
        if k and (self.det_labels.min() < 0 or self.det_labels.max() >= len(self.cat_ids)):
            raise fail(f"det_labels outside 0..{len(self.cat_ids) - 1} ({len(self.cat_ids)} classes)")
        if not np.isfinite(self.gflops) or self.gflops < 0:
            raise fail(f"'gflops' must be a finite cost >= 0, got {self.gflops}")
        if self.max_dets is not None:
            self.max_dets = check_max_dets(self.max_dets, self.path)
        if self.image_gflops is not None:
            try:
                self.image_gflops = np.asarray(self.image_gflops, dtype=np.float64)
            except (TypeError, ValueError):
                raise fail(f"image_gflops must hold numbers, got {np.asarray(self.image_gflops).dtype}") from None
            if self.image_gflops.shape != self.image_ids.shape or not np.all(np.isfinite(self.image_gflops)) \
                    or (self.image_gflops < 0).any():
                raise fail(f"image_gflops must hold one finite cost >= 0 per image ({len(self.image_ids)}), "
                           f"got shape {self.image_gflops.shape}")

    def _check_types(self, fail) -> None:
        """Arrays of the right kind and rank, before any value is looked at (integers for ids and
        labels, real numbers for scores and boxes; an empty array of detections is fine)."""
        for key, ndim, kinds in (("image_ids", 1, "iu"), ("det_image", 1, "iu"), ("det_labels", 1, "iu"),
                                 ("cat_ids", 1, "iu"), ("det_scores", 1, "iuf"), ("det_boxes", 2, "iuf")):
            value = np.asarray(getattr(self, key))
            if value.size == 0:
                value = value.astype(np.int64 if kinds == "iu" else np.float32).reshape((0, 4)[:ndim])
            elif value.ndim != ndim:
                raise fail(f"{key!r} must be {ndim}-D, got shape {value.shape}")
            elif value.dtype.kind not in kinds:
                raise fail(f"{key!r} must hold {'integers' if kinds == 'iu' else 'real numbers'}, got {value.dtype}")
            setattr(self, key, value)
        try:
            self.gflops = float(self.gflops)
        except (TypeError, ValueError):
            raise fail(f"'gflops' must be one number, got {self.gflops!r}") from None

    def cost_per_image(self) -> np.ndarray:
        """``[M]`` GFLOPs of this model on each image (``image_gflops``, else ``gflops`` everywhere)."""
        if self.image_gflops is not None:
            return self.image_gflops
        return np.full(len(self.image_ids), float(self.gflops))

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
    if rec.image_gflops is not None:
        extra["image_gflops"] = np.asarray(rec.image_gflops, dtype=np.float64)
    with atomic_open(path, "wb") as f:
        np.savez(f, name=np.str_(rec.name), gflops=np.float64(rec.gflops), kind=np.str_("detection"),
                 **{k: getattr(rec, k) for k in _ARRAYS}, **extra)
    return path


def load_det_record(path: PathLike) -> DetRecord:
    """Reads and validates a detection record; every problem is a :class:`RecordError` naming the file."""
    data = read_npz(path, (*_ARRAYS, "name", "gflops"), kind="detection record")
    try:
        name, gflops = str(data["name"].item()), float(data["gflops"].item())
        max_dets = None
        if "max_dets" in data:
            max_dets = tuple(int(v) for v in np.atleast_1d(data["max_dets"]).tolist())
    except (TypeError, ValueError) as exc:
        raise RecordError(path, f"bad scalar field: {exc}") from None
    return DetRecord(name=name, gflops=gflops, path=str(path), max_dets=max_dets,
                     image_gflops=data.get("image_gflops"), **{k: data[k] for k in _ARRAYS})


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
    fn = detection_confidence(confidence, min_score)
    conf = np.stack([fn(rec.scores_per_image()) for rec in records])  # [N, M]
    answers = conf >= np.asarray([*thresholds, -np.inf], dtype=np.float64)[:, None]
    stage = answers.argmax(axis=0)  # first stage that answers; the last always does
    return stage, conf[stage, np.arange(conf.shape[1])]


def load_coco_annotations(ann_file: PathLike):
    """A COCO annotation file as pycocotools' ``COCO``, after checking everything the evaluation
    reads: a JSON object with non-empty ``images`` and ``categories`` and a non-empty
    ``annotations`` list whose entries name known images and categories and have an ``xywh``
    ``bbox`` and an ``area``. Every problem is one :class:`TinySaverError` naming the file.
    """
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise TinySaverError(f"{ann_file}: annotation file not found" if not path.exists()
                             else f"{ann_file}: not a file (expected a COCO annotation .json)")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TinySaverError(f"{ann_file}: not a JSON file ({' '.join(str(exc).split())[:120]}); expected COCO "
                             f"annotations") from None
    _check_coco(data, str(ann_file))
    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _check_coco(data: object, where: str) -> None:
    fail = lambda problem: TinySaverError(f"{where}: {problem}")  # noqa: E731
    if not isinstance(data, dict):
        raise fail(f"expected a COCO object with images, annotations and categories, got a JSON {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise fail(f"no {key!r} list: not a COCO detection annotation file (evaluation needs images, "
                       f"annotations and categories)")
        if not isinstance(data[key], list) or not data[key]:
            raise fail(f"{key!r} must be a non-empty list, got {type(data[key]).__name__} "
                       f"of length {len(data[key]) if isinstance(data[key], (list, dict)) else 1}")

    def ids(key: str) -> set:
        found = set()
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or not _is_int(entry.get("id")):
                raise fail(f"{key}[{i}] needs an integer 'id', got {entry!r:.80}")
            if entry["id"] in found:
                raise fail(f"{key}[{i}]: id {entry['id']} appears twice")
            found.add(entry["id"])
        return found

    images, categories = ids("images"), ids("categories")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise fail(f"annotations[{i}] must be an object, got {ann!r:.80}")
        for key in ("image_id", "category_id", "bbox", "area"):
            if key not in ann:
                raise fail(f"annotations[{i}] has no {key!r}")
        if ann["image_id"] not in images:
            raise fail(f"annotations[{i}] is on image {ann['image_id']!r}, which 'images' does not list")
        if ann["category_id"] not in categories:
            raise fail(f"annotations[{i}] has category {ann['category_id']!r}, which 'categories' does not list")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
                and box[2] >= 0 and box[3] >= 0):
            raise fail(f"annotations[{i}]: 'bbox' must be [x, y, width, height] with finite width, height >= 0, "
                       f"got {box!r:.80}")
        if not _is_number(ann["area"]) or ann["area"] < 0:
            raise fail(f"annotations[{i}]: 'area' must be a number >= 0, got {ann['area']!r:.40}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise fail(f"annotations[{i}]: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r:.40}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


class CocoScorer:
    """COCO box AP of detections against one annotation file (pycocotools), ground truth loaded once.

    Args:
        ann_file: COCO annotation file.
        max_dets: COCO maxDets; AP is computed at the last (see :data:`DEFAULT_MAX_DETS`).
    """

    def __init__(self, ann_file: PathLike, max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> None:
        self.max_dets = check_max_dets(max_dets)
        self.stat_names = coco_stat_names(self.max_dets)
        self.ann_file = str(ann_file)
        self.gt = load_coco_annotations(ann_file)
        self.image_ids = set(self.gt.getImgIds())
        self.cat_ids = set(self.gt.getCatIds())

    def check_record(self, rec: "DetRecord") -> None:
        """Refuses a record whose images or categories the annotation file does not have (pycocotools
        would fail on unknown images, and score detections of unknown categories as AP 0)."""
        unknown = [int(i) for i in rec.image_ids if int(i) not in self.image_ids]
        if unknown:
            raise RecordError(rec.path, f"{len(unknown)} image id(s) are not in the annotation file {self.ann_file}, "
                                        f"e.g. {unknown[:5]}: record the split the annotations describe")
        missing = sorted({int(c) for c in rec.cat_ids} - self.cat_ids)
        if missing:
            raise RecordError(rec.path, f"category id(s) {missing[:10]} are not in the annotation file {self.ann_file} "
                                        f"(its categories: {sorted(self.cat_ids)[:10]}"
                                        f"{' ...' if len(self.cat_ids) > 10 else ''}): cat_ids must map the model's "
                                        f"classes to this file's category ids")

    def params(self, image_ids: np.ndarray):
        """pycocotools' evaluation parameters over ``image_ids`` (sorted, as ``evaluate`` sorts them)."""
        from pycocotools.cocoeval import COCOeval

        p = COCOeval(self.gt, iouType="bbox").params
        p.imgIds = list(np.unique([int(i) for i in image_ids]))
        p.catIds = list(np.unique(p.catIds))
        p.maxDets = sorted(self.max_dets)
        return p

    def sweep(self, records: Sequence[DetRecord]) -> "CocoSweep":
        """Evaluates each record once, for the stats of any mix of them (:class:`CocoSweep`)."""
        return CocoSweep(self, records)

    def stats(self, dets: Dict[str, np.ndarray], image_ids: np.ndarray, cat_ids: np.ndarray) -> Dict[str, float]:
        """The 12 COCO stats (AP in [0, 1]) of ``dets`` over ``image_ids`` (one full ``COCOeval``)."""
        from pycocotools.cocoeval import COCOeval

        unknown = sorted({int(i) for i in image_ids} - self.image_ids)
        if unknown:
            raise TinySaverError(f"image id(s) {unknown[:5]} are not in the annotation file {self.ann_file}")
        missing = sorted({int(c) for c in cat_ids} - self.cat_ids)
        if missing:
            raise TinySaverError(f"category id(s) {missing[:10]} are not in the annotation file {self.ann_file}")
        rows = _coco_rows(image_ids, cat_ids, dets)
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


def _record_dets(rec: DetRecord) -> Dict[str, np.ndarray]:
    return {"image": rec.det_image, "boxes": rec.det_boxes, "scores": rec.det_scores, "labels": rec.det_labels}


def _coco_rows(image_ids: np.ndarray, cat_ids: np.ndarray, dets: Dict[str, np.ndarray]) -> np.ndarray:
    """Detections as pycocotools' ``loadRes`` rows: image id, x, y, w, h, score, category id."""
    boxes = dets["boxes"].astype(np.float64)
    return np.column_stack([image_ids[dets["image"]], boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0],
                            boxes[:, 3] - boxes[:, 1], dets["scores"], cat_ids[dets["labels"]]])


class CocoSweep:
    """COCO stats of any mix of detection records without evaluating again: each record is matched
    once, each mix only re-accumulated.

    COCO matching is per image and category, so the cascade's per-image results on an image are
    those of the model that answered it. Each record is evaluated once by pycocotools
    (``COCOeval.evaluate``: one result per category, area range and image); :meth:`stats` picks, for
    every image, the results of the record ``stage_of_image`` names and runs pycocotools'
    ``accumulate`` algorithm on them, vectorised: the same stable order (score, then image, then
    rank in the image), the same float64 arithmetic, the precision envelope as a reversed running
    maximum (exact), then pycocotools' own ``summarize``. The 12 stats equal a full ``COCOeval`` of
    the mixed detections (:meth:`CocoScorer.stats`); ``bench/bench_det_sweep.py`` measures the
    speed-up, ``tests/test_det_sweep.py`` the equality.

    Args:
        scorer: The ground truth and maxDets.
        records: The models (same images in the same order, same classes).

    Examples:
        >>> sweep = CocoSweep(CocoScorer("instances_val.json"), [saver, base])  # doctest: +SKIP
        >>> sweep.stats(np.where(conf >= 0.5, 0, 1))["AP"]                      # doctest: +SKIP
    """

    def __init__(self, scorer: "CocoScorer", records: Sequence[DetRecord]) -> None:
        for rec in records[1:]:
            check_det_pair(records[0], rec)
        for rec in records:
            scorer.check_record(rec)
        ids = records[0].image_ids
        if len(np.unique(ids)) != len(ids):
            raise RecordError(records[0].path, "an image id appears twice: COCO evaluates each image once")
        self.scorer, self.records = scorer, list(records)
        self.image_ids = np.asarray(ids)
        #: position of each record image in pycocotools' sorted image list
        self.sorted_pos = np.argsort(np.argsort(self.image_ids, kind="stable"), kind="stable")
        #: detections of each record on each image (to tell "no detection at all" apart)
        self.det_counts = np.stack([np.bincount(r.det_image, minlength=len(ids)) for r in records])
        self.params = scorer.params(ids)
        per_model = [self._evaluate(rec) for rec in records]
        self._merge(per_model)

    # --- once per record ---------------------------------------------------------------------------
    def _evaluate(self, rec: DetRecord) -> Dict[str, object]:
        """pycocotools' per-image evaluation of one record, as flat arrays per (category, area)."""
        from pycocotools.cocoeval import COCOeval

        n_cat, n_area, n_img = len(self.params.catIds), len(self.params.areaRng), len(self.params.imgIds)
        t = len(self.params.iouThrs)
        out: Dict[str, object] = {"npig": np.zeros((n_cat, n_area), np.int64),
                                  "npig_image": np.zeros((n_cat, n_img), np.int64), "evaluated": False}
        rows = _coco_rows(rec.image_ids, rec.cat_ids, _record_dets(rec))
        if len(rows):
            with contextlib.redirect_stdout(io.StringIO()):
                ev = COCOeval(self.scorer.gt, self.scorer.gt.loadRes(rows), "bbox")
                ev.params.imgIds = [int(i) for i in rec.image_ids]
                ev.params.maxDets = list(self.scorer.max_dets)
                ev.evaluate()
            evals, out["evaluated"] = ev.evalImgs, True
        else:  # no detection at all: nothing to match (the ground truth counts come from another record)
            evals = [None] * (n_cat * n_area * n_img)
        for k in range(n_cat):
            scores, image, rank = [], [], []
            tp: List[List[np.ndarray]] = [[] for _ in range(n_area)]
            fp: List[List[np.ndarray]] = [[] for _ in range(n_area)]
            for a in range(n_area):
                base = (k * n_area + a) * n_img
                for i in range(n_img):
                    e = evals[base + i]
                    if e is None:
                        continue
                    gt_kept = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
                    out["npig"][k, a] += gt_kept
                    if a == 0:
                        out["npig_image"][k, i] = gt_kept
                    n = len(e["dtScores"])
                    if n == 0:
                        continue
                    if a == 0:  # the detections and their order are the same for every area range
                        scores.append(np.asarray(e["dtScores"], dtype=np.float64))
                        image.append(np.full(n, i, np.int64))
                        rank.append(np.arange(n, dtype=np.int64))
                    matched, ignored = e["dtMatches"] != 0, e["dtIgnore"] != 0
                    tp[a].append(matched & ~ignored)
                    fp[a].append(~matched & ~ignored)
            cat = lambda xs, dtype: np.concatenate(xs) if xs else np.zeros(0, dtype)  # noqa: E731
            out[k] = {"score": cat(scores, np.float64), "image": cat(image, np.int64), "rank": cat(rank, np.int64),
                      "tp": [np.concatenate(x, axis=1) if x else np.zeros((t, 0), bool) for x in tp],
                      "fp": [np.concatenate(x, axis=1) if x else np.zeros((t, 0), bool) for x in fp]}
        return out

    def _merge(self, per_model: List[Dict[str, object]]) -> None:
        """All records' detections of each category in one array, in pycocotools' accumulate order."""
        evaluated = [m for m in per_model if m["evaluated"]] or per_model[:1]
        npig = evaluated[0]["npig"]
        for other in evaluated[1:]:  # ground truth only: the same for every record
            assert np.array_equal(other["npig"], npig)
        self.npig = npig  # [K, A] kept ground truth per category and area range
        self.npig_image = evaluated[0]["npig_image"]  # [K, I] kept ground truth per image (area "all")
        self.cats = []
        for k in range(npig.shape[0]):
            parts = [m[k] for m in per_model]
            score = np.concatenate([p["score"] for p in parts])
            image = np.concatenate([p["image"] for p in parts])
            rank = np.concatenate([p["rank"] for p in parts])
            model = np.concatenate([np.full(len(p["score"]), j, np.int64) for j, p in enumerate(parts)])
            # pycocotools: per image, detections by score (stable); images concatenated in id
            # order; then a stable sort by score: ties go by image, then by rank in the image.
            order = np.lexsort((rank, image, -score))
            self.cats.append({
                "score": score[order], "image": image[order], "rank": rank[order], "model": model[order],
                "tp": [np.concatenate([p["tp"][a] for p in parts], axis=1)[:, order] for a in range(npig.shape[1])],
                "fp": [np.concatenate([p["fp"][a] for p in parts], axis=1)[:, order] for a in range(npig.shape[1])]})

    # --- per mix ------------------------------------------------------------------------------------
    def stats(self, stage_of_image: np.ndarray) -> Dict[str, float]:
        """The 12 COCO stats of the detections of record ``stage_of_image[i]`` on image i.

        Args:
            stage_of_image: ``[M]`` record index per image (record order).

        Returns:
            The stats (AP in [0, 1]) of :meth:`CocoScorer.stats` on the mixed detections.
        """
        stage = np.asarray(stage_of_image, dtype=np.int64)
        if stage.shape != self.image_ids.shape or stage.min() < 0 or stage.max() >= len(self.records):
            raise TinySaverError(f"stage_of_image needs {len(self.image_ids)} record indices in 0..{len(self.records) - 1}")
        if self.det_counts[stage, np.arange(len(stage))].sum() == 0:
            return {k: 0.0 for k in self.scorer.stat_names}  # as CocoScorer: nothing to evaluate
        by_sorted_image = np.empty_like(stage)
        by_sorted_image[self.sorted_pos] = stage
        precision, recall = self._accumulate(by_sorted_image)
        return self._summarize(precision, recall)

    def _accumulate(self, stage: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        p = self.params
        rec_thrs = np.asarray(p.recThrs)
        max_dets = list(p.maxDets)
        t, r, k_n, a_n, m_n = len(p.iouThrs), len(rec_thrs), len(self.cats), len(p.areaRng), len(max_dets)
        precision = -np.ones((t, r, k_n, a_n, m_n))
        recall = -np.ones((t, k_n, a_n, m_n))
        for k, cat in enumerate(self.cats):
            chosen = cat["model"] == stage[cat["image"]]
            ranks = cat["rank"][chosen]
            # one accumulation serves every maxDets that cuts no chosen detection
            cuts = [m for m in range(m_n) if ranks.size and ranks.max() >= max_dets[m]]
            for a in range(a_n):
                npig = int(self.npig[k, a])
                if npig == 0:
                    continue  # pycocotools leaves -1: no ground truth in this category and area
                tp_all, fp_all = cat["tp"][a][:, chosen], cat["fp"][a][:, chosen]
                done = None
                for m in range(m_n):
                    if m in cuts:
                        keep = ranks < max_dets[m]
                        q, rc = _precision_recall(tp_all[:, keep], fp_all[:, keep], npig, rec_thrs)
                    else:
                        done = done or _precision_recall(tp_all, fp_all, npig, rec_thrs)
                        q, rc = done
                    precision[:, :, k, a, m], recall[:, k, a, m] = q, rc
        return precision, recall

    def _summarize(self, precision: np.ndarray, recall: np.ndarray) -> Dict[str, float]:
        from pycocotools.cocoeval import COCOeval

        ev = COCOeval(iouType="bbox")
        ev.params = self.params
        ev.eval = {"params": self.params, "precision": precision, "recall": recall}
        with contextlib.redirect_stdout(io.StringIO()):
            ev.summarize()
        return {k: float(v) for k, v in zip(self.scorer.stat_names, ev.stats)}


def _precision_recall(tps: np.ndarray, fps: np.ndarray, npig: int, rec_thrs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """pycocotools' accumulate for one category, area range and maxDets: ``[T, R]`` interpolated
    precision and ``[T]`` recall, from the detections' TP/FP flags in score order."""
    tp = np.cumsum(tps, axis=1).astype(float)
    fp = np.cumsum(fps, axis=1).astype(float)
    nd = tp.shape[1]
    if nd == 0:
        return np.zeros((tp.shape[0], len(rec_thrs))), np.zeros(tp.shape[0])
    rc = tp / npig
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope, exact
    q = np.zeros((tp.shape[0], len(rec_thrs)))
    for row in range(tp.shape[0]):
        inds = np.searchsorted(rc[row], rec_thrs, side="left")
        ok = inds < nd
        q[row, ok] = pr[row, inds[ok]]
    return q, rc[:, -1]


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
    from tqdm import tqdm

    from .analysis import threshold_to_json

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
