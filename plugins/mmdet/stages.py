"""Detection stages of :class:`TinySaverDetector`: any mmdet detector or a YOLO model, at any position.

Each stage is an ``nn.Module`` (so ``.to()``, state dicts and DDP see its weights) taking a list of
:class:`DetItem` (one per image, as the mmdet pipeline packed it) and returning one
:class:`~tinysaver.detection.Detections` per image, in original image coordinates.

- ``yolo``: an ultralytics checkpoint, run by ultralytics on the original BGR image (its own
  letterbox, BGR→RGB and /255), decoded once by the data pipeline (:class:`KeepOriginalImage`).
- ``mmdet``: an mmdet config + checkpoint, run with its own ``data_preprocessor`` on exactly the
  images that reach it.

The builders are registered by type in the core's :data:`tinysaver.registry.STAGES` (by
:mod:`tinysaver.plugins.stages`); a config names a stage ``dict(type='yolo', ...)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from tinysaver.detection import Detections
from tinysaver.errors import TinySaverError

from .checkpoint import build_mmdet_model
from .flops import mmdet_gflops

#: metainfo key under which :class:`KeepOriginalImage` keeps the decoded original (BGR, HWC)
ORIGINAL_IMAGE_KEY = "ori_img"


def default_stage_names(n: int) -> List[str]:
    """Record/report names of the stages: ``saver``/``base`` for a pair, ``stage0``… otherwise."""
    return ["saver", "base"] if n == 2 else [f"stage{k}" for k in range(n)]


@dataclass
class DetItem:
    """One image as the stages may need it.

    Attributes:
        inputs: The mmdet pipeline's packed image (uint8 CHW, BGR).
        sample: Its ``DetDataSample`` (metainfo: ``img_id``, ``ori_shape``, ``scale_factor``...).
    """

    inputs: torch.Tensor
    sample: Any

    @property
    def original_bgr(self) -> np.ndarray:
        """The decoded original image, kept by the pipeline (never read from disk again)."""
        img = self.sample.metainfo.get(ORIGINAL_IMAGE_KEY)
        if img is None:
            raise TinySaverError("a YOLO stage needs the original image: put dict(type='KeepOriginalImage') right "
                                 f"after the image is loaded and {ORIGINAL_IMAGE_KEY!r} in PackDetInputs' meta_keys")
        return img


class DetStage(nn.Module):
    """Base class: ``forward(items) -> List[Detections]`` and ``gflops(items)`` per image."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def gflops(self, items: Sequence[Any], mode: str = "tensor") -> float:  # pragma: no cover - interface
        raise NotImplementedError


class YOLOStage(DetStage):
    """An ultralytics YOLO checkpoint as a stage.

    Args:
        checkpoint: Path of the ``.pt`` file.
        imgsz: Letterbox size.
        conf: Minimum score kept by NMS.
        iou: NMS IoU threshold.
        max_det: Maximum detections per image.
        half: fp16 inference (GPU).
        class_map: ``class_map[k]`` is the dataset label of YOLO class k (identity when None: YOLO's
            80 COCO classes are already in mmdet's order).
        name: Stage name for reports and records.
        random_init: The architecture untrained, from its model yaml (``model``, else the
            checkpoint's name: ``yolov8x.pt`` → ``yolov8x.yaml``); the checkpoint is not read.
        model: Model yaml for ``random_init``.
        num_classes: Classes of the untrained model (``random_init``; default: the yaml's).
    """

    def __init__(self, checkpoint: str, imgsz: int = 640, conf: float = 0.001, iou: float = 0.7,
                 max_det: int = 300, half: bool = False, class_map: Optional[Sequence[int]] = None,
                 name: Optional[str] = None, random_init: bool = False, model: Optional[str] = None,
                 num_classes: Optional[int] = None) -> None:
        from tinysaver.plugins.ultralytics import YOLOModel

        super().__init__(name or "yolo")
        self.yolo = YOLOModel(checkpoint, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, half=half,
                              random_init=random_init, model=model, num_classes=num_classes)
        self.model = self.yolo.model  # a submodule: moved by .to(), saved in state dicts
        self.class_map = None if class_map is None else np.asarray(class_map, dtype=np.int64)

    def forward(self, items: Sequence[DetItem]) -> List[Detections]:
        self.yolo.device = str(next(self.model.parameters()).device)
        dets = self.yolo.predict([item.original_bgr for item in items])
        if self.class_map is not None:
            dets = [Detections(d.bboxes, d.scores, self.class_map[d.labels]) for d in dets]
        return dets

    def gflops(self, items: Sequence[Any] = (), mode: str = "tensor") -> float:
        """At the square ``imgsz``, ultralytics' convention (2 FLOPs per multiply-add)."""
        return self.yolo.gflops()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, checkpoint={self.yolo.checkpoint!r}, imgsz={self.yolo.imgsz}"


class MMDetStage(DetStage):
    """An mmdet detector (any registered one) as a stage.

    Args:
        config: Config file, ``mmdet::<path>`` of the installed package, or a config dict.
        checkpoint: Its checkpoint (loaded with ``weights_only``), or None.
        name: Stage name for reports and records.
        random_init: Build the detector with its initial weights and read no checkpoint (for
            checking a config's shapes, costs and memory before the real run).
        flops_mode: What its cost trace runs: ``tensor`` (``_forward``: backbone, neck and head
            outputs, as mmdet's own get_flops.py) or ``predict`` (the whole prediction; for
            detectors whose ``_forward`` is empty, such as Co-DETR).
    """

    def __init__(self, config: Any, checkpoint: Optional[str] = None, name: Optional[str] = None,
                 random_init: bool = False, flops_mode: str = "tensor") -> None:
        super().__init__(name or "mmdet")
        if flops_mode not in ("tensor", "predict"):
            raise TinySaverError(f"stage {name or 'mmdet'}: flops_mode must be 'tensor' or 'predict', got {flops_mode!r}")
        self.flops_mode = flops_mode
        self.model = build_mmdet_model(config, None if random_init else checkpoint)

    def forward(self, items: Sequence[DetItem]) -> List[Detections]:
        # The detector's own preprocessing (normalise, pad, batch) on just these images.
        data = self.model.data_preprocessor({"inputs": [it.inputs for it in items],
                                             "data_samples": [it.sample for it in items]}, False)
        results = self.model.predict(data["inputs"], data["data_samples"], rescale=True)
        return [Detections(r.pred_instances.bboxes.detach().cpu().numpy().astype(np.float32),
                           r.pred_instances.scores.detach().cpu().numpy().astype(np.float32),
                           r.pred_instances.labels.detach().cpu().numpy().astype(np.int64)) for r in results]

    def gflops(self, items: Sequence[Any], mode: Optional[str] = None) -> float:
        return mmdet_gflops(self.model, items, mode or self.flops_mode)


__all__ = ["DetItem", "DetStage", "YOLOStage", "MMDetStage", "ORIGINAL_IMAGE_KEY", "default_stage_names"]
