"""Detection records: one detector's detections on one split, saved once (paper section 4.5, Table 4).

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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import RecordError, TinySaverError
from ..io import atomic_open
from ..records import read_npz

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


def check_max_dets(max_dets: Sequence[int], where: Optional[str] = None) -> Tuple[int, int, int]:
    """Three increasing positive integers (COCO's maxDets), else a clear error."""
    values = tuple(int(v) for v in max_dets)
    if len(values) != 3 or values[0] < 1 or list(values) != sorted(set(values)):
        problem = f"max_dets must be three increasing positive integers, got {tuple(max_dets)}"
        raise RecordError(where, problem) if where else TinySaverError(problem)
    return values  # type: ignore[return-value]



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
