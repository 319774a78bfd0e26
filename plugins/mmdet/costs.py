"""GFLOPs per image of each stage of a :class:`TinySaverDetector`, and of the cascade.

Convention: GFLOPs = 2 × GMACs (ultralytics' and the paper's Table 4); an mmdet stage is counted by
:func:`~tinysaver.plugins.mmdet.flops.mmdet_gflops` (``mmengine.analysis``, doubled).

Honest costs: every image is costed at the size each stage actually runs it at, not at a nominal
square size and not as an average over a few images: a YOLO stage at the image's own letterbox
(:mod:`tinysaver.plugins.ultralytics.model`'s policy), an mmdet stage at the image's resized shape
padded to its ``data_preprocessor``'s ``pad_size_divisor`` (as a batch of one). Each distinct input
shape is counted once. The cascade's average is the mean over the images of the costs of the stages
each image reached (:func:`cascade_gflops_report`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .flops import mmdet_gflops
from .metric import cascade_cost
from .stages import YOLOStage


def stage_image_gflops(stage: Any, images: Sequence[dict], load_item: Callable[[int], dict],
                       mode: Optional[str] = None) -> Tuple[np.ndarray, int]:
    """One stage's GFLOPs on each image, at the input size the stage runs it at (module docstring).

    Args:
        stage: A stage of the detector (``YOLOStage`` or an mmdet stage).
        images: ``{"img_id", "ori_shape", "img_shape"}`` per image (:attr:`TinySaverCascadeMetric.images`).
        load_item: ``img_id`` → the dataset item (the test pipeline's output), for mmdet stages.
        mode: ``tensor`` or ``predict`` (see :func:`mmdet_gflops`); None: the stage's own
            ``flops_mode`` (``tensor`` unless its config says ``predict``).

    Returns:
        ``([M] GFLOPs, number of distinct input shapes counted)``.
    """
    if isinstance(stage, YOLOStage):
        shapes = [tuple(im["ori_shape"]) for im in images]
        return stage.yolo.image_gflops(shapes), len({stage.yolo.letterbox_shape(*s) for s in set(shapes)})
    divisor = int(getattr(getattr(stage.model, "data_preprocessor", None), "pad_size_divisor", 1) or 1)
    padded = [tuple(-(-int(v) // divisor) * divisor for v in im["img_shape"]) for im in images]
    first: Dict[Tuple[int, ...], int] = {}
    for im, shape in zip(images, padded):
        first.setdefault(shape, im["img_id"])
    mode = mode or getattr(stage, "flops_mode", "tensor")
    cost = {shape: mmdet_gflops(stage.model, [load_item(img_id)], mode) for shape, img_id in first.items()}
    return np.array([cost[s] for s in padded], dtype=np.float64), len(cost)


def item_loader(dataset: Any) -> Callable[[int], dict]:
    """``img_id`` → the item of an mmdet dataset (ids looked up once, images decoded on demand)."""
    index = {int(dataset.get_data_info(i)["img_id"]): i for i in range(len(dataset))}
    return lambda img_id: dataset[index[int(img_id)]]


def cascade_gflops_report(detector: Any, images: Sequence[dict], load_item: Callable[[int], dict],
                          mode: Optional[str] = None, answered: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Each stage's GFLOPs per image (alone, every image at its own size) and the cascade's average.

    Args:
        detector: The :class:`TinySaverDetector`.
        images: ``{"img_id", "ori_shape", "img_shape"}`` per image, with ``"stage"`` (the stage that
            answered it, :attr:`TinySaverCascadeMetric.images`) for the cascade's measured average:
            the mean over the images of the costs of the stages each image reached.
        load_item: ``img_id`` → dataset item (:func:`item_loader`).
        mode: What mmdet stages trace (:func:`mmdet_gflops`); None: each stage's ``flops_mode``.
        answered: Without routing (no ``"stage"``), shares of images answered per stage: the
            cascade's estimate ``Σ_k reach_k · mean gflops_k`` (:func:`cascade_cost`).

    Returns:
        ``stages`` (name, gflops and gmacs = mean per image, distinct input shapes), ``images``,
        ``answered``, ``cascade_gflops``, ``convention``, and ``per_image`` (``img_ids`` and each
        stage's ``gflops`` per image, for detection records).
    """
    if not images:
        raise ValueError("no images to cost (did the evaluation run?)")
    stages, per_image = [], []
    for stage in detector.stages:
        cost, shapes = stage_image_gflops(stage, images, load_item, mode)
        per_image.append(cost)
        stages.append({"name": stage.name, "gflops": float(cost.mean()), "gmacs": float(cost.mean()) / 2,
                       "distinct_input_shapes": shapes})
    costs = np.stack(per_image)  # [N stages, M images]
    report: Dict[str, Any] = {"convention": "GFLOPs = 2 x GMACs (ultralytics' and the paper's Table 4); "
                                            "mmengine.analysis counts MACs and is doubled; each image at the size "
                                            "each stage ran it at",
                              "stages": stages, "images": len(images)}
    if all("stage" in im for im in images):
        answer = np.array([im["stage"] for im in images])
        reached = np.arange(len(stages))[:, None] <= answer[None, :]
        report["answered"] = [float(np.mean(answer == k)) for k in range(len(stages))]
        report["cascade_gflops"] = float((costs * reached).sum(axis=0).mean())
    elif answered is not None:
        report["answered"] = [float(a) for a in answered]
        report["cascade_gflops"] = cascade_cost(answered, [s["gflops"] for s in stages])
        report["cascade_gflops_from"] = "shares answered x each stage's mean cost (no per-image routing)"
    report["per_image"] = {"img_ids": [int(im["img_id"]) for im in images], "gflops": costs.tolist()}
    return report


__all__ = ["cascade_gflops_report", "stage_image_gflops", "item_loader"]
