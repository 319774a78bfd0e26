"""Ultralytics YOLO models as cascade stages: ultralytics' own loading and preprocessing, BGR numpy in.

A YOLO ``.pt`` file is a pickle by ultralytics' design (it stores the model object), so it is loaded
through ultralytics (``YOLO(path)``), which is the only loader that understands it: load only
checkpoints you trust, as with any pickle.

Offline: :func:`prepare_offline` sets ``YOLO_OFFLINE``, keeps ultralytics' settings in a local
folder with sync off, and gives it the font it would otherwise try to download; call it before
ultralytics is imported (this module does).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, List, Optional, Sequence

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


class YOLOModel:
    """A YOLO checkpoint with fixed inference settings, answering lists of BGR images.

    Args:
        checkpoint: Path of an ultralytics ``.pt`` file.
        imgsz: Letterbox size.
        conf: Minimum score kept by NMS (0.001 as ultralytics' val uses for AP).
        iou: NMS IoU threshold.
        max_det: Maximum detections per image.
        device: ``cpu``, ``cuda:0``, ...
        half: fp16 inference (GPU).
    """

    def __init__(self, checkpoint: str, imgsz: int = 640, conf: float = 0.001, iou: float = 0.7,
                 max_det: int = 300, device: str = "cpu", half: bool = False) -> None:
        if not Path(checkpoint).is_file():
            raise TinySaverError(f"{checkpoint}: YOLO checkpoint not found")
        from ultralytics import YOLO

        self.checkpoint = str(checkpoint)
        self.yolo = YOLO(self.checkpoint, task="detect")
        self.imgsz, self.conf, self.iou, self.max_det = imgsz, conf, iou, max_det
        self.device, self.half = device, half

    @property
    def model(self) -> Any:
        """The underlying ``torch.nn.Module`` (ultralytics ``DetectionModel``)."""
        return self.yolo.model

    def predict(self, images_bgr: Sequence[np.ndarray]) -> List[Detections]:
        """Detections for each BGR uint8 HWC image, in its original coordinates."""
        if len(images_bgr) == 0:
            return []
        # `half` only when asked: ultralytics warns that the argument is deprecated whenever it is given.
        extra = {"half": True} if self.half else {}
        results = self.yolo.predict(source=list(images_bgr), imgsz=self.imgsz, conf=self.conf, iou=self.iou,
                                    max_det=self.max_det, device=self.device, verbose=False, **extra)
        return [Detections(r.boxes.xyxy.cpu().numpy().astype(np.float32), r.boxes.conf.cpu().numpy().astype(np.float32),
                           r.boxes.cls.cpu().numpy().astype(np.int64)) for r in results]

    def gflops(self, imgsz: Optional[int] = None) -> float:
        """GFLOPs at a square ``imgsz`` input, ultralytics' convention (2 FLOPs per multiply-add)."""
        from ultralytics.utils.torch_utils import get_flops

        return float(get_flops(self.yolo.model, imgsz or self.imgsz))


#: the name earlier versions used (a YOLO model was always the saver then)
YOLOSaver = YOLOModel
