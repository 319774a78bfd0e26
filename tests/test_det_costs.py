"""Honest detection costs in tools/test.py: every image costed at the size each stage runs it at
(YOLO: its own letterbox; mmdet: its resized shape padded to the preprocessor's divisor), the
cascade's average from the stages each image reached, per-image costs in the detection records."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_ultralytics import make_mixed_shapes
from tinysaver.confidence import build_confidence
from tinysaver.detection import load_det_record

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tinysaver" / "yolov8n_retinanet-r18-tiny_fashion-det.py"


@pytest.fixture(scope="module")
def mixed_coco(tmp_path_factory):
    """Non-square canvases in the COCO layout the fashion config reads."""
    from tinysaver.plugins.fashion_det import make_fashion_det
    from tinysaver.plugins.ultralytics import yolo_to_coco

    fashion = tmp_path_factory.mktemp("fashion_det")
    make_fashion_det(fashion, {"val": 8})
    root = make_mixed_shapes(fashion, tmp_path_factory.mktemp("mixed"))
    yolo_to_coco(str(root / "data.yaml"), "val", out=str(root / "annotations" / "instances_val.json"))
    return root


def test_every_image_is_costed_at_its_own_size(mixed_coco, tmp_path):
    from tinysaver.plugins.ultralytics import YOLOModel

    out = tmp_path / "summary.json"
    cmd = [sys.executable, str(ROOT / "tools" / "test.py"), str(CONFIG), "none", "--work-dir", str(tmp_path / "w"),
           "--out-json", str(out), "--threshold", "0.3", "--dump-records", str(tmp_path / "records")]
    env = dict(os.environ, FASHION_DET_ROOT=str(mixed_coco), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(out.read_text())
    g = summary["gflops"]
    saver, base = (load_det_record(tmp_path / "records" / f"{n}.npz") for n in ("saver", "base"))
    assert g["images"] == len(saver.image_ids) == 8
    # YOLO stage: each image at its own letterbox (the config runs it at 160)
    ann = json.loads((mixed_coco / "annotations" / "instances_val.json").read_text())
    shape = {im["id"]: (im["height"], im["width"]) for im in ann["images"]}
    yolo = YOLOModel(str(ROOT / "weights" / "det" / "yolov8n_fashion-det.pt"), imgsz=160)
    expected = yolo.image_gflops([shape[int(i)] for i in saver.image_ids])
    np.testing.assert_allclose(saver.image_gflops, expected)
    assert len(set(expected.round(6))) >= 3 and g["stages"][0]["distinct_input_shapes"] >= 3
    assert g["stages"][0]["gflops"] == pytest.approx(expected.mean())
    # mmdet stage: one count per padded input shape, different shapes, different costs
    assert g["stages"][1]["distinct_input_shapes"] >= 3 and len(set(base.image_gflops.round(6))) >= 3
    assert g["stages"][1]["gflops"] == pytest.approx(base.image_gflops.mean())
    # the cascade: every image pays the saver, and the base when it went on
    conf = build_confidence("mean_box_score")(saver.scores_per_image())
    went_on = conf < 0.3
    assert 0 < went_on.sum() < 8, "threshold 0.3 should split these images"
    assert g["cascade_gflops"] == pytest.approx(np.mean(saver.image_gflops + went_on * base.image_gflops))
    assert g["answered"][1] == pytest.approx(went_on.mean())
    assert "per_image" not in g
