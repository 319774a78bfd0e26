"""Detection: YOLOv8 saver + mmdet base, real code paths on checkpoints our own scripts trained.

Data: the Fashion-MNIST detection canvases (plugins/fashion_det.py, real pixels, exact boxes).
Checkpoints: weights/det/ (tools/train_fashion_det.py: ultralytics training, mmengine Runner).
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinysaver.cli import main as cli
from tinysaver.confidence import build_confidence
from tinysaver.detection import (DetRecord, cascade_detections, det_tradeoff, load_det_record,
                                 save_det_record)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tinysaver" / "yolov8n_retinanet-r18-tiny_fashion-det.py"
VAL_IMAGES = 40


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    from tinysaver.plugins.fashion_det import make_fashion_det

    root = tmp_path_factory.mktemp("fashion_det")
    make_fashion_det(root, {"val": VAL_IMAGES})
    return root


def _env(det_root: Path) -> dict:
    return dict(os.environ, FASHION_DET_ROOT=str(det_root), OMP_NUM_THREADS="1")


def _test_py(det_root: Path, work: Path, *extra: str) -> dict:
    out = work / "summary.json"
    cmd = [sys.executable, str(ROOT / "tools" / "test.py"), str(CONFIG), "none", "--work-dir", str(work),
           "--out-json", str(out), "--flops-images", "2", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(det_root), timeout=600, cwd=work.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def recorded(det_root, tmp_path_factory):
    """One live run at threshold 0.5 that also dumps both models' detection records."""
    work = tmp_path_factory.mktemp("run_t05")
    summary = _test_py(det_root, work, "--threshold", "0.5", "--dump-records", str(work / "records"))
    return summary, load_det_record(work / "records" / "saver.npz"), load_det_record(work / "records" / "base.npz")


def _ann(det_root: Path) -> str:
    return str(det_root / "annotations" / "instances_val.json")


def test_live_cascade_equals_records_simulation(recorded, det_root):
    summary, saver, base = recorded
    m = summary["metrics"]
    assert m["tinysaver/images"] == VAL_IMAGES
    sim = det_tradeoff(_ann(det_root), saver, base, [0.0, 0.5, 1.01], progress=False)
    at05 = sim["rows"][1]
    assert at05["exit_ratio"] == pytest.approx(m["tinysaver/exit_ratio"])
    assert 0 < at05["exit_ratio"] < 1, "threshold 0.5 should split this val set"
    assert at05["AP"] == pytest.approx(m["coco/bbox_mAP"], abs=1e-3)
    assert at05["AP50"] == pytest.approx(m["coco/bbox_mAP_50"], abs=1e-3)
    # the identities of the sweep: t=0 is the saver alone, t>1 the base alone
    assert sim["rows"][0]["AP"] == sim["saver"]["AP"] and sim["rows"][0]["exit_ratio"] == 1.0
    assert sim["rows"][2]["AP"] == sim["base"]["AP"] and sim["rows"][2]["exit_ratio"] == 0.0
    # real, trained detectors
    assert sim["base"]["AP50"] > 0.3 and sim["saver"]["AP50"] > 0.3
    g = summary["gflops"]
    saver_g, base_g = (stage["gflops"] for stage in g["stages"])
    assert g["cascade_gflops"] == pytest.approx(saver_g + (1 - m["tinysaver/exit_ratio"]) * base_g)
    assert saver.gflops == saver_g and base.gflops == base_g
    assert (saver.name, base.name) == ("yolov8n", "retinanet_r18-tiny")
    # one COCO maxDets for the live metric and the records
    assert saver.max_dets == base.max_dets == tuple(summary["max_dets"]) == (100, 300, 1000)


@pytest.mark.parametrize("threshold, who", [(0.0, "saver"), (1.01, "base")])
def test_live_threshold_extremes_equal_each_model_alone(threshold, who, recorded, det_root, tmp_path):
    _, saver, base = recorded
    alone = det_tradeoff(_ann(det_root), saver, base, [threshold], progress=False)[who]
    m = _test_py(det_root, tmp_path / "run", "--threshold", str(threshold))["metrics"]
    assert m["tinysaver/exit_ratio"] == (1.0 if who == "saver" else 0.0)
    assert m["coco/bbox_mAP"] == pytest.approx(alone["AP"], abs=1e-3)


def test_two_processes_and_packed_checkpoint_give_the_same_metrics(recorded, det_root, tmp_path):
    one = recorded[0]["metrics"]
    proc_dir = tmp_path / "run2"
    proc_dir.mkdir()
    # also the CHECKPOINT path: one packed cascade checkpoint, loaded by mmengine's Runner
    packed = tmp_path / "cascade.pth"
    subprocess.run([sys.executable, str(ROOT / "tools" / "pack_checkpoint.py"), str(CONFIG), str(packed)],
                   check=True, env=_env(det_root), capture_output=True)
    out = proc_dir / "summary.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "tools" / "test.py"), str(CONFIG), str(packed), "--launcher", "pytorch", "--threshold", "0.5",
           "--work-dir", str(proc_dir), "--out-json", str(out), "--flops-images", "0",
           "--cfg-options", f"test_evaluator.0.outfile_prefix={proc_dir / 'live'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(det_root), timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = json.loads(out.read_text())["metrics"]
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-4), key
    # Detection by detection: this run sent only the escalated images to the base, in smaller
    # batches; the records ran both models on every image. Same detections.
    _, saver, base = recorded
    live = json.loads((proc_dir / "live.bbox.json").read_text())
    conf = build_confidence("mean_box_score", min_score=0.05)(saver.scores_per_image())
    sim = cascade_detections(saver, base, conf >= 0.5)
    for i, image_id in enumerate(saver.image_ids):
        mine = sorted((d for d in live if d["image_id"] == image_id), key=lambda d: -d["score"])
        ref = np.flatnonzero(sim["image"] == i)
        ref = ref[np.argsort(-sim["scores"][ref], kind="stable")]
        assert len(mine) == len(ref), image_id
        np.testing.assert_allclose([d["score"] for d in mine], sim["scores"][ref], atol=1e-4)
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]).reshape(-1, 4)
        np.testing.assert_allclose(xyxy, sim["boxes"][ref], atol=1e-2)


def test_det_tradeoff_cli(recorded, det_root, tmp_path, capsys):
    work = Path(recorded[1].path).parent
    out, png = tmp_path / "det.json", tmp_path / "det.png"
    assert cli(["det-tradeoff", "--ann", _ann(det_root), "--saver", str(work / "saver.npz"), "--base",
                str(work / "base.npz"), "--json", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 51 and result["rows"][0]["threshold"] == 0.0 and result["rows"][-1]["threshold"] == 1.0
    gflops = [r["gflops"] for r in result["rows"]]
    assert gflops == sorted(gflops)  # higher threshold: fewer exits, more cost
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "TinySaver (t = 0.50)" in capsys.readouterr().out
    assert cli(["det-tradeoff", "--ann", _ann(det_root), "--saver", str(tmp_path / "nope.npz"), "--base",
                str(work / "base.npz"), "--json", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_image_without_confident_box_goes_to_base(det_root, monkeypatch):
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules

    import mmcv

    from tinysaver.detection import Detections

    monkeypatch.setenv("FASHION_DET_ROOT", str(det_root))
    register_all_modules()
    cfg = Config.fromfile(str(CONFIG))
    detector = MODELS.build(cfg.model)
    detector.threshold = 1e-6
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    data = detector.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), False)
    confident = Detections(np.array([[10, 10, 50, 50]], np.float32), np.array([0.9], np.float32), np.array([1]))
    weak = Detections(np.array([[10, 10, 50, 50]], np.float32), np.array([0.04], np.float32), np.array([1]))
    seen = []
    monkeypatch.setattr(detector.stages[0].yolo, "predict", lambda images: seen.extend(images) or [weak, confident])
    # the original image comes from the pipeline (decoded once), never from disk again
    monkeypatch.setattr(mmcv, "imread", lambda *a, **k: pytest.fail("read the image again"))
    with torch.no_grad():
        out = detector.predict(data["inputs"], data["data_samples"])
    assert [o.tinysaver_stage for o in out] == [1, 0]
    assert seen[0].shape == tuple(out[0].ori_shape) + (3,)
    assert torch.equal(out[1].pred_instances.scores, torch.tensor([0.9]))
    assert out[1].tinysaver_conf == pytest.approx(0.9)
    assert len(out[0].pred_instances) > 0 and not torch.equal(out[0].pred_instances.scores, torch.tensor([0.04]))


def test_detector_threshold_refuses_nan():
    """The scalar ``threshold`` setter is checked like ``thresholds`` (it used to let NaN in)."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from tinysaver.errors import ThresholdError

    register_all_modules()
    detector = MODELS.build(Config.fromfile(str(CONFIG)).model)
    detector.threshold = 0.25
    with pytest.raises(ThresholdError):
        detector.threshold = float("nan")
    with pytest.raises(ThresholdError):
        detector.thresholds = [float("nan")]
    assert detector.thresholds == [0.25] and detector.threshold == 0.25

def test_runner_checkpoint_loads_with_weights_only_and_pickles_are_refused(tmp_path):
    from mmengine.config import ConfigDict
    from mmengine.logging import HistoryBuffer

    from tinysaver.errors import TinySaverError
    from tinysaver.plugins.mmdet import load_checkpoint_state_dict

    good = tmp_path / "runner_style.pth"
    buf = HistoryBuffer()
    buf.update(1.5)
    torch.save({"meta": {"cfg": ConfigDict(a=1), "seed": np.int64(3), "arr": np.arange(3.0)},
                "message_hub": {"log_scalars": {"loss": buf}},
                "state_dict": {"w": torch.ones(2)}}, good)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(good, weights_only=True)  # what mmengine's plain loader would hit
    assert torch.equal(load_checkpoint_state_dict(good)["w"], torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": Evil()}, bad)
    with pytest.raises(TinySaverError, match="refused by the weights_only loader"):
        load_checkpoint_state_dict(bad)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(TinySaverError, match="checkpoint not found"):
        load_checkpoint_state_dict(tmp_path / "missing.pth")


def test_importing_the_yolo_plugin_keeps_torch_load():
    original = torch.load
    import tinysaver.plugins.ultralytics  # noqa: F401
    from ultralytics import YOLO  # noqa: F401

    assert torch.load is original


def test_paper_configs_load_and_plugin_imports_from_anywhere(tmp_path):
    from mmengine.config import Config

    configs = sorted(glob.glob(str(ROOT / "configs" / "tinysaver" / "*.py")))
    names = {Path(c).name for c in configs}
    for v in "nsmlx":
        assert f"yolov8{v}_co-dino-swin-l_coco.py" in names
    assert "yolov8x_dino-swin-l_coco.py" in names
    for path in configs:
        cfg = Config.fromfile(path)
        assert cfg.model.type == "TinySaverDetector" and len(cfg.model.stages) == 2
        saver, base = cfg.model.stages
        assert saver["type"] == "yolo" and saver["checkpoint"].endswith(".pt")
        assert base["type"] == "mmdet" and base["checkpoint"].endswith(".pth")
        assert any(t["type"] == "KeepOriginalImage" for t in cfg.test_dataloader.dataset.pipeline)
        assert cfg.custom_imports["imports"] == ["tinysaver.plugins.mmdet"]
        assert cfg.model.confidence == {"type": "mean_box_score", "min_score": 0.05}
    proc = subprocess.run([sys.executable, "-c", "import tinysaver.plugins.mmdet as m; print(m.TinySaverDetector)"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "TinySaverDetector" in proc.stdout, proc.stderr[-2000:]


def test_det_record_validation(tmp_path):
    from tinysaver.errors import RecordError

    rec = DetRecord.from_lists("m", 1.0, [5, 7], [np.array([[0, 0, 2, 2]]), np.zeros((0, 4))],
                               [np.array([0.5]), np.zeros(0)], [np.array([1]), np.zeros(0, int)], [1, 2])
    back = load_det_record(save_det_record(tmp_path / "r.npz", rec))
    assert back.scores_per_image()[1].size == 0 and back.scores_per_image()[0][0] == 0.5
    with pytest.raises(RecordError, match="det_labels outside"):
        DetRecord.from_lists("m", 1.0, [5], [np.array([[0, 0, 2, 2]])], [np.array([0.5])], [np.array([4])], [1, 2])
    with pytest.raises(RecordError, match="no such file"):
        load_det_record(tmp_path / "nope.npz")


def test_more_than_100_boxes_per_image_give_the_same_stats_in_both_tools(det_root, tmp_path):
    """tools/test.py (mmdet's CocoMetric) and det-tradeoff (from the dumped records) evaluate with
    one maxDets: identical 12 stats even when images keep more than 100 boxes."""
    from tinysaver.detection import CocoScorer, cascade_detections

    work = tmp_path / "run"
    summary = _test_py(det_root, work, "--threshold", "0", "--dump-records", str(work / "records"),
                       "--cfg-options", "model.stages.0.max_det=300", "model.stages.0.conf=0.0001",
                       "model.stages.0.iou=0.9")
    saver = load_det_record(work / "records" / "saver.npz")
    assert max(len(s) for s in saver.scores_per_image()) > 100
    m = summary["metrics"]
    assert m["tinysaver/exit_ratio"] == 1.0  # threshold 0: the saver answers every image
    stats = CocoScorer(_ann(det_root), saver.max_dets).stats(
        cascade_detections(saver, saver, np.ones(len(saver.image_ids), bool)), saver.image_ids, saver.cat_ids)
    mmdet_names = ["mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l", "AR@100", "AR@300", "AR@1000",
                   "AR_s@1000", "AR_m@1000", "AR_l@1000"]
    for ours, theirs in zip(stats, mmdet_names):
        # mmdet rounds its logged stats to 3 decimals
        assert stats[ours] == pytest.approx(m[f"coco/bbox_{theirs}"], abs=5e-4 + 1e-9), (ours, theirs)


def test_three_stage_detection_cascade_equals_its_records(det_root, tmp_path):
    """Two YOLO stages (the checkpoint at 128 and at 192 px) in front of the mmdet base: the live
    cascade, each stage on exactly the images that reach it, equals the chain simulated from the
    records of every stage on every image."""
    from tinysaver.detection import CocoScorer, chain_detections, chain_stages

    config = tmp_path / "three_stage.py"
    yolo = ROOT / "weights" / "det" / "yolov8n_fashion-det.pt"
    config.write_text(
        f"_base_ = [{str(CONFIG)!r}]\n"
        "model = dict(stages=[\n"
        f"    dict(type='yolo', name='yolo128', checkpoint={str(yolo)!r}, imgsz=128, conf=0.001, max_det=100),\n"
        f"    dict(type='yolo', name='yolo192', checkpoint={str(yolo)!r}, imgsz=192, conf=0.001, max_det=100),\n"
        "    {{_base_.retinanet_stage}}],\n"
        "    thresholds=[0.6, 0.5])\n")
    work = tmp_path / "records_run"
    out = work / "summary.json"
    cmd = [sys.executable, str(ROOT / "tools" / "test.py"), str(config), "none", "--work-dir", str(work),
           "--out-json", str(out), "--flops-images", "1", "--dump-records", str(work / "records")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(det_root), timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [load_det_record(work / "records" / f"stage{k}.npz") for k in range(3)]
    assert [r.name for r in records] == ["yolo128", "yolo192", "retinanet_r18-tiny"]
    for thresholds in ([0.6, 0.5], [0.45, 0.55]):
        stage, _ = chain_stages(records, thresholds)
        assert set(stage.tolist()) == {0, 1, 2}, thresholds  # every stage answers some images
        live_dir = tmp_path / f"live_{thresholds[0]}"
        cmd = [sys.executable, str(ROOT / "tools" / "test.py"), str(config), "none", "--work-dir", str(live_dir),
               "--out-json", str(live_dir / "s.json"), "--flops-images", "0", "--thresholds", *map(str, thresholds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(det_root), timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
        m = json.loads((live_dir / "s.json").read_text())["metrics"]
        for k in range(3):
            assert m[f"tinysaver/answered_{k}"] == pytest.approx(np.mean(stage == k))
        sim = CocoScorer(_ann(det_root), records[0].max_dets).stats(chain_detections(records, stage),
                                                                  records[0].image_ids, records[0].cat_ids)
        assert m["coco/bbox_mAP"] == pytest.approx(sim["AP"], abs=5e-4)
        assert m["coco/bbox_mAP_50"] == pytest.approx(sim["AP50"], abs=5e-4)
