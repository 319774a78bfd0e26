"""Ultralytics-style cascade of YOLO models: `tinysaver yolo val|predict|coco key=value ...`.

In the style of `yolo val` / `yolo predict` (key=value arguments), for a TinySaver cascade of
ultralytics models (tinysaver.plugins.ultralytics.YOLOCascade):

  val      ultralytics' metrics of the cascade (mAP50-95, mAP50, precision, recall, by ultralytics'
           own code) + share of images answered per stage and average GFLOPs per image
  predict  ultralytics Results per image: the answering stage, its confidence, the boxes
  coco     a YOLO dataset split's labels as a COCO annotation file (for det-tradeoff)

Keys: models=a.pt,b.pt,... (or saver=a.pt base=b.pt) thresholds=t1,... (or threshold=t)
imgsz=320,640 (one, or one per stage) data=DATA.yaml (val, coco) source=PATH (predict)
names=coco (COCO's 80 class names, for checkpoints whose names are '0'...'79')
confidence=mean_box_score min_score=0.05 device=cpu batch=16 split=val
json=OUT.json (val: metrics and costs; predict: one entry per image; coco: the annotation file)
records=DIR (val: every stage on every image, one detection record per stage + the split's COCO
annotations, for `tinysaver det-tradeoff` / `det-signals`); any other key goes to ultralytics
(conf, iou, max_det, rect, agnostic_nms, ...). Letterbox policy and settings: see the plugin.

Example (the detection data and weights `make demo` uses; the checkpoint at two sizes):
  tinysaver yolo val models=weights/det/yolov8n_fashion-det.pt,weights/det/yolov8n_fashion-det.pt \\
      imgsz=128,192 threshold=0.5 data=data/fashion_det/data.yaml json=yolo_val.json
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List

from tinysaver.detection import detection_confidence
from tinysaver.errors import TinySaverError
from tinysaver.io import check_outputs, write_json

from .cascade import YOLOCascade
from .coco import yolo_to_coco

MODES = ("val", "predict", "coco")
CASCADE_KEYS = ("models", "saver", "base", "thresholds", "threshold", "imgsz", "names", "confidence", "min_score",
                "device")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=MODES)
    p.add_argument("args", nargs="*", metavar="key=value", help="settings, ultralytics style (see above)")


def parse_value(text: str) -> Any:
    """ultralytics-style values: numbers, true/false, none, lists with commas."""
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part != ""]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_pairs(pairs: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise TinySaverError(f"arguments are key=value, got {pair!r}")
        if key in out:
            raise TinySaverError(f"{key} given twice")
        out[key] = parse_value(value)
    return out


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def build_cascade(cfg: Dict[str, Any]):
    """A :class:`YOLOCascade` from the parsed keys (removed from ``cfg``)."""
    if "models" in cfg and ("saver" in cfg or "base" in cfg):
        raise TinySaverError("give models=... or saver=... base=..., not both")
    if "models" in cfg:
        models = [str(m) for m in _as_list(cfg.pop("models"))]
    elif "saver" in cfg and "base" in cfg:
        models = [str(cfg.pop("saver")), str(cfg.pop("base"))]
    else:
        raise TinySaverError("name the models: models=a.pt,b.pt,... or saver=a.pt base=b.pt")
    if "threshold" in cfg and "thresholds" in cfg:
        raise TinySaverError("give threshold or thresholds, not both")
    thresholds = _as_list(cfg.pop("thresholds", cfg.pop("threshold", 0.5)))
    options = {k: cfg.pop(k) for k in ("imgsz", "names", "confidence", "min_score", "device") if k in cfg}
    values = [t for t in thresholds if not isinstance(t, (int, float)) or isinstance(t, bool)]
    if values or any(t != t for t in thresholds):  # t != t: NaN
        raise TinySaverError(f"thresholds must be numbers ('inf': nothing exits there), got {values or thresholds}")
    sizes = _as_list(options.get("imgsz", 640))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 32 for v in sizes):
        raise TinySaverError(f"imgsz must be whole numbers of pixels >= 32 (one, or one per stage), got {options['imgsz']}")
    if not isinstance(options.get("min_score", 0.05), (int, float)):
        raise TinySaverError(f"min_score must be a number in [0, 1], got {options['min_score']!r}")
    detection_confidence(str(options.get("confidence", "mean_box_score")), options.get("min_score", 0.05),
                         option="confidence=")
    return YOLOCascade(models, thresholds=[float(t) for t in thresholds], **options)


def run(args: argparse.Namespace) -> int:
    cfg = parse_pairs(args.args)
    out = cfg.pop("json", None)
    check_outputs({"json=": out, "records=": cfg.get("records")}, directories=["records="])
    if not isinstance(cfg.get("batch", 1), int) or cfg.get("batch", 1) < 1:
        raise TinySaverError(f"batch must be a whole number >= 1, got {cfg['batch']!r}")
    if args.mode == "coco":
        if "data" not in cfg:
            raise TinySaverError("coco needs data=DATA.yaml")
        coco = yolo_to_coco(str(cfg.pop("data")), str(cfg.pop("split", "val")), out=out, names=cfg.pop("names", None))
        if cfg:
            raise TinySaverError(f"unknown key(s) for coco: {', '.join(sorted(cfg))}")
        print(f"{len(coco['images'])} images, {len(coco['annotations'])} boxes, {len(coco['categories'])} classes"
              + (f" -> {out}" if out else ""))
        return 0
    cascade = build_cascade(cfg)
    if args.mode == "val":
        if "data" not in cfg:
            raise TinySaverError("val needs data=DATA.yaml")
        data = str(cfg.pop("data"))
        try:
            metrics = cascade.val(data, **cfg)
        except FileNotFoundError as exc:  # the dataset file or its images
            raise TinySaverError(f"data={data}: {' '.join(str(exc).split())[:200]}") from None
        if out:
            summary = {k: v for k, v in metrics.tinysaver.items() if not k.startswith("image_")}
            write_json(out, {"metrics": {k: float(v) for k, v in metrics.results_dict.items()}, "tinysaver": summary})
        return 0
    if "source" not in cfg:
        raise TinySaverError("predict needs source=PATH")
    source = cfg.pop("source")
    if isinstance(source, str) and "://" not in source and not any(c in source for c in "*?[") \
            and not Path(source).exists():
        raise TinySaverError(f"source={source}: no such file or folder")
    results = cascade.predict(source, stream=True, **cfg)
    rows = []
    for r in results:
        boxes = r.boxes
        rows.append({"path": r.path, "stage": r.tinysaver_stage, "model": r.tinysaver_model,
                     "confidence": r.tinysaver_conf, "gflops": r.tinysaver_gflops,
                     "boxes": boxes.xyxy.cpu().numpy().round(2).tolist(), "scores": boxes.conf.cpu().numpy().tolist(),
                     "classes": [r.names[int(c)] for c in boxes.cls.cpu().numpy()]})
        print(f"{r.path}: {r.tinysaver_model} (confidence {r.tinysaver_conf:.3f}), {len(boxes)} boxes")
    if out:
        write_json(out, rows)
    return 0
