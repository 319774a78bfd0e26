"""GFLOPs per image of each stage of a :class:`TinySaverDetector`, and of the cascade.

Convention: GFLOPs = 2 × GMACs (ultralytics' and the paper's Table 4). ``mmengine.analysis`` (mmdet's
``get_flops.py``) counts one multiply-add as one "flop": its figure is doubled here.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .metric import cascade_cost


def mmdet_gflops(model: Any, items: Sequence[dict], mode: str = "tensor") -> float:
    """An mmdet detector's average GFLOPs per image over dataset ``items`` (each preprocessed by the
    detector), counted by ``mmengine.analysis`` and doubled to FLOPs.

    ``mode='tensor'`` traces ``_forward`` (backbone, neck and head outputs, as mmdet's own
    ``get_flops.py``); for detectors whose ``_forward`` is empty (Co-DETR) pass ``mode='predict'``.
    """
    from mmengine.analysis import get_model_complexity_info
    from mmengine.dataset import pseudo_collate

    macs = []
    for item in items:
        data = model.data_preprocessor(pseudo_collate([item]), False)
        model.forward = partial(type(model).forward, model, data_samples=data["data_samples"], mode=mode)
        try:
            info = get_model_complexity_info(model, None, inputs=data["inputs"], show_table=False, show_arch=False)
        finally:
            del model.forward  # back to the class's method
        macs.append(info["flops"])
    return 2 * float(np.mean(macs)) / 1e9


def cascade_gflops_report(detector: Any, items: Sequence[dict], answered: Optional[Sequence[float]] = None,
                          mode: str = "tensor") -> Dict[str, Any]:
    """Each stage's GFLOPs per image and, given the share of images each stage answered, the
    cascade's average ``Σ_k reach_k · gflops_k``."""
    stages = [{"name": stage.name, "gflops": stage.gflops(items, mode)} for stage in detector.stages]
    for stage in stages:
        stage["gmacs"] = stage["gflops"] / 2
    report: Dict[str, Any] = {"convention": "GFLOPs = 2 x GMACs (ultralytics' and the paper's Table 4); "
                                            "mmengine.analysis counts MACs and is doubled",
                              "stages": stages, "images": len(items)}
    if answered is not None:
        report["answered"] = [float(a) for a in answered]
        report["cascade_gflops"] = cascade_cost(answered, [s["gflops"] for s in stages])
    return report


__all__ = ["mmdet_gflops", "cascade_gflops_report"]
