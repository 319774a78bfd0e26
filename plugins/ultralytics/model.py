"""Ultralytics YOLO models as cascade stages: ultralytics' own loading and preprocessing, BGR numpy in.

A YOLO ``.pt`` file is a pickle by ultralytics' design (it stores the model object), so it is loaded
through ultralytics (``YOLO(path)``), which is the only loader that understands it. Before that, the
file must pass ultralytics' restricted loader (``torch_safe_load(..., safe_only=True)``: torch's
``weights_only`` unpickler with an allow-list of model layer classes): a checkpoint that names any
other callable (``os.system``...) is refused with one line and nothing from it runs
(:func:`check_checkpoint`).

Offline: :func:`prepare_offline` sets ``YOLO_OFFLINE``, keeps ultralytics' settings in a local
folder with sync off, and gives it the font it would otherwise try to download; call it before
ultralytics is imported (this module does).

Letterbox policy (predict): an image's boxes must not depend on which images share its batch.
ultralytics' predictor letterboxes a batch to the smallest stride-multiple rectangle when all its
images have the same shape, and to the full ``imgsz`` square otherwise, so the same image gets
different boxes alone and in a mixed batch. Here every image is letterboxed on its own, to the
smallest stride-multiple rectangle that holds it resized to ``imgsz`` (what ultralytics does for
one image alone), and images are batched only with images of the same letterboxed shape
(:meth:`YOLOModel.predict_results`). ``rect=False`` letterboxes every image to the square instead.
Its cost is counted at that shape (:meth:`YOLOModel.image_gflops`).
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tinysaver.detection import Detections
from tinysaver.errors import TinySaverError


def prepare_offline(config_dir: Optional[str] = None) -> None:
    """Environment for ultralytics with no network: no DNS probe, no settings sync, no font fetch."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    cfg = Path(os.environ.setdefault("YOLO_CONFIG_DIR", config_dir or str(Path.home() / ".cache" / "tinysaver" / "ultralytics")))
    font = cfg / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        try:
            import matplotlib

            dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            font.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dejavu, font)
        except (ImportError, OSError):
            pass  # plots would lack the font; predictions and training do not need it


prepare_offline()


def weights_dir() -> Optional[Path]:
    """ultralytics' own weights folder (``SETTINGS['weights_dir']``), where ``yolo`` keeps the
    checkpoints it downloaded, or None when ultralytics has none configured."""
    from ultralytics.utils import SETTINGS

    folder = SETTINGS.get("weights_dir")
    return Path(folder) if folder else None


def resolve_checkpoint(checkpoint: str) -> Path:
    """The file a YOLO checkpoint spec names, found the way ultralytics users expect, never downloaded.

    A path that exists is used as is. A bare name (``yolov8n.pt``, no folder) is looked up in the
    working directory, then in ultralytics' weights folder (:func:`weights_dir`), which is where
    ``YOLO("yolov8n.pt")`` keeps what it downloaded. ultralytics itself would download a missing
    official name; here that is a one-line error, since nothing may reach the network.

    Raises:
        TinySaverError: Not found; the message names the places looked in.
    """
    path = Path(checkpoint)
    if path.is_file():
        return path
    looked = [str(path.resolve())]
    if path.name == str(checkpoint):  # a bare name: ultralytics' weights folder too
        folder = weights_dir()
        if folder is not None:
            if (folder / path.name).is_file():
                return folder / path.name
            looked.append(str(folder / path.name))
    raise TinySaverError(f"{checkpoint}: YOLO checkpoint not found (looked in {', '.join(looked)}); nothing is "
                         f"downloaded: put the file there, or build it untrained with random_init")


def model_yaml(checkpoint: str) -> str:
    """The ultralytics model yaml a checkpoint name stands for (``yolov8x.pt`` → ``yolov8x.yaml``),
    for building that architecture untrained (no file, no download)."""
    return Path(checkpoint).stem + ".yaml"


def check_checkpoint(checkpoint: str) -> Path:
    """Refuses (one line, nothing run) a file that is not an ultralytics ``.pt`` checkpoint made of
    known model classes only: ultralytics' restricted loader must read it before ``YOLO(path)``
    unpickles it for real (the same bytes, so the same classes and nothing else).

    Returns:
        The checkpoint's file (:func:`resolve_checkpoint`).
    """
    import pickle

    path = resolve_checkpoint(checkpoint)
    if path.suffix != ".pt":
        raise TinySaverError(f"{checkpoint}: not an ultralytics checkpoint (a .pt file)")
    from ultralytics.nn.tasks import _SafeLoad, torch_safe_load

    if not _SafeLoad.SUPPORTED:  # it would fall back to an unrestricted load
        raise TinySaverError(f"{checkpoint}: checking a YOLO checkpoint needs torch >= 2.6 (restricted loading)")
    try:
        with warnings.catch_warnings():  # torch warns about what it then refuses: the refusal is the one line
            warnings.simplefilter("ignore")
            torch_safe_load(str(path), safe_only=True)
    except (TypeError, ModuleNotFoundError, pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        text = " ".join(str(exc).replace("ERROR ❌️", "").split())
        raise TinySaverError(f"{checkpoint}: refused by the restricted checkpoint loader "
                             f"({type(exc).__name__}: {text[:200]})") from None
    return path


class YOLOModel:
    """A YOLO checkpoint with fixed inference settings, answering lists of BGR images.

    Args:
        checkpoint: An ultralytics ``.pt`` file, or a bare official name (``yolov8n.pt``) found in
            the working directory or ultralytics' weights folder (:func:`resolve_checkpoint`).
        imgsz: Letterbox size.
        conf: Minimum score kept by NMS (0.001 as ultralytics' val uses for AP).
        iou: NMS IoU threshold.
        max_det: Maximum detections per image.
        device: ``cpu``, ``cuda:0``, ...
        half: fp16 inference (GPU).
        random_init: Build the architecture untrained from its model yaml instead (``model``, else
            the checkpoint's name: ``yolov8x.pt`` → ``yolov8x.yaml``); no file is read. For checking
            a config's shapes, costs and memory before the real run.
        model: The model yaml for ``random_init`` (default: derived from ``checkpoint``).
        num_classes: Classes of the untrained model (``random_init``; default: the yaml's, 80 for
            ultralytics' own), for a checkpoint trained on another label set.

    Examples:
        >>> yolo = YOLOModel("yolov8x.pt", random_init=True)    # the architecture, untrained
        >>> round(yolo.gflops(640), 1)                          # doctest: +SKIP
        258.5
    """

    def __init__(self, checkpoint: str, imgsz: int = 640, conf: float = 0.001, iou: float = 0.7,
                 max_det: int = 300, device: str = "cpu", half: bool = False, random_init: bool = False,
                 model: Optional[str] = None, num_classes: Optional[int] = None) -> None:
        from ultralytics import YOLO

        if random_init:
            self.checkpoint = model or model_yaml(checkpoint)
            self.yolo = _untrained(self.checkpoint, num_classes)
        else:
            self.checkpoint = str(check_checkpoint(checkpoint))
            self.yolo = YOLO(self.checkpoint, task="detect")
        self.imgsz, self.conf, self.iou, self.max_det = imgsz, conf, iou, max_det
        self.device, self.half = device, half

    @property
    def model(self) -> Any:
        """The underlying ``torch.nn.Module`` (ultralytics ``DetectionModel``)."""
        return self.yolo.model

    def predict(self, images_bgr: Sequence[np.ndarray]) -> List[Detections]:
        """Detections for each BGR uint8 HWC image, in its original coordinates."""
        return [Detections(r.boxes.xyxy.cpu().numpy().astype(np.float32), r.boxes.conf.cpu().numpy().astype(np.float32),
                           r.boxes.cls.cpu().numpy().astype(np.int64)) for r in self.predict_results(images_bgr)]

    @property
    def stride(self) -> int:
        """The stride letterboxes are multiples of (ultralytics' ``AutoBackend``: at least 32)."""
        return max(int(self.yolo.model.stride.max()), 32)

    def letterbox_shape(self, height: int, width: int, rect: bool = True) -> Tuple[int, int]:
        """``(h, w)`` of the letterboxed input of an image of that size (the module's letterbox policy)."""
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils.checks import check_imgsz

        imgsz = check_imgsz(self.imgsz, stride=self.stride, min_dim=2)
        p = LetterBox(imgsz, auto=rect, stride=self.stride).get_params(
            {"img": np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (int(height), int(width), 3))})
        return p["new_unpad"][1] + p["top"] + p["bottom"], p["new_unpad"][0] + p["left"] + p["right"]

    def predict_results(self, images_bgr: Sequence[np.ndarray], **overrides: Any) -> List[Any]:
        """ultralytics ``Results`` for each BGR uint8 HWC image, each letterboxed on its own.

        Images are batched with the images of the same letterboxed shape only, so an image's boxes
        do not depend on the other images passed with it (module docstring).

        Args:
            images_bgr: The images.
            **overrides: ultralytics predict arguments replacing this model's (``conf``, ``rect``...).
        """
        if len(images_bgr) == 0:
            return []
        # `half` only when asked: ultralytics warns that the argument is deprecated whenever it is given.
        args = dict(imgsz=self.imgsz, conf=self.conf, iou=self.iou, max_det=self.max_det, device=self.device,
                    verbose=False, **({"half": True} if self.half else {}))
        args.update(overrides)
        rect = bool(args.get("rect", True))
        predictor = per_image_letterbox_predictor(self.yolo._smart_load("predictor"))
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, img in enumerate(images_bgr):
            groups.setdefault(self.letterbox_shape(*img.shape[:2], rect=rect), []).append(i)
        results: List[Any] = [None] * len(images_bgr)
        for rows in groups.values():
            for row, result in zip(rows, self.yolo.predict(source=[images_bgr[i] for i in rows], predictor=predictor, **args)):
                results[row] = result
        return results

    def gflops_at(self, height: int, width: int) -> float:
        """GFLOPs on one letterboxed input of ``height`` x ``width`` (ultralytics' ``get_flops``:
        thop, 2 FLOPs per multiply-add), counted once per shape."""
        from ultralytics.utils.torch_utils import get_flops

        from tinysaver.models.complexity import inference_trace

        key = (int(height), int(width))
        cache = self.__dict__.setdefault("_gflops", {})
        if key not in cache:
            with inference_trace(self.yolo.model):  # eval mode, autograd off: the cost of inference
                value = float(get_flops(self.yolo.model, list(key)))
            if value <= 0:
                raise TinySaverError(f"{self.checkpoint}: could not count the GFLOPs at {key} (is thop installed?)")
            cache[key] = value
        return cache[key]

    def image_gflops(self, shapes: Sequence[Tuple[int, int]], rect: bool = True) -> np.ndarray:
        """GFLOPs on each image of original size ``(h, w)``, at the shape it is letterboxed to."""
        return np.array([self.gflops_at(*self.letterbox_shape(h, w, rect=rect)) for h, w in shapes], dtype=np.float64)

    def gflops(self, imgsz: Optional[int] = None) -> float:
        """GFLOPs at a square ``imgsz`` input, ultralytics' convention (2 FLOPs per multiply-add)."""
        size = imgsz or self.imgsz
        return self.gflops_at(size, size)


def _untrained(yaml: str, num_classes: Optional[int] = None) -> Any:
    """``YOLO(yaml)``: the architecture with fresh weights, built offline by ultralytics (with
    ``num_classes`` outputs when given)."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    if not yaml.endswith((".yaml", ".yml")):
        raise TinySaverError(f"{yaml}: random_init builds a YOLO from its model yaml (e.g. yolov8x.yaml)")
    try:
        yolo = YOLO(yaml, task="detect")
        if num_classes is not None and num_classes != len(yolo.model.names):
            yolo.model = DetectionModel(yaml, nc=int(num_classes), verbose=False)
    except (FileNotFoundError, KeyError) as exc:
        raise TinySaverError(f"{yaml}: not a model yaml ultralytics knows ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:160]})") from None
    return yolo


_PREDICTORS: Dict[type, type] = {}


def per_image_letterbox_predictor(base: type) -> type:
    """ultralytics' predictor class ``base`` with one change: each image is letterboxed on its own
    (the smallest stride-multiple rectangle, or the square when ``rect=False``), never by what the
    other images of its batch look like. A batch must then hold images of one letterboxed shape."""
    if base not in _PREDICTORS:
        from ultralytics.data.augment import LetterBox

        def pre_transform(self, im: List[np.ndarray]) -> List[np.ndarray]:
            # ultralytics' own condition for a rectangle, minus "every image of the batch has one shape"
            auto = (self.args.rect and not self.scale_fill
                    and (self.model.format == "pt" or (getattr(self.model, "dynamic", False) and self.model.format != "imx")))
            letterbox = LetterBox(self.imgsz, auto=auto, scale_fill=self.scale_fill, stride=self.model.stride)
            out = [letterbox(image=x) for x in im]
            if len({x.shape for x in out}) > 1:
                raise TinySaverError(f"one batch got letterboxed shapes {sorted({x.shape for x in out})}: "
                                     "batch only images of one letterboxed shape")
            return out

        _PREDICTORS[base] = type(f"PerImageLetterbox{base.__name__}", (base,), {"pre_transform": pre_transform})
    return _PREDICTORS[base]


#: the name earlier versions used (a YOLO model was always the saver then)
YOLOSaver = YOLOModel


__all__ = ["YOLOModel", "YOLOSaver", "prepare_offline", "weights_dir", "resolve_checkpoint", "model_yaml",
           "check_checkpoint", "per_image_letterbox_predictor"]
