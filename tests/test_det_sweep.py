"""The fast detection sweep (each model matched once, each threshold re-accumulated) equals a full
COCOeval at every threshold; ``--thresholds all``; per-image costs; the deferral-signal panel."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinysaver.cli import main as cli
from tinysaver.confidence import build_confidence, detection_confidences
from tinysaver.detection import (CocoScorer, DetRecord, chain_detections, det_tradeoff, exact_thresholds,
                                 load_det_record, save_det_record)

CATS = 4


def _ground_truth(rng: np.random.Generator, images: int) -> dict:
    anns, rows = [], []
    for i in range(1, images + 1):
        rows.append({"id": 10 * i + 3, "file_name": f"{i}.jpg", "width": 320, "height": 240})
        for _ in range(int(rng.integers(0, 6))):  # some images have no object at all
            side = float(np.exp(rng.uniform(np.log(8), np.log(200))))  # small, medium and large
            x, y = rng.uniform(0, 120, 2)
            anns.append({"id": len(anns) + 1, "image_id": 10 * i + 3, "category_id": int(rng.integers(1, CATS + 1)),
                         "bbox": [x, y, side, side * 0.8], "area": side * side * 0.8,
                         "iscrowd": int(rng.random() < 0.05)})
    return {"images": rows, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, CATS + 1)]}


def _record(rng: np.random.Generator, gt: dict, name: str, skill: float, crowded: int = -1) -> DetRecord:
    by_image: dict = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    boxes, scores, labels = [], [], []
    for j, img in enumerate(gt["images"]):
        b, s, c = [], [], []
        for a in by_image.get(img["id"], []):
            if rng.random() < skill:
                x, y, w, h = a["bbox"]
                d = rng.normal(0, 0.1, 4) * [w, h, w, h]
                b.append([x + d[0], y + d[1], x + w + d[2], y + h + d[3]])
                s.append(round(float(rng.uniform(0.2, 1.0)), 2))  # rounded: ties across images
                c.append(a["category_id"] - 1)
        n_fp = 150 if j == crowded else int(rng.integers(0, 8))  # one image beyond maxDets 100
        for _ in range(n_fp):
            x, y = rng.uniform(0, 200, 2)
            w = float(rng.uniform(5, 120))
            b.append([x, y, x + w, y + w])
            s.append(round(float(rng.uniform(0.001, 0.6)), 2))
            c.append(int(rng.integers(0, CATS)) if j != crowded else 0)
        boxes.append(np.asarray(b, np.float32).reshape(-1, 4))
        scores.append(np.asarray(s, np.float32))
        labels.append(np.asarray(c, np.int64))
    rec = DetRecord.from_lists(name, 1.0 if name == "saver" else 3.0, [im["id"] for im in gt["images"]], boxes,
                               scores, labels, list(range(1, CATS + 1)))
    rec.max_dets = (1, 10, 100)  # small maxDets so that the cut at 1 and 10 per image matters
    return rec


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rng = np.random.default_rng(7)
    gt = _ground_truth(rng, 60)
    ann = tmp_path_factory.mktemp("sweep") / "instances.json"
    ann.write_text(json.dumps(gt))
    return str(ann), _record(rng, gt, "saver", 0.6, crowded=5), _record(rng, gt, "base", 0.9, crowded=9)


def test_sweep_equals_full_cocoeval_at_every_threshold(synthetic):
    ann, saver, base = synthetic
    scorer = CocoScorer(ann, saver.max_dets)
    sweep = scorer.sweep([saver, base])
    conf = build_confidence("mean_box_score")(saver.scores_per_image())
    thresholds = exact_thresholds(conf)
    assert len(thresholds) > 20
    for t in thresholds:
        stage = np.where(conf >= t, 0, 1)
        full = scorer.stats(chain_detections([saver, base], stage), saver.image_ids, saver.cat_ids)
        fast = sweep.stats(stage)
        assert fast.keys() == full.keys()
        for key in full:
            assert abs(fast[key] - full[key]) <= 1e-9, (t, key, fast[key], full[key])
    # a mix no threshold gives (three records, any stage per image) is exact too
    third = _record(np.random.default_rng(3), json.loads(Path(ann).read_text()), "third", 0.75)
    sweep3 = scorer.sweep([saver, base, third])
    stage = np.random.default_rng(0).integers(0, 3, len(conf))
    full = scorer.stats(chain_detections([saver, base, third], stage), saver.image_ids, saver.cat_ids)
    assert max(abs(sweep3.stats(stage)[k] - full[k]) for k in full) <= 1e-9


def test_sweep_without_detections_matches_the_scorer(synthetic):
    ann, saver, base = synthetic
    empty = DetRecord.from_lists("empty", 1.0, saver.image_ids, [np.zeros((0, 4))] * len(saver.image_ids),
                                 [np.zeros(0)] * len(saver.image_ids), [np.zeros(0, np.int64)] * len(saver.image_ids),
                                 saver.cat_ids)
    scorer = CocoScorer(ann, (1, 10, 100))
    sweep = scorer.sweep([empty, base])
    assert all(v == 0.0 for v in sweep.stats(np.zeros(len(saver.image_ids), np.int64)).values())
    stage = (np.arange(len(saver.image_ids)) % 2).astype(np.int64)
    full = scorer.stats(chain_detections([empty, base], stage), saver.image_ids, saver.cat_ids)
    assert max(abs(sweep.stats(stage)[k] - full[k]) for k in full) <= 1e-9


def test_det_tradeoff_all_thresholds_and_per_image_costs(synthetic, tmp_path):
    ann, saver, base = synthetic
    m = len(saver.image_ids)
    saver.image_gflops = np.linspace(1.0, 2.0, m)  # e.g. images of different sizes
    base.image_gflops = np.linspace(3.0, 9.0, m)
    paths = [save_det_record(tmp_path / f"{r.name}.npz", r) for r in (saver, base)]
    saver, base = (load_det_record(p) for p in paths)
    np.testing.assert_array_equal(saver.image_gflops, np.linspace(1.0, 2.0, m))
    out = tmp_path / "all.json"
    assert cli(["det-tradeoff", "--ann", ann, "--saver", str(paths[0]), "--base", str(paths[1]), "--thresholds", "all",
                "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    conf = build_confidence("mean_box_score")(saver.scores_per_image())
    assert len(rows) == len(np.unique(conf)) + 1 and rows[-1]["threshold"] == "inf" and rows[-1]["exit_ratio"] == 0
    assert [r["exit_ratio"] for r in rows] == sorted((r["exit_ratio"] for r in rows), reverse=True)
    exits = conf >= rows[7]["threshold"]
    # the cost of a threshold: each image pays the saver, and the base where it does not exit
    assert rows[7]["gflops"] == pytest.approx(np.mean(saver.image_gflops + np.where(exits, 0, base.image_gflops)))
    result = det_tradeoff(ann, saver, base, [0.0, 2.0], progress=False)
    assert result["saver"]["gflops"] == pytest.approx(1.5) and result["base"]["gflops"] == pytest.approx(6.0)
    assert result["cost"] == "per image"
    assert cli(["det-tradeoff", "--ann", ann, "--saver", str(paths[0]), "--base", str(paths[1]),
                "--thresholds", "0", "1"]) == 2


def test_record_refuses_bad_image_costs(synthetic):
    from tinysaver.errors import RecordError

    _, saver, _ = synthetic
    with pytest.raises(RecordError, match="image_gflops"):
        DetRecord(name="x", gflops=1.0, image_ids=saver.image_ids, det_image=saver.det_image, det_boxes=saver.det_boxes,
                  det_scores=saver.det_scores, det_labels=saver.det_labels, cat_ids=saver.cat_ids,
                  image_gflops=np.ones(3))


# --- deferral signals ----------------------------------------------------------------------------

def _two_images(tmp_path):
    """Image 1: the saver finds the object, the base also adds a false positive; image 2: only the
    base finds it."""
    gt = {"images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100},
                     {"id": 2, "file_name": "2.jpg", "width": 100, "height": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [20, 20, 40, 40], "area": 1600, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "a"}]}
    ann = tmp_path / "two.json"
    ann.write_text(json.dumps(gt))
    box1, box2, far = [10, 10, 50, 50], [20, 20, 60, 60], [70, 70, 95, 95]
    saver = DetRecord.from_lists("saver", 1.0, [1, 2], [np.array([box1]), np.array([far])],
                                 [np.array([0.9]), np.array([0.8])], [np.array([0]), np.array([0])], [1])
    base = DetRecord.from_lists("base", 3.0, [1, 2], [np.array([box1, far]), np.array([box2])],
                                [np.array([0.9, 0.6]), np.array([0.7])], [np.array([0, 0]), np.array([0])], [1])
    return str(ann), saver, base


def test_oracle_quality_and_order(tmp_path):
    from tinysaver.detection.signals import image_quality, oracle_confidence

    ann, saver, base = _two_images(tmp_path)
    sweep = CocoScorer(ann).sweep([saver, base])
    # F1 at IoU 0.5: saver 1 on image 1 (TP), 0 on image 2 (FP + FN); base 2/3 on image 1, 1 on image 2
    np.testing.assert_allclose(image_quality(sweep, 0, "f1"), [1.0, 0.0])
    np.testing.assert_allclose(image_quality(sweep, 1, "f1"), [2 / 3, 1.0])
    # per-image AP ignores the false positive ranked below the true one
    np.testing.assert_allclose(image_quality(sweep, 1, "ap"), [1.0, 1.0])
    conf = oracle_confidence(sweep, "f1")
    assert conf[0] > conf[1]  # image 2 (base much better there) is deferred first


def test_area_between_curves():
    from tinysaver.detection.signals import area_between

    line = [{"gflops": g, "AP": 0.5} for g in (1.0, 2.0, 3.0)]
    peak = [{"gflops": 1.0, "AP": 0.5}, {"gflops": 2.0, "AP": 0.7}, {"gflops": 3.0, "AP": 0.5}]
    area, gap = area_between(line, peak)
    assert area == pytest.approx(20.0) and gap == pytest.approx(10.0)  # a triangle of 2 GFLOPs x 20 AP points / 2


def test_signal_panel_and_cli(synthetic, tmp_path, capsys):
    ann, saver, base = synthetic
    paths = [save_det_record(tmp_path / f"{r.name}.npz", r) for r in (saver, base)]
    out, png, md = tmp_path / "s.json", tmp_path / "s.png", tmp_path / "s.md"
    assert cli(["det-signals", "--ann", ann, "--saver", str(paths[0]), "--base", str(paths[1]), "--json", str(out),
                "--plot", str(png), "--markdown", str(md), "--signals", "mean_box_score", "topk_mean_box_score:k=2",
                "box_count"]) == 0
    panel = json.loads(out.read_text())
    assert set(panel["signals"]) == {"mean_box_score", "topk_mean_box_score:k=2", "box_count"}
    assert panel["best"] == min(panel["signals"], key=lambda s: panel["signals"][s]["area_to_oracle"])
    ends = {(c["points"][0]["exit_ratio"], c["points"][-1]["exit_ratio"]) for c in
            [panel["oracle"], panel["random"], *panel["signals"].values()]}
    assert ends == {(1.0, 0.0)}  # every curve runs from "all exit" to "none exits"
    assert len(panel["oracle"]["points"]) == len(saver.image_ids) + 1  # distinct oracle values: every exit count
    assert png.read_bytes()[:4] == b"\x89PNG" and "| oracle |" in md.read_text()
    # every registered detection confidence by default, the new ones included
    assert {"topk_mean_box_score", "box_score_certainty", "mean_box_score"} <= set(detection_confidences())
    capsys.readouterr()
    assert cli(["det-signals", "--ann", ann, "--saver", str(paths[0]), "--base", str(paths[1]),
                "--signals", "max_softmax"]) == 2
    assert "not a detection confidence" in capsys.readouterr().err


def test_new_detection_confidences():
    s = [np.array([0.9, 0.8, 0.7, 0.1, 0.04]), np.zeros(0), np.array([0.5])]
    np.testing.assert_allclose(build_confidence("topk_mean_box_score", k=2)(s), [0.85, 0.0, 0.5])
    certainty = build_confidence("box_score_certainty")(s)
    assert certainty[1] == 0.0 and certainty[2] == pytest.approx(0.0)  # a 0.5 box: one bit of entropy
    assert 0 < certainty[0] < 1


def test_det_signals_help_example_runs_on_demo_outputs(tmp_path, monkeypatch, capsys):
    from tests.test_paper_cuts import _help_example, _write_demo_detection

    monkeypatch.chdir(tmp_path)
    _write_demo_detection(tmp_path)
    argv = _help_example("det-signals", capsys)
    assert cli(argv) == 0
    panel = json.loads(Path("signals.json").read_text())
    assert set(detection_confidences()) == set(panel["signals"]) and Path("signals.png").stat().st_size > 0
