"""``TinySaverDetector``: detection stages (YOLO or any mmdet detector) in order of cost, as one mmdet
model, routed per image by the core's one routing routine (:func:`tinysaver.routing.route`).

A plain :class:`~mmdet.models.BaseDetector` in mmdet's ``MODELS`` (not a ``MODEL_WRAPPERS`` entry),
so mmengine's own DDP wrapping and checkpoint handling keep working. ``test_step`` → pass-through
preprocessing → ``predict``: stage 1 answers every image; an image goes on to stage k+1 when its
image-level confidence at stage k is below ``thresholds[k]``; each stage preprocesses and runs only
the images that reach it.

Config::

    model = dict(
        type='TinySaverDetector',
        stages=[dict(type='yolo', checkpoint='yolov8n.pt', imgsz=640, name='yolov8n'),
                dict(type='mmdet', config='co_dino.py', checkpoint='co_dino.pth', name='co-dino')],
        confidence=dict(type='mean_box_score', min_score=0.05),   # or one dict per stage
        thresholds=[0.25])                                         # one per stage but the last
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Union

import torch
from mmengine.structures import InstanceData
from torch import nn

from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample

from tinysaver.models.complexity import StageMeter
from tinysaver.confidence import MIN_BOX_SCORE, build_confidence
from tinysaver.detection import Detections
from tinysaver.registry import STAGES
from tinysaver.routing import Stage, route
from tinysaver.thresholds import ThresholdsMixin

from .stages import ORIGINAL_IMAGE_KEY, DetItem

DEFAULT_CONFIDENCE = dict(type="mean_box_score", min_score=MIN_BOX_SCORE)


@MODELS.register_module()
class TinySaverDetector(ThresholdsMixin, BaseDetector):
    """Detectors in order of cost with per-image routing (TinySaver, paper 4.5, for N stages).

    Args:
        stages: One config per stage, cheapest first; ``type`` is a registered stage type
            (``yolo``, ``mmdet``; see :data:`tinysaver.registry.STAGES`), ``name`` optional.
        confidence: Image-level confidence from a stage's box scores: one dict for every stage or
            a list with one per stage (``mean_box_score`` with ``min_score=0.05`` by default).
        thresholds: One per stage but the last: an image is answered by stage k when its
            confidence there is ``>= thresholds[k]`` (float64); +inf: stage k never answers.
        threshold: Shorthand for ``thresholds=[threshold]`` (two stages).
        record_all: Run every stage on every image and attach all their detections to the outputs
            (``tinysaver_stage_dets``) for detection records; ``pred_instances`` still follow the
            thresholds.

    Attributes:
        meter: Each stage's measured time per image and peak memory while it ran
            (:class:`~tinysaver.models.complexity.StageMeter`; ``tools/test.py`` reports it).
        data_preprocessor: The cascade's own (pass-through) preprocessor; each stage preprocesses
            its images itself.
    """

    def __init__(self, stages: Sequence[dict], confidence: Union[dict, Sequence[dict], None] = None,
                 thresholds: Optional[Sequence[float]] = None, threshold: Optional[float] = None,
                 record_all: bool = False, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(type="BaseDataPreprocessor"), init_cfg=init_cfg)
        if len(stages) < 2:
            raise ValueError("TinySaverDetector needs at least two stages")
        self.stages = nn.ModuleList(_build_stage(cfg) for cfg in stages)
        confs = list(confidence) if isinstance(confidence, (list, tuple)) else [confidence or DEFAULT_CONFIDENCE] * len(stages)
        if len(confs) != len(stages):
            raise ValueError(f"{len(confs)} confidence configs for {len(stages)} stages")
        self.confidence_cfgs = [dict(c) for c in confs]
        self.confidences = [build_confidence(c["type"], **{k: v for k, v in c.items() if k != "type"}) for c in confs]
        if threshold is not None and thresholds is not None:
            raise ValueError("give threshold or thresholds, not both")
        self.thresholds = list(thresholds) if thresholds is not None else [0.5 if threshold is None else threshold]
        self.record_all = record_all
        self.meter = StageMeter(self.stage_names)

    # --- thresholds (ThresholdsMixin: thresholds/threshold, checked on every assignment) -------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def stage_names(self) -> List[str]:
        return [stage.name for stage in self.stages]

    # --- BaseDetector's abstract interface: the cascade only predicts ---------------------------------
    def loss(self, batch_inputs: Any, batch_data_samples: Any) -> dict:
        raise NotImplementedError("TinySaverDetector is inference-only: train each stage on its own")

    def _forward(self, batch_inputs: Any, batch_data_samples: Any = None) -> Any:
        raise NotImplementedError("count FLOPs per stage with tools/get_flops.py (the cascade's cost depends on routing)")

    def extract_feat(self, batch_inputs: Any) -> Any:
        raise NotImplementedError("the stages have separate features")

    def predict(self, batch_inputs: List[torch.Tensor], batch_data_samples: List[DetDataSample],
                rescale: bool = True) -> List[DetDataSample]:
        items = [DetItem(x, ds) for x, ds in zip(batch_inputs, batch_data_samples)]
        stages = self._routing_stages(items)
        routed = route(stages, [items] * len(stages))
        device = batch_inputs[0].device if len(batch_inputs) else torch.device("cpu")
        for run_k, run in enumerate(routed.runs):
            for row, det, exits in zip(run.indices.tolist(), run.outputs, run.exits.tolist()):
                if exits:
                    batch_data_samples[row].pred_instances = _instances(det, device)
        for row, ds in enumerate(batch_data_samples):
            ds.set_metainfo({"tinysaver_stage": int(routed.stage[row]), "tinysaver_conf": float(routed.confidence[row]),
                             ORIGINAL_IMAGE_KEY: None})  # the original image is not needed past here
        return batch_data_samples

    def _routing_stages(self, items: List[DetItem]) -> List[Stage]:
        thresholds = [*self.thresholds, math.inf]
        if not self.record_all:
            return [Stage(model=lambda sub, k=k: self._run_stage(k, sub), confidence=self._confidence_of(k), threshold=t,
                          name=stage.name) for k, (stage, t) in enumerate(zip(self.stages, thresholds))]
        # Every stage on every image (for records); routing still goes through the one routine, on
        # the detections already computed.
        everything = [self._run_stage(k, items) for k in range(len(self.stages))]
        for item_index, item in enumerate(items):
            item.sample.tinysaver_stage_dets = [(d[item_index].bboxes, d[item_index].scores, d[item_index].labels)
                                                for d in everything]
        row_of = {id(item): i for i, item in enumerate(items)}
        return [Stage(model=lambda sub, dets=dets: [dets[row_of[id(it)]] for it in sub],
                      confidence=self._confidence_of(k), threshold=t, name=self.stages[k].name)
                for k, (dets, t) in enumerate(zip(everything, thresholds))]

    def _run_stage(self, k: int, items: List[DetItem]) -> list:
        stage = self.stages[k]
        device = next(stage.parameters()).device
        return self.meter.measure(k, stage, items, len(items), device)

    def _confidence_of(self, k: int):
        fn = self.confidences[k]
        return lambda dets: fn([d.scores for d in dets])


def _build_stage(cfg: dict) -> nn.Module:
    cfg = dict(cfg)
    return STAGES.get(cfg.pop("type"))(**cfg)


def _instances(det: Detections, device: torch.device) -> InstanceData:
    inst = InstanceData()
    inst.bboxes = torch.as_tensor(det.bboxes, device=device)
    inst.scores = torch.as_tensor(det.scores, device=device)
    inst.labels = torch.as_tensor(det.labels, device=device)
    return inst


__all__ = ["TinySaverDetector"]
