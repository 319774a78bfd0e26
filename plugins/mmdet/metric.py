"""``TinySaverCascadeMetric``: what share of the images each stage answered, the cascade's average
GFLOPs per image and, optionally, one detection record per stage for ``tinysaver det-tradeoff``.

After an evaluation, :attr:`TinySaverCascadeMetric.images` lists every image (id, answering stage,
original and resized shape): ``tools/test.py`` costs each image at the size each stage ran it at
(:func:`tinysaver.plugins.mmdet.costs.cascade_gflops_report`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from mmdet.registry import METRICS

from tinysaver.detection import DEFAULT_MAX_DETS, DetRecord, save_det_record
from tinysaver.errors import TinySaverError
from tinysaver.routing import expected_cost

from .stages import default_stage_names


#: the cascade's average GFLOPs per image from the share answered per stage (the core's cost model)
cascade_cost = expected_cost


@METRICS.register_module()
class TinySaverCascadeMetric(BaseMetric):
    """Share answered per stage and average GFLOPs of the cascade; optionally detection records.

    Args:
        stage_gflops: Each stage's GFLOPs per image (``tools/get_flops.py``), or None.
        record_dir: Write one detection record per stage here (needs the detector's
            ``record_all=True``; ``tools/test.py --dump-records`` sets both).
        record_names: File names of the records (default ``saver``/``base`` for two stages,
            ``stage0``… otherwise).
        ann_file: COCO annotations: the category id of each class index is looked up by class name,
            as ``CocoMetric`` does (needed for the records unless ``cat_ids`` is given).
        cat_ids: COCO category id of each class index, explicitly.
        max_dets: The COCO maxDets the config's ``CocoMetric`` evaluates with (its
            ``proposal_nums``), stored in the records so ``det-tradeoff`` evaluates alike
            (``tools/test.py`` sets it).
        defer_records: Keep the records in :attr:`pending_records` instead of writing them, for
            the caller to stamp each image's measured cost and write them (``tools/test.py
            --dump-records``). Without it, ``record_dir`` needs ``stage_gflops``: a record is never
            written without a cost.
    """

    default_prefix = "tinysaver"

    def __init__(self, stage_gflops: Optional[Sequence[float]] = None, record_dir: Optional[str] = None,
                 record_names: Optional[Sequence[str]] = None, ann_file: Optional[str] = None,
                 cat_ids: Optional[Sequence[int]] = None, max_dets: Sequence[int] = DEFAULT_MAX_DETS,
                 defer_records: bool = False, collect_device: str = "cpu", prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.stage_gflops = None if stage_gflops is None else [float(g) for g in stage_gflops]
        if record_dir and not defer_records and not (self.stage_gflops and all(g > 0 for g in self.stage_gflops)):
            raise TinySaverError("TinySaverCascadeMetric(record_dir=...) needs stage_gflops (each stage's GFLOPs per "
                                 "image, > 0): records are never written without a cost; tools/test.py "
                                 "--dump-records measures them")
        self.defer_records = bool(defer_records)
        #: ``{path: DetRecord}`` of the last evaluation when ``defer_records`` (costs not yet stamped)
        self.pending_records: Dict[Path, DetRecord] = {}
        self.record_dir, self.record_names = record_dir, record_names
        self.ann_file, self.cat_ids = ann_file, cat_ids
        self.max_dets = tuple(max_dets)
        #: the last evaluation's images: ``img_id``, ``stage``, ``ori_shape``, ``img_shape`` (by img_id)
        self.images: List[dict] = []

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for ds in data_samples:
            row = {"img_id": int(ds["img_id"]), "stage": int(ds["tinysaver_stage"]), "conf": float(ds["tinysaver_conf"]),
                   "ori_shape": tuple(int(v) for v in ds["ori_shape"][:2]),
                   "img_shape": tuple(int(v) for v in ds["img_shape"][:2])}
            if self.record_dir:
                if "tinysaver_stage_dets" not in ds:
                    raise TinySaverError("TinySaverCascadeMetric(record_dir=...) needs the detector's record_all=True")
                row["dets"] = [tuple(np.asarray(a) for a in d) for d in ds["tinysaver_stage_dets"]]
            self.results.append(row)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        results = sorted(results, key=lambda r: r["img_id"])
        self.images = [{k: r[k] for k in ("img_id", "stage", "ori_shape", "img_shape")} for r in results]
        stages = np.array([r["stage"] for r in results])
        n_stages = max(len(self.stage_gflops or []), int(stages.max()) + 1, 2)
        answered = [float(np.mean(stages == k)) for k in range(n_stages)]
        metrics: Dict[str, float] = {"exit_ratio": answered[0], "images": float(len(results))}
        metrics.update({f"answered_{k}": a for k, a in enumerate(answered)})
        if self.stage_gflops is not None:
            metrics.update({f"stage{k}_gflops": g for k, g in enumerate(self.stage_gflops)})
            metrics["cascade_gflops"] = cascade_cost(answered, self.stage_gflops)
        if self.record_dir:
            self._write_records(results)
        return metrics

    def _write_records(self, results: List[dict]) -> None:
        ids = [r["img_id"] for r in results]
        cat_ids = self.cat_ids
        if cat_ids is None:
            if not (self.ann_file and self.dataset_meta):
                raise TinySaverError("TinySaverCascadeMetric needs ann_file (or cat_ids) to write records")
            from mmdet.datasets.api_wrappers import COCO

            cat_ids = COCO(self.ann_file).get_cat_ids(cat_names=self.dataset_meta["classes"])
        n_stages = len(results[0]["dets"])
        names = list(self.record_names or default_stage_names(n_stages))
        records = {}
        for k in range(n_stages):
            # deferred: a placeholder the caller replaces by the measured cost before writing
            gflops = 0.0 if self.defer_records else self.stage_gflops[k]
            rec = DetRecord.from_lists(names[k], gflops, ids, [r["dets"][k][0] for r in results],
                                       [r["dets"][k][1] for r in results], [r["dets"][k][2] for r in results], cat_ids)
            rec.max_dets = self.max_dets
            records[Path(self.record_dir) / f"{names[k]}.npz"] = rec
        if self.defer_records:
            self.pending_records = records
            return
        for path, rec in records.items():
            save_det_record(path, rec)


__all__ = ["TinySaverCascadeMetric", "cascade_cost"]
