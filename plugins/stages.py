"""Registers the detection stage types in the core's :data:`tinysaver.registry.STAGES`.

Light on purpose: the builders import mmdet/ultralytics only when a stage is built, so looking up
any other plugin does not pay for those imports.
"""
from __future__ import annotations

from typing import Any

from tinysaver.registry import STAGES


@STAGES.register("yolo")
def yolo_stage(**cfg: Any):
    """An ultralytics YOLO checkpoint (:class:`tinysaver.plugins.mmdet.stages.YOLOStage`)."""
    from .mmdet.stages import YOLOStage

    return YOLOStage(**cfg)


@STAGES.register("mmdet")
def mmdet_stage(**cfg: Any):
    """Any mmdet detector from a config + checkpoint (:class:`tinysaver.plugins.mmdet.stages.MMDetStage`)."""
    from .mmdet.stages import MMDetStage

    return MMDetStage(**cfg)
