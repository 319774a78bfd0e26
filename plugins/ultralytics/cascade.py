"""``YOLOCascade``: a TinySaver cascade of ultralytics YOLO models, with ultralytics' own habits.

``predict`` returns ordinary ultralytics ``Results``; ``val`` returns ultralytics' ``DetMetrics``
(mAP50-95, mAP50, precision, recall computed by ultralytics' metric code), each with what the
cascade adds: which stage answered each image, with which confidence, at what cost. Any number of
stages, cheapest first, run by the core's one routing routine (:func:`tinysaver.routing.route`):
stage 1 sees every image, stage k+1 only the images whose image-level confidence at stage k is
below ``thresholds[k]``.

Examples:
    >>> from tinysaver.plugins.ultralytics import YOLOCascade
    >>> cascade = YOLOCascade(["yolov8n.pt", "yolov8x.pt"], thresholds=[0.5], imgsz=[320, 640])  # doctest: +SKIP
    >>> for r in cascade.predict("images/", conf=0.001):          # doctest: +SKIP
    ...     print(r.path, r.tinysaver_stage, r.tinysaver_conf, r.boxes.xyxy)
    >>> metrics = cascade.val(data="coco.yaml", batch=16)        # doctest: +SKIP
    >>> metrics.box.map, metrics.tinysaver["answered"], metrics.tinysaver["gflops"]  # doctest: +SKIP

Command line (``tinysaver yolo --help``)::

    tinysaver yolo val saver=yolov8n.pt base=yolov8x.pt data=coco.yaml threshold=0.5 imgsz=320,640

Settings. ``val`` uses ultralytics' val settings (conf 0.001, NMS IoU 0.7, multi-label NMS, max_det
300), ``predict`` ultralytics' predict settings (conf 0.25, one label per box): the image confidence
(by default the mean score of the boxes scoring at least 0.05) is computed on the boxes a stage
keeps, so the two modes route alike only with the same ``conf``.

Letterbox policy: a stage's answer on an image never depends on the other images of its batch.
``predict``: every image is letterboxed on its own to the smallest stride-multiple rectangle (what
ultralytics does for an image alone; :mod:`tinysaver.plugins.ultralytics.model`), ``rect=False``
to the square.
``val``: ultralytics' val dataset letterboxes each image to its own rectangle (the shape
ultralytics' rectangular val gives a batch of one: long side ``imgsz``, padded up to a stride
multiple plus half a stride), ``rect=False`` to the square; images of one shape are batched
together. So ``val`` equals ``YOLO(model).val(rect=False)`` at any batch size, and
``YOLO(model).val(rect=True, batch=1)``, when one stage answers everything (threshold 0: the first;
above 1: the last; "above 1" holds for confidences in [0, 1]: ``box_count`` needs +inf).
``YOLO.val``'s default, rectangular batches, letterboxes an image by the widest image of its batch:
that is the batch dependence this policy removes. On COCO val2017 itself ``YOLO.val`` turns
``save_json`` on and replaces mAP50-95 and mAP50 in the stats it returns by a COCO evaluation
(faster-coco-eval); the cascade always reports ultralytics' own metric code, so compare it with
``YOLO.val(save_json=False)`` there (COCO's own AP of the cascade: ``records=`` and
``tinysaver det-tradeoff``).

Costs: GFLOPs per image at the shape each stage actually ran the image at (thop via ultralytics'
``get_flops``, counted once per shape); the cascade's average is the mean over images of the
costs of the stages each image reached.

Detection records: ``val(records=DIR)`` runs every stage on every image and writes one detection
record per stage (``saver.npz``/``base.npz`` or ``stage0.npz``…, boxes in original image
coordinates) plus the split's labels as a COCO annotation file (:func:`yolo_to_coco`), for
``tinysaver det-tradeoff`` and ``tinysaver det-signals``.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from tinysaver.confidence import MIN_BOX_SCORE, build_confidence
from tinysaver.detection import DEFAULT_MAX_DETS, DetRecord, save_det_record
from tinysaver.errors import TinySaverError
from tinysaver.io import write_json
from tinysaver.routing import Stage, route, take
from tinysaver.thresholds import ThresholdsMixin

from .coco import Names, image_ids_for, record_names, resolve_names, yolo_to_coco
from .model import YOLOModel
from .val import StageVal


class YOLOCascade(ThresholdsMixin):
    """Ultralytics YOLO models in order of cost, answering per image (TinySaver for ultralytics).

    Args:
        models: Checkpoints (``.pt``), cheapest first; any ``YOLO(...)``-loadable detector (YOLOv8,
            YOLOv10, YOLO-World, ...). Load only checkpoints you trust: a ``.pt`` is a pickle.
        thresholds: One per stage but the last: an image is answered by stage k when its
            confidence there is ``>= thresholds[k]`` (float64); +inf: stage k never answers.
        threshold: Shorthand for ``thresholds=[threshold]`` (two stages).
        imgsz: Letterbox size, one for every stage or one per stage (default: each checkpoint's
            training size).
        confidence: Registered detection confidence (:mod:`tinysaver.confidence`).
        min_score: Boxes scoring below it are ignored by the confidence (0.05, the paper's).
        names: Class names of the results and metrics: ``'coco'`` (COCO's 80, e.g. for a
            checkpoint whose names are '0'…'79'), a list or a dict; default the first model's.
        device: ``cpu``, ``0``, ``cuda:0``...
    """

    def __init__(self, models: Sequence[str], thresholds: Optional[Sequence[float]] = None,
                 threshold: Optional[float] = None, imgsz: Union[int, Sequence[int], None] = None,
                 confidence: str = "mean_box_score", min_score: float = MIN_BOX_SCORE, names: Names = None,
                 device: str = "cpu") -> None:
        if len(models) < 2:
            raise TinySaverError("a cascade needs at least two models")
        sizes = list(imgsz) if isinstance(imgsz, (list, tuple)) else [imgsz] * len(models)
        if len(sizes) != len(models):
            raise TinySaverError(f"imgsz: {len(sizes)} sizes for {len(models)} models")
        self.stages: List[YOLOModel] = []
        for path, size in zip(models, sizes):
            stage = YOLOModel(str(path), imgsz=640, device=str(device))
            stage.imgsz = int(size or stage.yolo.overrides.get("imgsz", 640))
            self.stages.append(stage)
        counts = {len(s.yolo.names) for s in self.stages}
        if len(counts) != 1:
            raise TinySaverError(f"the models predict different numbers of classes {sorted(counts)}: a cascade "
                                 "needs one class list")
        self.names = resolve_names(names) or dict(self.stages[0].yolo.names)
        if len(self.names) != counts.pop():
            raise TinySaverError(f"names: {len(self.names)} names for models with {len(self.stages[0].yolo.names)} classes")
        if threshold is not None and thresholds is not None:
            raise TinySaverError("give threshold or thresholds, not both")
        self.thresholds = list(thresholds) if thresholds is not None else [0.5 if threshold is None else threshold]
        self.confidence = build_confidence(confidence, min_score=min_score)
        self.confidence_name, self.min_score, self.device = confidence, float(min_score), str(device)

    # --- settings --------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def stage_names(self) -> List[str]:
        """``<checkpoint stem>@<imgsz>`` per stage (the same checkpoint may run at two sizes)."""
        return [f"{Path(s.checkpoint).stem}@{s.imgsz}" for s in self.stages]

    def _image_confidence(self, scores: Sequence[np.ndarray]) -> np.ndarray:
        return self.confidence(list(scores))

    # --- predict -----------------------------------------------------------------------------------
    def predict(self, source: Any, stream: bool = False, batch: int = 16, **kwargs: Any) -> Any:
        """ultralytics-style prediction: one ``Results`` per image, by the stage that answered it.

        Args:
            source: What ``YOLO.predict`` takes (a path, folder, glob, list of paths or of BGR
                arrays, a PIL image...). Each image is decoded once, whatever the number of stages.
            stream: Yield the results one by one instead of a list.
            batch: Images routed together (each stage runs on the open images of a batch).
            **kwargs: ultralytics predict arguments for every stage (``conf``, ``iou``, ``max_det``,
                ``rect``...); ``imgsz`` is per stage (the constructor's).

        Returns:
            ``Results`` (or a generator of them), each with ``tinysaver_stage`` (index of the
            answering stage), ``tinysaver_model`` (its name), ``tinysaver_conf`` (its image
            confidence) and ``tinysaver_gflops`` (the cost the image paid: the stages it reached, at
            its letterboxed shape).
        """
        if "imgsz" in kwargs:
            raise TinySaverError("imgsz is per stage: give it to YOLOCascade(imgsz=[...])")
        check_ultralytics_args("predict", kwargs)
        gen = self._predict(source, batch, kwargs)
        return gen if stream else list(gen)

    def _predict(self, source: Any, batch: int, kwargs: Dict[str, Any]) -> Iterator[Any]:
        from ultralytics.data import load_inference_source

        dataset = load_inference_source(source, batch=batch)
        rect = bool(kwargs.get("rect", True))
        for paths, images, _ in dataset:
            for start in range(0, len(images), batch):
                chunk, chunk_paths = list(images[start:start + batch]), list(paths[start:start + batch])
                stages = [Stage(model=lambda imgs, s=s: s.predict_results(imgs, **kwargs),
                                confidence=lambda results: self._image_confidence(
                                    [r.boxes.conf.cpu().numpy() for r in results]),
                                threshold=t, name=name)
                          for s, t, name in zip(self.stages, [*self.thresholds, math.inf], self.stage_names)]
                routed = route(stages, [chunk] * len(stages), gather=take)
                shapes = [img.shape[:2] for img in chunk]
                costs = np.stack([s.image_gflops(shapes, rect=rect) for s in self.stages])  # [N, B]
                answered: List[Any] = [None] * len(chunk)
                for run in routed.runs:
                    for pos, row in enumerate(run.indices.tolist()):
                        if run.exits[pos]:
                            answered[row] = run.outputs[pos]
                for row, result in enumerate(answered):
                    k = int(routed.stage[row])
                    result.path = str(chunk_paths[row])
                    result.names = self.names
                    result.tinysaver_stage, result.tinysaver_model = k, self.stage_names[k]
                    result.tinysaver_conf = float(routed.confidence[row])
                    result.tinysaver_gflops = float(costs[:k + 1, row].sum())
                    yield result

    # --- val ---------------------------------------------------------------------------------------
    def val(self, data: str, batch: int = 16, conf: float = 0.001, iou: float = 0.7,
            max_det: int = DEFAULT_MAX_DETS[1], rect: bool = True, split: str = "val",
            records: Optional[str] = None, verbose: bool = True, progress: bool = True, **kwargs: Any) -> Any:
        """ultralytics-style validation of the cascade on a YOLO dataset.

        Args:
            data: The dataset ``.yaml`` (ultralytics format).
            batch: Images routed together.
            conf, iou, max_det: ultralytics' val settings (its defaults).
            rect: Each image in its own rectangle (True) or the ``imgsz`` square (False); see the
                module docstring.
            split: ``val``, ``test``...
            records: Write one detection record per stage (every stage on every image) and the
                split's COCO annotation file into this folder, for ``tinysaver det-tradeoff``.
            verbose: Print ultralytics' table and the cascade's summary.
            progress: Show a progress bar.
            **kwargs: Other ultralytics val arguments for every stage (``agnostic_nms``,
                ``single_cls``...).

        Returns:
            ultralytics' ``DetMetrics`` of the cascade (``.box.map``, ``.box.map50``, ``.box.mp``,
            ``.box.mr``, ``.results_dict``), with ``.tinysaver``: thresholds, share of images
            answered per stage, each stage's average GFLOPs per image and the cascade's.
        """
        for key in ("imgsz", "save_json", "plots"):
            if key in kwargs:
                raise TinySaverError(f"{key} is not a cascade val argument" + (" (it is per stage: YOLOCascade(imgsz=...))"
                                                                               if key == "imgsz" else ""))
        args = dict(data=str(data), batch=int(batch), conf=conf, iou=iou, max_det=max_det, rect=bool(rect),
                    split=split, device=self.device, plots=False, save_json=False, verbose=verbose, **kwargs)
        check_ultralytics_args("val", args)
        if not Path(data).is_file() or Path(data).suffix.lower() not in (".yaml", ".yml"):
            raise TinySaverError(f"{data}: not a dataset .yaml file" if Path(data).exists()
                                 else f"{data}: dataset file not found")
        with tempfile.TemporaryDirectory(prefix="tinysaver-yolo-val-") as save_dir:  # ultralytics wants one
            vals = [StageVal(stage, {**args, "imgsz": stage.imgsz}, Path(save_dir)) for stage in self.stages]
            return self._val(vals, data, split, batch, records, verbose, progress)

    def _val(self, vals: List[StageVal], data: str, split: str, batch: int, records: Optional[str], verbose: bool,
             progress: bool) -> Any:
        from tqdm import tqdm

        files = [list(v.dataset.im_files) for v in vals]
        if any(f != files[0] for f in files[1:]):
            raise TinySaverError(f"{data}: the stages list the {split} images in different orders")
        n = len(files[0])
        stage_of, conf_of = np.zeros(n, np.int64), np.zeros(n, np.float64)
        # each stage's GFLOPs on each image, at the shape it runs (or would run) the image at
        costs = np.array([[v.stage.gflops_at(*v.shape_of(i)) for i in range(n)] for v in vals])
        dets: List[List[Any]] = [[None] * n for _ in self.stages]
        metrics = vals[0].metrics
        thresholds = [*self.thresholds, math.inf]
        bar = tqdm(total=n, desc="tinysaver yolo val", unit="image", disable=not progress)
        for start in range(0, n, batch):
            indices = np.arange(start, min(start + batch, n))
            if records:  # every stage on every image; routing still by the one routine
                every = [v.run(indices, boxes=True) for v in vals]
                stages = [Stage(model=lambda idx, out=out: [out[i - start] for i in idx.tolist()],
                                confidence=self._confidence_of_outputs, threshold=t)
                          for out, t in zip(every, thresholds)]
            else:
                stages = [Stage(model=lambda idx, v=v: v.run(idx), confidence=self._confidence_of_outputs, threshold=t)
                          for v, t in zip(vals, thresholds)]
            routed = route(stages, [indices] * len(stages), gather=take)
            chosen: List[Optional[dict]] = [None] * len(indices)
            for run in routed.runs:
                for pos, row in enumerate(run.indices.tolist()):
                    if run.exits[pos]:
                        chosen[row] = run.outputs[pos]
            if records:
                for k, out in enumerate(every):
                    for row, o in enumerate(out):
                        dets[k][start + row] = o["dets"]
            for row, out in enumerate(chosen):
                metrics.update_stats(out["stat"])  # dataset order, as YOLO.val
            stage_of[indices], conf_of[indices] = routed.stage, routed.confidence
            bar.update(len(indices))
        bar.close()
        v0 = vals[0].validator
        v0.seen = n
        v0.metrics = metrics
        metrics.names = self.names
        metrics.process(save_dir=v0.save_dir, plot=False)
        summary = self._cost_summary(stage_of, conf_of, costs)
        metrics.tinysaver = summary
        if verbose:
            v0.names = self.names
            v0.print_results()
            print(cascade_summary_text(summary))
        if records:
            self._write_records(records, files[0], dets, costs, data, split)
        v0.metrics = vals[0].recorder
        return metrics

    def _confidence_of_outputs(self, outputs: Sequence[dict]) -> np.ndarray:
        return self._image_confidence([o["scores"] for o in outputs])

    def _cost_summary(self, stage_of: np.ndarray, conf_of: np.ndarray, costs: np.ndarray) -> Dict[str, Any]:
        """Shares answered and GFLOPs: each stage alone (its mean cost over every image) and the
        cascade (mean over images of the costs of the stages each image reached)."""
        n_stages, n = costs.shape
        reached = np.arange(n_stages)[:, None] <= stage_of[None, :]
        return {"stages": self.stage_names, "thresholds": [t if math.isfinite(t) else "inf" for t in self.thresholds],
                "confidence": self.confidence_name, "min_score": self.min_score, "images": int(n),
                "answered": [float(np.mean(stage_of == k)) for k in range(n_stages)],
                "stage_gflops": [float(c.mean()) for c in costs],
                "gflops": float((costs * reached).sum(axis=0).mean()),
                "convention": "GFLOPs = 2 x multiply-adds, ultralytics' get_flops; each image at the shape it ran at",
                "image_stage": stage_of.tolist(), "image_confidence": conf_of.tolist()}

    def _write_records(self, folder: str, files: List[str], dets: List[List[Any]],
                       costs: np.ndarray, data: str, split: str) -> None:
        folder_path = Path(folder)
        ann = yolo_to_coco(data, split, names=self.names)
        ids = image_ids_for(files)
        order = {int(img["id"]): i for i, img in enumerate(ann["images"])}
        if sorted(order) != sorted(ids.tolist()):
            raise TinySaverError(f"{data}: records and annotations list different images")
        cat_ids = [c["id"] for c in ann["categories"]]
        recs = []
        for k, name in enumerate(self.stage_names):
            d = dets[k]
            rec = DetRecord.from_lists(name, float(costs[k].mean()), ids, [x[0] for x in d], [x[1] for x in d],
                                       [x[2] for x in d], cat_ids)
            rec.max_dets, rec.image_gflops = DEFAULT_MAX_DETS, costs[k].copy()
            recs.append(rec)
        write_json(folder_path / f"instances_{split}.json", ann)
        for file_name, rec in zip(record_names(len(recs)), recs):
            save_det_record(folder_path / f"{file_name}.npz", rec)


def check_ultralytics_args(mode: str, args: Mapping[str, Any]) -> None:
    """ultralytics' own check of the arguments a cascade passes on (known key, type, range), as one
    line: an unknown key, ``conf=2`` or ``rect=maybe`` is a :class:`TinySaverError`, not a traceback
    from inside the first stage (or, for an unknown key, ultralytics' whole command-line help)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, get_cfg

    unknown = sorted(set(args) - set(DEFAULT_CFG_DICT))
    if unknown:
        raise TinySaverError(f"{unknown[0]!r} is not an ultralytics {mode} argument (see `yolo cfg`)")
    try:
        get_cfg(overrides={**args, "mode": mode})
    except (SyntaxError, TypeError, ValueError) as exc:
        raise TinySaverError(" ".join(str(exc).split())[:200]) from None


def cascade_summary_text(summary: Mapping[str, Any]) -> str:
    """The lines ``val`` prints after ultralytics' table."""
    lines = [f"TinySaver {' → '.join(summary['stages'])}  thresholds {', '.join(map(str, summary['thresholds']))}  "
             f"({summary['confidence']}, min score {summary['min_score']:g})"]
    for name, share, g in zip(summary["stages"], summary["answered"], summary["stage_gflops"]):
        lines.append(f"  answered by {name:<24} {share:7.1%}   {g:.3f} GFLOPs/image alone")
    lines.append(f"  cascade: {summary['gflops']:.3f} GFLOPs/image on average over {summary['images']} images")
    lines.append(f"  ({summary['convention']})")
    return "\n".join(lines)


__all__ = ["YOLOCascade", "check_ultralytics_args", "cascade_summary_text"]
