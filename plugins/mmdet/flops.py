"""An mmdet detector's GFLOPs per image, counted by ``mmengine.analysis`` (:func:`mmdet_gflops`).

Convention: GFLOPs = 2 × GMACs (ultralytics' and the paper's Table 4). ``mmengine.analysis`` (mmdet's
``get_flops.py``) counts one multiply-add as one "flop": its figure is doubled here. The costs of a
cascade's stages image by image, and of the cascade: :mod:`tinysaver.plugins.mmdet.costs`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import numpy as np

from tinysaver.errors import TinySaverError


def mmdet_gflops(model: Any, items: Sequence[dict], mode: str = "tensor") -> float:
    """An mmdet detector's average GFLOPs per image over dataset ``items`` (each preprocessed by the
    detector), counted by ``mmengine.analysis`` and doubled to FLOPs.

    ``mode='tensor'`` traces ``_forward`` (backbone, neck and head outputs, as mmdet's own
    ``get_flops.py``); for detectors whose ``_forward`` is empty (Co-DETR) pass ``mode='predict'``,
    which traces the whole ``predict`` (post-processing included) and hands the tracer the boxes and
    scores as tensors (a tracer cannot return ``DetDataSample`` s).
    """
    from mmengine.analysis import get_model_complexity_info
    from mmengine.dataset import pseudo_collate

    from tinysaver.models.complexity import inference_trace

    macs = []
    # Eval mode, autograd off: the cost of inference, and gradient-checkpointed backbones
    # (with_cp=True) trace at all (tinysaver.models.complexity.inference_trace).
    with inference_trace(model):
        for item in items:
            data = model.data_preprocessor(pseudo_collate([item]), False)
            forward = partial(type(model).forward, model, data_samples=data["data_samples"], mode=mode)
            model.forward = forward if mode == "tensor" else (lambda inputs, run=forward: _as_tensors(run(inputs)))
            try:
                info = get_model_complexity_info(model, None, inputs=data["inputs"], show_table=False,
                                                 show_arch=False)
            finally:
                del model.forward  # back to the class's method
            macs.append(info["flops"])
    if not all(m > 0 for m in macs):  # an empty _forward (Co-DETR) traces nothing: never a free model
        raise TinySaverError(f"{type(model).__name__}: the {mode!r} trace counted 0 FLOPs (its "
                             f"{'_forward' if mode == 'tensor' else 'predict'} runs nothing traceable); set "
                             f"flops_mode='predict' on its stage (or tools/get_flops.py --mode predict)")
    return 2 * float(np.mean(macs)) / 1e9


def _as_tensors(samples: Sequence[Any]) -> tuple:
    """``predict``'s data samples as the tensors a tracer can return (each image's boxes and scores)."""
    return tuple(t for ds in samples for t in (ds.pred_instances.bboxes, ds.pred_instances.scores))


__all__ = ["mmdet_gflops"]
