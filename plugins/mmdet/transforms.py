"""A data-pipeline transform that keeps the decoded original image for stages that run on it (YOLO),
so no stage reads ``img_path`` from disk a second time (works for in-memory inputs too)."""
from __future__ import annotations

from mmcv.transforms import BaseTransform

from mmdet.registry import TRANSFORMS

from .stages import ORIGINAL_IMAGE_KEY


@TRANSFORMS.register_module()
class KeepOriginalImage(BaseTransform):
    """Stores ``results['img']`` (BGR, HWC, as loaded) under ``results['ori_img']``; put it right
    after ``LoadImageFromFile`` and add ``'ori_img'`` to ``PackDetInputs``' ``meta_keys``."""

    def transform(self, results: dict) -> dict:
        results[ORIGINAL_IMAGE_KEY] = results["img"]
        return results


__all__ = ["KeepOriginalImage"]
