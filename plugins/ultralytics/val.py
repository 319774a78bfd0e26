"""One stage of a :class:`~tinysaver.plugins.ultralytics.cascade.YOLOCascade` under ultralytics'
own validator, run image by image (:class:`StageVal`), for the cascade's ``val``.
"""
from __future__ import annotations

from collections import OrderedDict
from copy import deepcopy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tinysaver.errors import TinySaverError

from .model import YOLOModel


class _Recorder:
    """Stands in for a validator's ``DetMetrics``: keeps the per-image statistics ultralytics'
    ``update_metrics`` computes, in order, so the cascade can pick the answering stage's."""

    def __init__(self) -> None:
        self.stats: List[dict] = []

    def update_stats(self, stat: dict) -> None:
        self.stats.append(stat)


class StageVal:
    """One stage's ultralytics validator, set up as ``YOLO.val`` sets it up, run image by image.

    The set-up mirrors ``BaseValidator.__call__`` (model in ``AutoBackend``, dataset, metrics); the
    per-image work is the validator's own ``preprocess``/``postprocess``/``update_metrics``.
    """

    def __init__(self, stage: YOLOModel, args: Dict[str, Any], save_dir: Path) -> None:
        import torch
        from ultralytics.data.utils import check_det_dataset
        from ultralytics.nn.autobackend import AutoBackend
        from ultralytics.utils import callbacks
        from ultralytics.utils.checks import check_imgsz
        from ultralytics.utils.torch_utils import select_device, unwrap_model

        yolo = stage.yolo
        v = yolo._smart_load("validator")(args={**yolo.overrides, **args, "mode": "val"}, save_dir=save_dir,
                                          _callbacks=callbacks.get_default_callbacks())
        v.training = False
        model = AutoBackend(model=deepcopy(yolo.model), device=select_device(v.args.device, verbose=False),
                            dnn=v.args.dnn, data=v.args.data, fp16=v.args.quantize == 16,
                            channels_last=v.args.channels_last, end2end=v.args.nms is False)
        v.device = model.device
        v.args.quantize = 16 if model.fp16 else None
        check_imgsz(v.args.imgsz, stride=model.stride, min_dim=2)
        v.data = check_det_dataset(v.args.data, split=v.args.split)
        if v.device.type in {"cpu", "mps"}:
            v.args.workers = 0
        v.stride, v.names = model.stride, model.names
        # batch 1 for the dataset: with rect=True each image gets its own rectangle (the policy)
        v.dataloader = v.get_dataloader(v.data.get(v.args.split), 1 if v.args.rect else v.args.batch)
        model.eval()
        v.init_metrics(unwrap_model(model))
        self.validator, self.model, self.stage = v, model, stage
        self.metrics = v.metrics  # the real DetMetrics (names set): stage 0's collects the cascade's
        self.recorder = _Recorder()
        v.metrics = self.recorder
        self._torch = torch

    @property
    def dataset(self) -> Any:
        return self.validator.dataloader.dataset

    def shape_of(self, index: int) -> Tuple[int, int]:
        """``(h, w)`` image ``index`` is letterboxed to (without loading it): its own rectangle, or
        the square."""
        ds = self.dataset
        if ds.rect:
            h, w = ds.batch_shapes[ds.batch[index]]
            return int(h), int(w)
        return ds.imgsz, ds.imgsz

    def run(self, indices: Sequence[int], boxes: bool = False) -> List[dict]:
        """The stage on dataset images ``indices``: per image, its kept scores, ultralytics' metric
        statistics, the letterboxed shape it ran at and (``boxes``) its detections in original
        image coordinates."""
        v, items = self.validator, [self.dataset[int(i)] for i in indices]
        out: List[Optional[dict]] = [None] * len(items)
        groups: Dict[Tuple[int, ...], List[int]] = OrderedDict()
        for row, item in enumerate(items):
            groups.setdefault(tuple(item["img"].shape), []).append(row)
        for shape, rows in groups.items():
            batch = v.preprocess(self.dataset.collate_fn([items[r] for r in rows]))
            with self._torch.inference_mode():
                preds = v.postprocess(self.model(batch["img"], augment=False))
            scaled = [v.scale_preds(p, v._prepare_batch(si, batch)) for si, p in enumerate(preds)] if boxes else None
            self.recorder.stats.clear()
            v.update_metrics(preds, batch)
            for si, row in enumerate(rows):
                pred = preds[si]
                if (int(shape[1]), int(shape[2])) != self.shape_of(indices[row]):  # the cost is counted at shape_of
                    raise TinySaverError(f"{batch['im_file'][si]}: letterboxed to {shape[1:]}, expected "
                                         f"{self.shape_of(indices[row])}")
                out[row] = {"scores": pred["conf"].cpu().numpy().astype(np.float64), "stat": self.recorder.stats[si],
                            "im_file": batch["im_file"][si]}
                if boxes:
                    out[row]["dets"] = (scaled[si]["bboxes"].cpu().numpy().astype(np.float32),
                                        pred["conf"].cpu().numpy().astype(np.float32),
                                        pred["cls"].cpu().numpy().astype(np.int64))
        return out  # type: ignore[return-value]


__all__ = ["StageVal"]
