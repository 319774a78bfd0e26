"""Detection: records of a detector's boxes on a split, COCO box AP of any cascade of them, the
threshold sweep (paper Table 4) and the deferral-signal panel — all from saved detections, no
model runs again.

Modules: :mod:`.records` (``DetRecord``, ``Detections``, record files), :mod:`.coco` (pycocotools
scoring: ``CocoScorer``, ``CocoSweep``), :mod:`.sweep` (``det_tradeoff``, ``chain_stages``),
:mod:`.signals` (``signal_panel``: deferral signals against the oracle). Tables and plots of these
results are in :mod:`tinysaver.report.detection`.

May import: numpy, pycocotools (inside functions), tqdm, the core (errors, io, records,
thresholds, confidence) and :mod:`tinysaver.analysis`; never :mod:`tinysaver.report`, matplotlib or
torch.
"""
from __future__ import annotations

from .coco import CocoScorer, CocoSweep, coco_stat_names, load_coco_annotations, precision_recall
from .records import (DEFAULT_MAX_DETS, DetRecord, Detections, cascade_detections, chain_detections, check_det_pair,
                      check_max_dets, load_det_record, save_det_record)
from .signals import (ORACLE_MEASURES, area_between, image_quality, oracle_confidence, parse_signal, signal_curve,
                      signal_panel)
from .sweep import chain_stages, check_min_score, det_tradeoff, detection_confidence, exact_thresholds

__all__ = ["CocoScorer", "CocoSweep", "coco_stat_names", "load_coco_annotations", "precision_recall",
           "DEFAULT_MAX_DETS", "DetRecord", "Detections", "cascade_detections", "chain_detections", "check_det_pair",
           "check_max_dets", "load_det_record", "save_det_record", "ORACLE_MEASURES", "area_between",
           "image_quality", "oracle_confidence", "parse_signal", "signal_curve", "signal_panel", "chain_stages",
           "check_min_score", "det_tradeoff", "detection_confidence", "exact_thresholds"]
