"""Ultralytics plugin: TinySaver cascades of ultralytics YOLO models, with ultralytics' own habits
(``predict`` gives ``Results``, ``val`` gives ``DetMetrics``), and the ``tinysaver yolo`` command.

One module per job:

- :mod:`.model`: ``YOLOModel``, one YOLO checkpoint as a stage (checked loading, offline set-up,
  the per-image letterbox policy, GFLOPs at the shape each image runs at);
- :mod:`.cascade`: ``YOLOCascade`` (``predict``, ``val``), any number of stages on the core's
  routing routine;
- :mod:`.val`: one stage under ultralytics' own validator, image by image;
- :mod:`.coco`: class names, image ids, a YOLO split as a COCO annotation file, record names;
- :mod:`.command`: ``tinysaver yolo val|predict|coco key=value ...`` (entry point
  ``tinysaver.commands``: ``yolo``).

ultralytics itself is imported inside functions only (an optional dependency), after
:func:`.model.prepare_offline` has set it up for no network.

May import: the tinysaver core (errors, io, confidence, routing, thresholds, detection records,
models); never another plugin.

Examples:
    >>> from tinysaver.plugins.ultralytics import YOLOCascade
    >>> cascade = YOLOCascade(["yolov8n.pt", "yolov8x.pt"], thresholds=[0.5], imgsz=[320, 640])  # doctest: +SKIP
"""
from .cascade import YOLOCascade, cascade_summary_text, check_ultralytics_args
from .coco import coco_names, image_ids_for, record_names, yolo_to_coco
from .model import (YOLOModel, YOLOSaver, check_checkpoint, model_yaml, per_image_letterbox_predictor,
                    prepare_offline, resolve_checkpoint, weights_dir)

__all__ = ["YOLOCascade", "YOLOModel", "YOLOSaver", "yolo_to_coco", "image_ids_for", "coco_names",
           "record_names", "cascade_summary_text", "check_ultralytics_args", "check_checkpoint", "model_yaml",
           "per_image_letterbox_predictor", "prepare_offline", "resolve_checkpoint", "weights_dir"]
