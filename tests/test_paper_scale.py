"""Paper scale (issue 18): costs counted the way inference runs (gradient-checkpointed backbones
included), no record without a cost, the random-weights smoke path for detection configs, YOLO
weights found where ultralytics keeps them, config paths set the way that works, and each stage's
measured time and memory.

Real code paths on the Fashion-MNIST detection canvases and the checkpoints our own scripts trained
(weights/det/); the Swin backbone is small (the mechanism of mmdet's Swin-L configs, ``with_cp=True``,
at a size 2 CPU cores run in seconds).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinysaver.cli import main as cli
from tinysaver.errors import TinySaverError

ROOT = Path(__file__).resolve().parents[1]
CASCADE = ROOT / "configs" / "tinysaver" / "yolov8n_retinanet-r18-tiny_fashion-det.py"
RETINANET = ROOT / "configs" / "fashion_det" / "retinanet_r18-tiny_fashion-det.py"
YOLO_PT = ROOT / "weights" / "det" / "yolov8n_fashion-det.pt"
VAL_IMAGES = 4

# A RetinaNet on a small Swin backbone with gradient checkpointing, as mmdet's Swin-L configs (DINO,
# Co-DINO) set it: torch.utils.checkpoint runs whenever the input requires grad.
SWIN_BASE = """_base_ = ['{retinanet}']
model = dict(
    backbone=dict(_delete_=True, type='SwinTransformer', embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                  window_size=7, mlp_ratio=2, patch_size=4, out_indices=(1, 2, 3), with_cp={with_cp},
                  pretrain_img_size=192, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256]))
"""
SWIN_CASCADE = """_base_ = ['{cascade}']
swin_stage = dict(type='mmdet', name='retinanet-swin', config='{base}')
model = dict(stages=[{{{{_base_.yolo_stage}}}}, swin_stage])
"""


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    from tinysaver.plugins.fashion_det import make_fashion_det

    root = tmp_path_factory.mktemp("fashion_det")
    make_fashion_det(root, {"val": VAL_IMAGES})
    return root


def _swin_cascade(folder: Path, with_cp: bool) -> Path:
    base = folder / f"retinanet_swin_cp{int(with_cp)}.py"
    base.write_text(SWIN_BASE.format(retinanet=RETINANET, with_cp=with_cp))
    cascade = folder / f"yolov8n_retinanet-swin-cp{int(with_cp)}.py"
    cascade.write_text(SWIN_CASCADE.format(cascade=CASCADE, base=base))
    return cascade


def _run(cmd, det_root: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASHION_DET_ROOT=str(det_root), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *map(str, cmd)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=900)


def test_swin_with_cp_cascade_is_costed_and_runs_with_random_weights(det_root, tmp_path):
    """tools/get_flops.py and tools/test.py --random-init on a cascade whose base checkpoints its
    Swin blocks (with_cp=True): both run, the cost equals the same model without checkpointing (a
    trace with autograd on failed inside torch.utils.checkpoint), the records carry each image's
    cost, and each stage's time and memory are reported."""
    flops = {}
    for with_cp in (True, False):
        config = _swin_cascade(tmp_path, with_cp)
        out = tmp_path / f"flops{int(with_cp)}.json"
        proc = _run([ROOT / "tools" / "get_flops.py", config, "--random-init", "--images", "2", "--json", out],
                    det_root, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        flops[with_cp] = json.loads(out.read_text())
    gflops = {cp: [s["gflops"] for s in report["stages"]] for cp, report in flops.items()}
    assert all(g > 0 for g in gflops[True]), gflops
    assert gflops[True] == pytest.approx(gflops[False], rel=1e-9)

    config = _swin_cascade(tmp_path, True)
    records, summary_path = tmp_path / "records", tmp_path / "summary.json"
    proc = _run([ROOT / "tools" / "test.py", config, "none", "--random-init", "--work-dir", tmp_path / "w",
                 "--out-json", summary_path, "--dump-records", records], det_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    from tinysaver.detection import load_det_record

    for name, stage in zip(("saver", "base"), summary["gflops"]["stages"]):
        rec = load_det_record(records / f"{name}.npz")
        assert rec.gflops == pytest.approx(stage["gflops"]) and rec.gflops > 0
        assert rec.image_gflops is not None and (rec.image_gflops > 0).all()
    runtime = {row["stage"]: row for row in summary["stage_runtime"]["stages"]}
    assert set(runtime) == {"yolov8n", "retinanet-swin"}
    for row in runtime.values():  # record_all: every stage ran on every image
        assert row["samples"] == VAL_IMAGES and row["ms_per_sample"] > 0 and row["peak_memory_mb"] > 0
    assert "ms per image" in proc.stdout and "peak memory" in proc.stdout


def test_predict_mode_flops_trace_returns_tensors(det_root):
    """mode='predict' (detectors whose _forward is empty, Co-DETR) traces the whole predict: the
    tracer gets tensors back, and it counts at least what the network alone costs."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from tinysaver.plugins.mmdet import build_mmdet_model, mmdet_gflops

    register_all_modules()
    os.environ["FASHION_DET_ROOT"] = str(det_root)
    cfg = Config.fromfile(str(RETINANET))
    model = build_mmdet_model(cfg)
    item = DATASETS.build(cfg.test_dataloader.dataset)[0]
    network, predict = mmdet_gflops(model, [item], "tensor"), mmdet_gflops(model, [item], "predict")
    assert network > 0 and predict >= network * 0.99


def test_metric_never_writes_a_record_without_cost(tmp_path):
    from tinysaver.plugins.mmdet import TinySaverCascadeMetric

    with pytest.raises(TinySaverError, match="never written without a cost"):
        TinySaverCascadeMetric(record_dir=str(tmp_path), cat_ids=[1])
    with pytest.raises(TinySaverError, match="never written without a cost"):
        TinySaverCascadeMetric(record_dir=str(tmp_path), cat_ids=[1], stage_gflops=[0.0, 3.0])
    metric = TinySaverCascadeMetric(record_dir=str(tmp_path), cat_ids=[1], defer_records=True)
    boxes = (np.zeros((1, 4), np.float32) + [0, 0, 5, 5], np.array([0.9], np.float32), np.array([0]))
    metric.results = [{"img_id": 3, "stage": 0, "conf": 0.9, "ori_shape": (10, 10), "img_shape": (10, 10),
                       "dets": [boxes, boxes]}]
    metric.compute_metrics(metric.results)
    assert list(tmp_path.iterdir()) == []  # nothing written before the caller stamps the costs
    assert sorted(p.name for p in metric.pending_records) == ["base.npz", "saver.npz"]


def _det_records(tmp_path: Path, saver_gflops: float):
    from tinysaver.detection import DetRecord, save_det_record

    ann = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 20, "width": 20} for i in (1, 2)],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}],
           "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    box = [np.array([[1, 1, 6, 6]], np.float32), np.zeros((0, 4), np.float32)]
    scores = [np.array([0.9], np.float32), np.zeros(0, np.float32)]
    labels = [np.array([0]), np.zeros(0, np.int64)]
    for name, g in (("saver", saver_gflops), ("base", 10.0)):
        save_det_record(tmp_path / f"{name}.npz", DetRecord.from_lists(name, g, [1, 2], box, scores, labels, [1]))
    return [f"--ann={tmp_path / 'ann.json'}", f"--saver={tmp_path / 'saver.npz'}", f"--base={tmp_path / 'base.npz'}"]


@pytest.mark.parametrize("command", ["det-tradeoff", "det-signals"])
def test_detection_record_without_cost_is_refused_unless_given(command, tmp_path, capsys):
    files = _det_records(tmp_path, saver_gflops=0.0)
    assert cli([command, *files]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no cost" in err[0] and "--saver-gflops" in err[0]
    assert cli([command, *files, "--saver-gflops", "2.5", "--json", str(tmp_path / "out.json")]) == 0
    text = (tmp_path / "out.json").read_text()
    assert "2.5" in text
    assert cli([command, *files, "--saver-gflops", "nan"]) == 2


@pytest.mark.parametrize("command", ["tradeoff", "select", "chain", "plan", "calibrate"])
def test_classification_record_without_cost_is_refused_unless_given(command, make_record, tmp_path, capsys):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, 400)
    saver = make_record("s", rng.random(400), np.where(rng.random(400) < 0.7, label, (label + 1) % 3), label, gmacs=0.0)
    base = make_record("b", rng.random(400), np.where(rng.random(400) < 0.9, label, (label + 1) % 3), label, gmacs=4.0)
    args = {"tradeoff": ["--saver", saver, "--base", base], "select": ["--saver", saver, "--base", base],
            "chain": ["--stages", saver, base, "--thresholds", "0.5"], "plan": ["--pool", saver, "--base", base],
            "calibrate": ["--saver", saver, "--base", base, "--drop", "1"]}[command]
    args = [str(a) for a in args]
    assert cli([command, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no cost" in err[0] and "--gmacs s=G" in err[0]
    out = tmp_path / "out.json"
    assert cli([command, *args, "--gmacs", "s=0.5", "--json", str(out)]) == 0
    assert out.is_file()
    assert cli([command, *args, "--gmacs", "s=0.5", "typo=1"]) == 2
    assert "no record read is of a model named 'typo'" in capsys.readouterr().err
    assert cli([command, *args, "--gmacs", "s=-1"]) == 2


def test_yolo_name_resolves_through_ultralytics_weights_dir(tmp_path, monkeypatch):
    from ultralytics.utils import SETTINGS

    from tinysaver.plugins.ultralytics import YOLOModel, resolve_checkpoint

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(YOLO_PT, weights / "yolov8n.pt")
    monkeypatch.setitem(SETTINGS, "weights_dir", str(weights))
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("yolov8n.pt") == weights / "yolov8n.pt"
    assert YOLOModel("yolov8n.pt", imgsz=160).checkpoint == str(weights / "yolov8n.pt")
    with pytest.raises(TinySaverError, match=r"yolov8x\.pt: YOLO checkpoint not found .*weights"):
        resolve_checkpoint("yolov8x.pt")
    with pytest.raises(TinySaverError, match="not found"):  # a path with a folder is not looked up elsewhere
        resolve_checkpoint("elsewhere/yolov8n.pt")


def test_yolo_random_init_builds_the_architecture_from_its_yaml():
    """YOLOv8n untrained from yolov8n.yaml (no file read, no download), at ultralytics' GFLOPs."""
    from tinysaver.plugins.ultralytics import YOLOModel

    yolo = YOLOModel("checkpoints/yolov8n.pt", random_init=True)
    assert yolo.checkpoint == "yolov8n.yaml"
    assert yolo.gflops(640) == pytest.approx(8.7, rel=0.02)  # ultralytics' published figure
    with pytest.raises(TinySaverError, match="model yaml"):
        YOLOModel("x.pt", random_init=True, model="nonsense")


def test_config_paths_name_what_works(tmp_path):
    """--cfg-options data_root=... changes none of the paths built from it: refused, naming the
    variable that works; a missing data folder names it too."""
    config = ROOT / "configs" / "tinysaver" / "yolov8x_dino-swin-l_coco.py"
    proc = _run([ROOT / "tools" / "test.py", config, "none", "--cfg-options", "data_root=/x"], tmp_path, tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "COCO_ROOT=" in err[0] and "data_root" in err[0]
    cls_config = ROOT / "configs" / "tinysaver" / "cls" / "mobilenetv3-s_mobilenetv3-l_in1k.py"
    env = dict(os.environ, IMAGENET_ROOT=str(tmp_path / "nowhere"))
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "test.py"), str(cls_config), "none", "--random-init",
                           "--work-dir", str(tmp_path / "w")], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "IMAGENET_ROOT=" in err[0], proc.stderr[-2000:]


def test_random_init_refuses_a_checkpoint(tmp_path):
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"x")
    proc = _run([ROOT / "tools" / "test.py", CASCADE, str(ckpt), "--random-init"], tmp_path, tmp_path)
    assert proc.returncode == 2 and "give CHECKPOINT none" in proc.stderr
