"""MMDetection plugin: a YOLOv8 saver in front of any mmdet detector, as an mmdet model.

Importing this module (a config's ``custom_imports=dict(imports=['tinysaver.plugins.mmdet'])``)
registers:

- ``TinySaverDetector`` in mmdet's ``MODELS``: a plain :class:`~mmdet.models.BaseDetector` (not a
  ``MODEL_WRAPPERS`` entry), so mmengine's own DDP wrapping and checkpoint handling keep working.
  ``test_step`` → pass-through preprocessing → ``predict``: YOLO answers every image from the
  original pixels (ultralytics' letterbox, BGR numpy in); only the images whose confidence is below
  the threshold are preprocessed by the base's own ``data_preprocessor`` and run by the base.
- ``TinySaverCascadeMetric`` in mmdet's ``METRICS``: exit ratio, the cascade's average GFLOPs and,
  optionally, detection records of both models for ``tinysaver det-tradeoff``.

Checkpoints: the base's mmdet checkpoint is loaded with torch's ``weights_only`` protection on.
Checkpoints saved by mmengine's Runner also pickle numpy arrays and message-hub objects
(``HistoryBuffer``, ``ConfigDict``); numpy's array/dtype reconstructors are allow-listed, and the
mmengine objects are replaced by inert stand-ins (the cascade needs only the state dict), so no code
named by the file runs. The YOLO ``.pt`` is loaded by ultralytics (see :mod:`tinysaver.plugins.yolo`).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.evaluator import BaseMetric
from mmengine.structures import InstanceData

from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import METRICS, MODELS
from mmdet.structures import DetDataSample

from tinysaver.confidence import build_confidence
from tinysaver.detection import DetRecord, save_det_record
from tinysaver.errors import TinySaverError

from .yolo import Detections, YOLOSaver

SAVER_STAGE, BASE_STAGE = 0, 1


# --- checkpoints under weights_only -----------------------------------------------------------

class _Inert:
    """Stands in for a non-tensor object pickled in a checkpoint's metadata; holds its state only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert(*args)


def _inert_getattr(obj: Any, name: str) -> Any:
    # Only lookups on stand-ins are answered: any other getattr in a checkpoint is refused.
    if obj is _Inert or isinstance(obj, _Inert):
        return _Inert
    raise pickle.UnpicklingError(f"checkpoint asks for attribute {name!r} of {type(obj).__name__}: refused")


def _safe_globals() -> List[Any]:
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: List[Any] = [np.ndarray, np.dtype, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                          (multiarray.scalar, "numpy.core.multiarray.scalar"), multiarray._reconstruct, multiarray.scalar]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")]
    for name in ("mmengine.logging.history_buffer.HistoryBuffer", "mmengine.config.config.ConfigDict",
                 "mmengine.logging.message_hub.MessageHub"):
        allowed.append((_Inert, name))
    allowed.append((_inert_getattr, "builtins.getattr"))
    return allowed


def load_checkpoint_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The state dict of an mmdet/mmengine checkpoint, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise TinySaverError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise TinySaverError(f"{path}: refused by the weights_only loader ({first[:300]}); if you trust this "
                             f"file, re-save its state_dict alone") from None
    except Exception as exc:
        raise TinySaverError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise TinySaverError(f"{path}: no state_dict inside")
    return state


def resolve_mmdet_config(name: str) -> str:
    """``mmdet::dino/x.py`` → the config file the installed mmdet package ships (``.mim/configs``)."""
    import mmdet

    path = Path(mmdet.__file__).parent / ".mim" / "configs" / name.split("::", 1)[1]
    if not path.is_file():
        raise TinySaverError(f"{name}: not among the configs the installed mmdet ships ({path.parent})")
    return str(path)


def build_mmdet_model(config: Union[str, dict, Config], checkpoint: Optional[str] = None) -> BaseDetector:
    """Builds the ``model`` of an mmdet config (its ``custom_imports`` imported) and loads
    ``checkpoint`` strictly: a checkpoint that does not fit is an error, not a warning."""
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    if isinstance(config, str) and config.startswith("mmdet::"):
        config = resolve_mmdet_config(config)
    if isinstance(config, (str, Path)):
        if not Path(config).is_file():
            raise TinySaverError(f"{config}: base config not found (for Co-DINO, point MMDET_ROOT at an "
                                 f"mmdetection source checkout; see README)")
        config = Config.fromfile(str(config))
    model_cfg = config["model"] if "model" in config else config
    model = MODELS.build(model_cfg)
    if checkpoint:
        state = load_checkpoint_state_dict(checkpoint)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise TinySaverError(f"{checkpoint}: does not fit the base model (missing {list(missing)[:3]}, "
                                 f"unexpected {list(unexpected)[:3]})")
    return model.eval()


# --- the cascade detector ---------------------------------------------------------------------

@MODELS.register_module()
class TinySaverDetector(BaseDetector):
    """YOLOv8 saver + mmdet base with per-image routing (TinySaver, paper 4.5).

    Args:
        saver: ``dict(checkpoint=..., imgsz=640, conf=0.001, iou=0.7, max_det=300, half=False,
            class_map=None)``; ``class_map[k]`` is the dataset label of YOLO class k (identity when
            None: YOLO's 80 COCO classes are already in mmdet's order).
        base: ``dict(config=PATH_OR_DICT, checkpoint=PATH_OR_None)``.
        confidence: ``dict(type='mean_box_score', min_score=0.05)`` or another registered
            confidence function for detections (``max_box_score``, ``box_count``).
        threshold: An image exits at the saver when its confidence is ``>= threshold``.
        record_both: Run the base on every image too and attach both models' detections to the
            outputs (``saver_instances``/``base_instances``) for detection records; the returned
            ``pred_instances`` still follow the threshold.
        data_preprocessor: The cascade's own (pass-through) preprocessor; each model preprocesses
            its images itself.
    """

    def __init__(self, saver: dict, base: dict, confidence: Optional[dict] = None, threshold: float = 0.5,
                 record_both: bool = False, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(type="BaseDataPreprocessor"), init_cfg=init_cfg)
        saver = dict(saver)
        class_map = saver.pop("class_map", None)
        self.saver = YOLOSaver(**saver)
        self.saver_model = self.saver.model  # a submodule: moved by .to(), saved in state dicts
        self.class_map = None if class_map is None else np.asarray(class_map, dtype=np.int64)
        self.base = build_mmdet_model(base["config"], base.get("checkpoint"))
        conf_cfg = dict(confidence or dict(type="mean_box_score", min_score=0.05))
        self.confidence_name = conf_cfg.pop("type")
        self.confidence = build_confidence(self.confidence_name, **conf_cfg)
        self.threshold = float(threshold)
        self.record_both = record_both

    # BaseDetector's abstract interface: the cascade only predicts.
    def loss(self, batch_inputs: Any, batch_data_samples: Any) -> dict:
        raise NotImplementedError("TinySaverDetector is inference-only: train the saver and the base on their own")

    def _forward(self, batch_inputs: Any, batch_data_samples: Any = None) -> Any:
        raise NotImplementedError("count FLOPs per model with tools/get_flops.py (the cascade's cost depends on r)")

    def extract_feat(self, batch_inputs: Any) -> Any:
        raise NotImplementedError("the saver and the base have separate features")

    def predict(self, batch_inputs: List[torch.Tensor], batch_data_samples: List[DetDataSample],
                rescale: bool = True) -> List[DetDataSample]:
        images = [self._original_bgr(ds) for ds in batch_data_samples]
        device = str(batch_inputs[0].device) if len(batch_inputs) else "cpu"
        self.saver.device = device
        saver_dets = self.saver.predict(images)
        conf = self.confidence([d.scores for d in saver_dets])
        exits = conf >= self.threshold
        to_base = list(range(len(images))) if self.record_both else [i for i in range(len(images)) if not exits[i]]
        base_out = self._run_base(batch_inputs, batch_data_samples, to_base, rescale)
        for i, ds in enumerate(batch_data_samples):
            saver_inst = self._instances(saver_dets[i], device)
            ds.set_metainfo(dict(tinysaver_stage=SAVER_STAGE if exits[i] else BASE_STAGE,
                                 tinysaver_conf=float(conf[i])))
            if self.record_both:
                ds.saver_instances = saver_inst
                ds.base_instances = base_out[i]
            ds.pred_instances = saver_inst if exits[i] else base_out[i]
        return batch_data_samples

    def _run_base(self, inputs: List[torch.Tensor], samples: List[DetDataSample], which: Sequence[int],
                  rescale: bool) -> Dict[int, InstanceData]:
        if not which:
            return {}
        # The base's own preprocessing (normalise, pad, batch) on just these images.
        data = self.base.data_preprocessor({"inputs": [inputs[i] for i in which],
                                            "data_samples": [samples[i] for i in which]}, False)
        results = self.base.predict(data["inputs"], data["data_samples"], rescale=rescale)
        return {i: r.pred_instances for i, r in zip(which, results)}

    def _instances(self, det: Detections, device: str) -> InstanceData:
        labels = det.labels if self.class_map is None else self.class_map[det.labels]
        inst = InstanceData()
        inst.bboxes = torch.as_tensor(det.bboxes, device=device)
        inst.scores = torch.as_tensor(det.scores, device=device)
        inst.labels = torch.as_tensor(labels, device=device)
        return inst

    @staticmethod
    def _original_bgr(sample: DetDataSample) -> np.ndarray:
        import mmcv

        path = sample.metainfo.get("img_path")
        if not path:
            raise TinySaverError("TinySaverDetector gives YOLO the original image from 'img_path': keep it in "
                                 "PackDetInputs' meta_keys")
        return mmcv.imread(path, channel_order="bgr")


# --- evaluation -------------------------------------------------------------------------------

@METRICS.register_module()
class TinySaverCascadeMetric(BaseMetric):
    """Exit ratio and average GFLOPs of the cascade; optionally detection records of both models.

    Args:
        saver_gflops: The saver's GFLOPs per image (``tools/get_flops.py``), or None.
        base_gflops: The base's average GFLOPs per image, or None.
        record_dir: Write ``saver.npz``/``base.npz`` detection records here (needs the detector's
            ``record_both=True``).
        saver_name: Name stored in the saver record.
        base_name: Name stored in the base record.
        ann_file: COCO annotations: the category id of each class index is looked up by class name,
            as ``CocoMetric`` does (needed for the records unless ``cat_ids`` is given).
        cat_ids: COCO category id of each class index, explicitly.
    """

    default_prefix = "tinysaver"

    def __init__(self, saver_gflops: Optional[float] = None, base_gflops: Optional[float] = None,
                 record_dir: Optional[str] = None, saver_name: str = "saver", base_name: str = "base",
                 ann_file: Optional[str] = None, cat_ids: Optional[Sequence[int]] = None,
                 collect_device: str = "cpu", prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.saver_gflops, self.base_gflops = saver_gflops, base_gflops
        self.record_dir, self.saver_name, self.base_name = record_dir, saver_name, base_name
        self.ann_file, self.cat_ids = ann_file, cat_ids

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for ds in data_samples:
            row = {"img_id": int(ds["img_id"]), "stage": int(ds["tinysaver_stage"]), "conf": float(ds["tinysaver_conf"])}
            if self.record_dir:
                if "saver_instances" not in ds:
                    raise TinySaverError("TinySaverCascadeMetric(record_dir=...) needs the detector's record_both=True")
                for key in ("saver", "base"):
                    inst = ds[f"{key}_instances"]
                    row[key] = tuple(np.asarray(inst[k].cpu()) for k in ("bboxes", "scores", "labels"))
            self.results.append(row)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        results = sorted(results, key=lambda r: r["img_id"])
        exit_ratio = float(np.mean([r["stage"] == SAVER_STAGE for r in results]))
        metrics = {"exit_ratio": exit_ratio, "images": float(len(results))}
        if self.saver_gflops is not None and self.base_gflops is not None:
            metrics.update(saver_gflops=self.saver_gflops, base_gflops=self.base_gflops,
                           cascade_gflops=self.saver_gflops + (1 - exit_ratio) * self.base_gflops)
        if self.record_dir:
            self._write_records(results)
        return metrics

    def _write_records(self, results: List[dict]) -> None:
        ids = [r["img_id"] for r in results]
        cat_ids = self.cat_ids
        if cat_ids is None:
            if not (self.ann_file and self.dataset_meta):
                raise TinySaverError("TinySaverCascadeMetric needs ann_file (or cat_ids) to write records")
            from mmdet.datasets.api_wrappers import COCO

            cat_ids = COCO(self.ann_file).get_cat_ids(cat_names=self.dataset_meta["classes"])
        for key, name, gflops in (("saver", self.saver_name, self.saver_gflops), ("base", self.base_name, self.base_gflops)):
            rec = DetRecord.from_lists(name, gflops or 0.0, ids, [r[key][0] for r in results],
                                       [r[key][1] for r in results], [r[key][2] for r in results], cat_ids)
            save_det_record(Path(self.record_dir) / f"{key}.npz", rec)


__all__ = ["TinySaverDetector", "TinySaverCascadeMetric", "build_mmdet_model", "load_checkpoint_state_dict"]


# --- cost ---------------------------------------------------------------------------------------

def base_gflops(base: BaseDetector, items: Sequence[dict], mode: str = "tensor") -> float:
    """The base's average GFLOPs per image over dataset ``items`` (each preprocessed by the base),
    counted by ``mmengine.analysis`` (fvcore-style: one multiply-add counted once) and doubled to
    FLOPs, the convention of ultralytics and the paper's Table 4.

    ``mode='tensor'`` traces ``_forward`` (backbone, neck and head outputs, as mmdet's own
    ``get_flops.py``); for detectors whose ``_forward`` is empty (Co-DETR) pass ``mode='predict'``.
    """
    from functools import partial

    from mmengine.analysis import get_model_complexity_info
    from mmengine.dataset import pseudo_collate

    macs = []
    for item in items:
        data = base.data_preprocessor(pseudo_collate([item]), False)
        base.forward = partial(type(base).forward, base, data_samples=data["data_samples"], mode=mode)
        try:
            info = get_model_complexity_info(base, None, inputs=data["inputs"], show_table=False, show_arch=False)
        finally:
            del base.forward  # back to the class's method
        macs.append(info["flops"])
    return 2 * float(np.mean(macs)) / 1e9


def cascade_gflops_report(detector: "TinySaverDetector", items: Sequence[dict], exit_ratio: Optional[float] = None,
                          mode: str = "tensor") -> Dict[str, Any]:
    """Per-model GFLOPs (2 FLOPs per multiply-add) and, given an exit ratio r, the cascade's
    average ``saver + (1 − r) · base``."""
    saver = detector.saver.gflops()
    base = base_gflops(detector.base, items, mode)
    report: Dict[str, Any] = {"convention": "GFLOPs = 2 x GMACs (ultralytics' and the paper's Table 4); "
                                            "mmengine.analysis counts MACs and is doubled",
                              "saver_gflops": saver, "saver_gmacs": saver / 2, "saver_imgsz": detector.saver.imgsz,
                              "base_gflops": base, "base_gmacs": base / 2, "base_images": len(items)}
    if exit_ratio is not None:
        report.update(exit_ratio=exit_ratio, cascade_gflops=saver + (1 - exit_ratio) * base)
    return report
