"""YOLO datasets and the records of a cascade, in COCO's terms: class names, image ids, a split's
labels as a COCO annotation file (:func:`yolo_to_coco`, for ``tinysaver det-tradeoff``) and the file
names of a cascade's detection records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from tinysaver.errors import TinySaverError
from tinysaver.io import write_json

Names = Union[str, Sequence[str], Mapping[int, str], None]


def coco_names() -> Dict[int, str]:
    """COCO's 80 class names in YOLO's order, from the dataset file ultralytics ships (offline)."""
    from ultralytics.utils import ROOT, YAML

    return {int(k): str(v) for k, v in YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"].items()}


def resolve_names(names: Names) -> Optional[Dict[int, str]]:
    """Class names as ``{index: name}`` from ``'coco'``, a list or a dict; None stays None."""
    if names is None:
        return None
    if isinstance(names, str):
        if names != "coco":
            raise TinySaverError(f"names must be 'coco', a list or a dict of class names, got {names!r}")
        return coco_names()
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    return {i: str(n) for i, n in enumerate(names)}


def image_ids_for(files: Sequence[str]) -> np.ndarray:
    """COCO image ids of a split's image files: the file stems when they are all distinct integers
    (COCO's own ``000000397133.jpg``), else 1, 2, … in sorted path order. :func:`yolo_to_coco` and
    the records of :meth:`YOLOCascade.val` both use this, so they always agree."""
    stems = [Path(f).stem for f in files]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return np.array([int(s) for s in stems], dtype=np.int64)
    rank = {f: i + 1 for i, f in enumerate(sorted(files))}
    return np.array([rank[f] for f in files], dtype=np.int64)


def record_names(n: int) -> List[str]:
    """File names of a cascade's detection records: ``saver``/``base`` for two stages, ``stage0``…
    otherwise (as ``tools/test.py --dump-records``)."""
    return ["saver", "base"] if n == 2 else [f"stage{k}" for k in range(n)]


def yolo_to_coco(data: str, split: str = "val", out: Optional[str] = None, names: Names = None) -> Dict[str, Any]:
    """A YOLO dataset split's labels as a COCO annotation file (for ``det-tradeoff``).

    Images: ``id`` from :func:`image_ids_for`, ``file_name`` relative to the dataset's image folder,
    ``width``/``height`` as ultralytics reads them (EXIF-corrected). Boxes: the label's normalised
    ``cx cy w h`` times the image size, as ``[x, y, w, h]``; ``area`` = box area (YOLO labels have no
    masks); ``iscrowd`` 0. Categories: ``id`` = class index + 1, named from the dataset (or ``names``).

    Args:
        data: The dataset ``.yaml``.
        split: The split to convert.
        out: Write the JSON here (atomically), if given.
        names: Class names overriding the dataset's.

    Returns:
        The COCO dictionary.
    """
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    if not Path(data).is_file():
        raise TinySaverError(f"{data}: dataset file not found")
    info = check_det_dataset(str(data), split=split)
    if not info.get(split):
        raise TinySaverError(f"{data}: no split {split!r}")
    # labels only (rect=False keeps each label's image shape); the images are not decoded
    dataset = build_yolo_dataset(get_cfg(overrides={"data": str(data), "rect": False}), info[split], 1, info,
                                 mode="val", stride=32)
    class_names = resolve_names(names) or dict(info["names"])
    files = list(dataset.im_files)
    ids = image_ids_for(files)
    root = Path(files[0]).parent if files else Path(".")
    images, annotations = [], []
    for image_id, label in sorted(zip(ids.tolist(), dataset.labels), key=lambda x: x[0]):
        h, w = (int(v) for v in label["shape"])
        path = Path(label["im_file"])
        images.append({"id": int(image_id), "file_name": str(path.relative_to(root)) if path.is_relative_to(root)
                       else path.name, "width": w, "height": h})
        boxes = np.asarray(label["bboxes"], dtype=np.float64).reshape(-1, 4)
        for cls, (cx, cy, bw, bh) in zip(np.asarray(label["cls"]).reshape(-1).tolist(), boxes.tolist()):
            x, y, ww, hh = (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h
            annotations.append({"id": len(annotations) + 1, "image_id": int(image_id), "category_id": int(cls) + 1,
                                "bbox": [x, y, ww, hh], "area": ww * hh, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": int(k) + 1, "name": n} for k, n in sorted(class_names.items())]}
    if out:
        write_json(out, coco)
    return coco


__all__ = ["Names", "coco_names", "resolve_names", "image_ids_for", "record_names", "yolo_to_coco"]
