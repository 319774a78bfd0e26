"""MMDetection plugin: TinySaver cascades of detection stages (YOLO or any mmdet detector) as an
mmdet model, with their metric, transform and cost.

Importing this package (a config's ``custom_imports=dict(imports=['tinysaver.plugins.mmdet'])``)
registers ``TinySaverDetector`` in mmdet's ``MODELS``, ``TinySaverCascadeMetric`` in ``METRICS`` and
``KeepOriginalImage`` in ``TRANSFORMS``. The stage types (``yolo``, ``mmdet``) are registered in the
core's ``STAGES`` by :mod:`tinysaver.plugins.stages`, which the core loads through the
``tinysaver.plugins`` entry points on the first lookup. One module per concern, each importing
only the ones listed before it:

- :mod:`.checkpoint`: mmdet checkpoints under ``weights_only``, configs, building a detector;
- :mod:`.flops`: an mmdet detector's GFLOPs (``mmengine.analysis``, doubled);
- :mod:`.stages`: the detection stages (``yolo``, ``mmdet``) and their default names;
- :mod:`.transforms`: ``KeepOriginalImage``;
- :mod:`.detector`: the cascade on the core routing routine;
- :mod:`.metric`: share answered per stage, cascade GFLOPs, detection records;
- :mod:`.costs`: GFLOPs of each stage image by image, and of the cascade.

May import: the tinysaver core, torch/mmengine/mmdet, and the ultralytics plugin's
:class:`~tinysaver.plugins.ultralytics.model.YOLOModel` (inside ``YOLOStage``, which needs
ultralytics).
"""
from .checkpoint import build_mmdet_model, load_checkpoint_state_dict, resolve_mmdet_config
from .costs import cascade_gflops_report, item_loader, stage_image_gflops
from .detector import TinySaverDetector
from .flops import mmdet_gflops
from .metric import TinySaverCascadeMetric, cascade_cost
from .stages import DetItem, DetStage, MMDetStage, YOLOStage, default_stage_names
from .transforms import KeepOriginalImage

__all__ = ["TinySaverDetector", "TinySaverCascadeMetric", "KeepOriginalImage", "DetItem", "DetStage",
           "MMDetStage", "YOLOStage", "build_mmdet_model", "load_checkpoint_state_dict", "resolve_mmdet_config",
           "cascade_gflops_report", "mmdet_gflops", "cascade_cost", "default_stage_names", "item_loader",
           "stage_image_gflops"]
