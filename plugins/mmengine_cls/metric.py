"""``TinySaverClsMetric``: top-1/top-k accuracy of a classifier cascade, the share of samples each
stage answered, its average GMACs per sample and, optionally, one classification record per stage
(the ``.npz`` files ``tinysaver tradeoff``/``chain``/``plan`` read).

Metric names (prefix ``tinysaver/``): ``top1``, ``top5`` (fractions), ``images``, ``exit_ratio``
(the first stage's share), ``answered_<k>``, ``stage<k>_gmacs`` (each stage's cost per sample),
``gmacs`` (the cascade's average: the mean over the samples of the costs of the stages each reached,
= Σ_k reach_k · gmacs_k) and, when every stage ran on every sample (``record_all``),
``stage<k>_top1``.

After an evaluation, :attr:`TinySaverClsMetric.samples` holds every sample's index, label,
prediction, answering stage and confidence, in dataset order (``tools/test.py`` writes them).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS

from tinysaver.errors import TinySaverError

from .model import CASCADE_KEY


@METRICS.register_module()
class TinySaverClsMetric(BaseMetric):
    """Accuracy, share answered per stage and GMACs of a :class:`~.model.TinySaverClassifier`.

    Args:
        topk: The k of the top-k accuracy (needs the model's ``topk`` >= k; default 5).
        record_dir: Write one classification record per stage here,
            ``<stage name>_<split>.npz`` (needs the model's ``record_all=True``;
            ``tools/test.py --dump-records DIR`` sets both).
        collect_device: Where results are gathered across processes.
        prefix: Metric name prefix (default ``tinysaver``).
    """

    default_prefix = "tinysaver"

    def __init__(self, topk: int = 5, record_dir: Optional[str] = None, collect_device: str = "cpu",
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = int(topk)
        self.record_dir = record_dir
        self.cascade: Optional[Dict[str, Any]] = None
        #: the last evaluation's samples (arrays in dataset order): index, label, pred, stage, conf
        self.samples: Dict[str, np.ndarray] = {}
        #: the records the last evaluation wrote
        self.record_paths: List[str] = []

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for ds in data_samples:
            if "tinysaver_stage" not in ds:
                raise TinySaverError("TinySaverClsMetric reads the outputs of TinySaverClassifier (no tinysaver_stage)")
            self.cascade = ds[CASCADE_KEY]
            if len(ds["pred_topk"]) < min(self.topk, self.cascade["num_classes"]):
                raise TinySaverError(f"top-{self.topk} accuracy needs the model's topk >= {self.topk}")
            row = {"index": int(ds["sample_idx"]), "label": int(ds["gt_label"]), "pred": int(ds["pred_label"]),
                   "topk_hit": int(ds["gt_label"]) in ds["pred_topk"][:self.topk], "stage": int(ds["tinysaver_stage"]),
                   "conf": float(ds["tinysaver_conf"]), "gmacs": float(ds["tinysaver_gmacs"])}
            if "tinysaver_stage_conf" in ds:
                row["stage_conf"] = list(ds["tinysaver_stage_conf"])
                row["stage_pred"] = list(ds["tinysaver_stage_pred"])
            elif self.record_dir:
                raise TinySaverError("TinySaverClsMetric(record_dir=...) needs the model's record_all=True")
            self.results.append(row)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        results = sorted(results, key=lambda r: r["index"])
        index = np.array([r["index"] for r in results])
        if len(np.unique(index)) != len(index):
            raise TinySaverError("a sample was evaluated twice: the sampler must give every sample once")
        cascade = self.cascade
        names, gmacs = cascade["stages"], cascade["gmacs"]
        label = np.array([r["label"] for r in results], dtype=np.int64)
        pred = np.array([r["pred"] for r in results], dtype=np.int64)
        stage = np.array([r["stage"] for r in results], dtype=np.int64)
        answered = [float(np.mean(stage == k)) for k in range(len(names))]
        metrics: Dict[str, float] = {"top1": float(np.mean(pred == label)),
                                     f"top{self.topk}": float(np.mean([r["topk_hit"] for r in results])),
                                     "images": float(len(results)), "exit_ratio": answered[0]}
        metrics.update({f"answered_{k}": a for k, a in enumerate(answered)})
        metrics.update({f"stage{k}_gmacs": float(g) for k, g in enumerate(gmacs)})
        metrics["gmacs"] = float(np.mean([r["gmacs"] for r in results]))
        every = all("stage_pred" in r for r in results)
        if every:
            stage_pred = np.array([r["stage_pred"] for r in results], dtype=np.int64)  # [M, K]
            metrics.update({f"stage{k}_top1": float(np.mean(stage_pred[:, k] == label)) for k in range(len(names))})
        self.samples = {"index": index, "label": label, "pred": pred, "stage": stage,
                        "conf": np.array([r["conf"] for r in results], dtype=np.float64)}
        if self.record_dir:
            self.record_paths = self._write_records(results, index, label)
        return metrics

    def _write_records(self, results: List[dict], index: np.ndarray, label: np.ndarray) -> List[str]:
        """One record per stage; all are built (and validated) before any is written."""
        from tinysaver.models.recording import default_record_path
        from tinysaver.records import Record, save_record

        if not np.array_equal(index, np.arange(len(index))):
            raise TinySaverError("records need every sample of the dataset once, in order (is the dataset subset "
                                 "given by indices=N?)")
        cascade, meta = self.cascade, dict(self.dataset_meta or {})
        split = str(meta.get("split", "test"))
        cmap = meta.get("class_map")
        conf = np.array([r["stage_conf"] for r in results], dtype=np.float64)   # [M, K]
        pred = np.array([r["stage_pred"] for r in results], dtype=np.int64)
        records = []
        for k, name in enumerate(cascade["stages"]):
            settings = {"name": name, "model": cascade["models"][k], "samples": len(results),
                        "confidence": cascade["confidence"][k], "gmacs": cascade["gmacs"][k],
                        "input_size": cascade["input_size"][k], "numerics": cascade["numerics"],
                        "weights": cascade["weights"][k], "data": meta.get("data"), "split": split, "augment": False,
                        "source": "tools/test.py (TinySaverClsMetric)"}
            extra = {}
            if cmap is not None:
                extra = dict(class_map_folders=np.asarray(cmap["folders"], dtype=str),
                             class_map_index=np.asarray(cmap["indices"], dtype=np.int64),
                             mask_to_folders=bool(cmap["mask_to_folders"]))
                settings["class_map"] = {k2: cmap[k2] for k2 in ("kind", "num_classes", "mask_to_folders", "source")}
            records.append(Record(name=name, gmacs=float(cascade["gmacs"][k]), conf=conf[:, k], pred=pred[:, k],
                                  label=label, confidence=cascade["confidence"][k], num_classes=cascade["num_classes"],
                                  extras={"recording": np.str_(json.dumps(settings, sort_keys=True))}, **extra))
        paths = [default_record_path(self.record_dir, rec.name, split, False) for rec in records]
        Path(self.record_dir).mkdir(parents=True, exist_ok=True)
        for path, rec in zip(paths, records):
            save_record(path, rec)
        return [str(p) for p in paths]


__all__ = ["TinySaverClsMetric"]
