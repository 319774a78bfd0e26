"""COCO box AP of detection records (pycocotools): the annotation file checked and loaded once
(:class:`CocoScorer`), and the stats of any mix of records without evaluating again
(:class:`CocoSweep`, each record matched once, each mix only re-accumulated).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from ..errors import RecordError, TinySaverError
from .records import DEFAULT_MAX_DETS, DetRecord, check_det_pair, check_max_dets

PathLike = Union[str, os.PathLike]


def coco_stat_names(max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> Tuple[str, ...]:
    """Names of COCOeval's 12 stats (AP at the largest maxDets; AR at each)."""
    a, b, c = max_dets
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", f"AR@{a}", f"AR@{b}", f"AR@{c}",
            f"ARs@{c}", f"ARm@{c}", f"ARl@{c}")


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
                        q, rc = precision_recall(tp_all[:, keep], fp_all[:, keep], npig, rec_thrs)
                    else:
                        done = done or precision_recall(tp_all, fp_all, npig, rec_thrs)
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


def precision_recall(tps: np.ndarray, fps: np.ndarray, npig: int, rec_thrs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
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
