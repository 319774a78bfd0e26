"""A small COCO-format detection dataset made from real images: Fashion-MNIST items composited on
textured canvases, with exact boxes (the tight box of each item's pixels).

It exists so the detection path (YOLO saver, mmdet base, COCO AP, records, thresholds) runs offline
end to end on real pixels; there are no COCO images or COCO detectors on this machine.

Layout written under ``root``::

    images/<split>/<id>.jpg                 the canvases (BGR JPEG)
    annotations/instances_<split>.json      COCO format, category ids 1..10 in class order
    labels/<split>/<id>.txt                 YOLO format (class cx cy w h, normalised)
    data.yaml                               ultralytics dataset file (train/val)

Examples:
    >>> make_fashion_det("data/fashion_det", {"train": 400, "val": 100})  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import numpy as np

from tinysaver.io import atomic_open, write_json, write_text

from .datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

CANVAS = 192
# Fashion-MNIST split each detection split draws its items from (never the same items twice).
SOURCE_SPLIT = {"train": "train", "val": "test"}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # Smooth colour noise: a low-resolution random field upsampled, so items stand out but not trivially.
    import cv2

    low = rng.integers(0, 90, (6, 6, 3)).astype(np.uint8)
    bg = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    bg += rng.normal(0, 6, bg.shape)
    return np.clip(bg, 0, 255)


def _place(rng: np.random.Generator, boxes: List[Tuple[int, int, int, int]], side: int, size: int):
    for _ in range(30):
        x, y = rng.integers(0, size - side, 2)
        cand = (int(x), int(y), int(x) + side, int(y) + side)
        if all(_iou(cand, b) < 0.15 for b in boxes):
            return cand
    return None


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _canvas(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, size: int):
    import cv2

    img = _background(rng, size)
    anns, placed = [], []
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(0, len(items)))
        side = int(rng.integers(40, 88))
        box = _place(rng, placed, side, size)
        if box is None:
            continue
        patch = cv2.resize(items[k], (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        tint = rng.uniform(0.6, 1.0, 3) * 255
        x0, y0, x1, y1 = box
        region = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = region * (1 - patch[..., None]) + patch[..., None] * tint
        ys, xs = np.nonzero(patch > 0.08)
        if len(xs) == 0:
            continue
        placed.append(box)
        tight = [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1]
        anns.append((int(labels[k]), [float(v) for v in tight]))
    return np.clip(img, 0, 255).astype(np.uint8), anns


def make_split(root: Path, split: str, num_images: int, seed: int = 0, size: int = CANVAS) -> Path:
    """Writes one split and returns its COCO annotation path (skipped when it already exists)."""
    import cv2

    ann_path = root / "annotations" / f"instances_{split}.json"
    if ann_path.exists():
        return ann_path
    items, labels = load_fashion_mnist(SOURCE_SPLIT.get(split, "test"))
    rng = np.random.default_rng(seed + (0 if split == "train" else 1))
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img, anns = _canvas(rng, items, labels, size)
        name = f"{i:06d}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        with atomic_open(root / "images" / split / name, "wb") as f:
            f.write(buf.tobytes())
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        yolo_lines = []
        for cls, (x0, y0, x1, y1) in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
            yolo_lines.append(f"{cls} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
                              f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}")
        write_text(root / "labels" / split / f"{i:06d}.txt", "\n".join(yolo_lines) + ("\n" if yolo_lines else ""))
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    write_json(ann_path, {"images": images, "annotations": annotations, "categories": categories})
    return ann_path


def make_fashion_det(root: os.PathLike | str, splits: Mapping[str, int], seed: int = 0) -> Dict[str, Path]:
    """Writes every split plus ultralytics' ``data.yaml``; returns the annotation paths."""
    root = Path(root)
    paths = {split: make_split(root, split, n, seed) for split, n in splits.items()}
    names = "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(FASHION_MNIST_CLASSES))
    write_text(root / "data.yaml", f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return paths
