"""MMDetection plugin: TinySaver cascades of detection stages (YOLO or any mmdet detector) as an
mmdet model, with their metric, transform and cost.

Importing this package (a config's ``custom_imports=dict(imports=['tinysaver.plugins.mmdet'])``)
registers ``TinySaverDetector`` in mmdet's ``MODELS``, ``TinySaverCascadeMetric`` in ``METRICS`` and
``KeepOriginalImage`` in ``TRANSFORMS``. One module per concern:

- :mod:`.checkpoint`: mmdet checkpoints under ``weights_only``, configs, building a detector;
- :mod:`.stages`: the detection stages (``yolo``, ``mmdet``);
- :mod:`.detector`: the cascade on the core routing routine;
- :mod:`.metric`: share answered per stage, cascade GFLOPs, detection records;
- :mod:`.flops`: GFLOPs per stage and of the cascade;
- :mod:`.transforms`: ``KeepOriginalImage``.
"""
from .checkpoint import build_mmdet_model, load_checkpoint_state_dict, resolve_mmdet_config
from .detector import TinySaverDetector, default_stage_names
from .flops import cascade_gflops_report, item_loader, mmdet_gflops, stage_image_gflops
from .metric import TinySaverCascadeMetric, cascade_cost
from .stages import DetItem, DetStage, MMDetStage, YOLOStage
from .transforms import KeepOriginalImage
from .. import stages as _register_stage_types  # noqa: F401  (yolo, mmdet in the core STAGES)

__all__ = ["TinySaverDetector", "TinySaverCascadeMetric", "KeepOriginalImage", "DetItem", "DetStage",
           "MMDetStage", "YOLOStage", "build_mmdet_model", "load_checkpoint_state_dict", "resolve_mmdet_config",
           "cascade_gflops_report", "mmdet_gflops", "cascade_cost", "default_stage_names", "item_loader",
           "stage_image_gflops"]
