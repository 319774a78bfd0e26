"""The ultralytics cascade (tinysaver.plugins.ultralytics): ultralytics' own val metrics, equal to the
single models at the threshold extremes; a letterbox that does not depend on the batch; per-image
costs; records for det-tradeoff; the COCO conversion of YOLO labels; the `tinysaver yolo` command.

Data: Fashion-MNIST detection canvases (plugins/fashion_det.py); weights: weights/det/ (the same
checkpoint at two sizes is a two-stage cascade).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinysaver.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
YOLO_PT = str(ROOT / "weights" / "det" / "yolov8n_fashion-det.pt")
IMAGES = 24


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    from tinysaver.plugins.fashion_det import make_fashion_det

    root = tmp_path_factory.mktemp("fashion_det")
    make_fashion_det(root, {"val": IMAGES})
    return root


def make_mixed_shapes(fashion: Path, root: Path) -> Path:
    """8 canvases of ``fashion`` made non-square (padded right or below by different amounts),
    their YOLO labels moved along, with a ``data.yaml``; returns ``root``."""
    import cv2

    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for i in range(8):
        img = cv2.imread(str(fashion / "images" / "val" / f"{i:06d}.jpg"))
        h, w = img.shape[:2]
        pad_w, pad_h = [(96, 0), (0, 64), (40, 0), (0, 0), (150, 0), (0, 120), (20, 0), (0, 30)][i]
        big = np.full((h + pad_h, w + pad_w, 3), 40, np.uint8)
        big[:h, :w] = img
        cv2.imwrite(str(root / "images" / "val" / f"{i:06d}.jpg"), big)
        lines = []
        for line in (fashion / "labels" / "val" / f"{i:06d}.txt").read_text().splitlines():
            c, cx, cy, bw, bh = line.split()
            lines.append(f"{c} {float(cx) * w / (w + pad_w):.6f} {float(cy) * h / (h + pad_h):.6f} "
                         f"{float(bw) * w / (w + pad_w):.6f} {float(bh) * h / (h + pad_h):.6f}")
        (root / "labels" / "val" / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    yaml = (fashion / "data.yaml").read_text().replace(str(fashion.resolve()), str(root.resolve()))
    (root / "data.yaml").write_text(yaml)
    return root


@pytest.fixture(scope="module")
def mixed_shapes(fashion, tmp_path_factory):
    return make_mixed_shapes(fashion, tmp_path_factory.mktemp("mixed_shapes"))


def _cascade(threshold: float, sizes=(128, 192)):
    from tinysaver.plugins.ultralytics import YOLOCascade

    return YOLOCascade([YOLO_PT, YOLO_PT], thresholds=[threshold], imgsz=list(sizes))


def _yolo_val(data: Path, tmp_path: Path, **kwargs) -> dict:
    from ultralytics import YOLO

    return YOLO(YOLO_PT).val(data=str(data), plots=False, verbose=False, project=str(tmp_path), **kwargs).results_dict


@pytest.mark.parametrize("threshold, who", [(0.0, 0), (1.01, 1)])
def test_val_at_the_extremes_equals_each_model_alone(fashion, tmp_path, threshold, who):
    cascade = _cascade(threshold)
    metrics = cascade.val(data=str(fashion / "data.yaml"), batch=8, verbose=False, progress=False)
    alone = _yolo_val(fashion / "data.yaml", tmp_path, imgsz=(128, 192)[who], batch=8)
    assert metrics.results_dict == alone  # ultralytics' own numbers, to the last bit
    assert set(alone) >= {"metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)"}
    summary = metrics.tinysaver
    assert summary["answered"] == ([1.0, 0.0] if who == 0 else [0.0, 1.0])
    # the cascade pays the stages each image reached
    expected = summary["stage_gflops"][0] + (summary["stage_gflops"][1] if who == 1 else 0.0)
    assert summary["gflops"] == pytest.approx(expected)


def test_val_mixes_the_stages_between_the_extremes(fashion):
    low, mid, high = (_cascade(t).val(data=str(fashion / "data.yaml"), batch=8, verbose=False, progress=False)
                      for t in (0.0, 0.25, 1.01))
    share = mid.tinysaver["answered"][0]
    assert 0 < share < 1, "0.25 should split these images"
    g = mid.tinysaver
    assert g["gflops"] == pytest.approx(g["stage_gflops"][0] + (1 - share) * g["stage_gflops"][1])
    assert mid.box.map not in (low.box.map, high.box.map)


def test_val_letterboxes_each_image_on_its_own(mixed_shapes, tmp_path):
    """Images of different shapes: every image in its own rectangle (= ultralytics' rectangular val
    with batches of one), whatever the batch; the cost counted at each image's own shape."""
    from ultralytics.utils.torch_utils import get_flops
    from ultralytics import YOLO

    data = mixed_shapes / "data.yaml"
    one = _cascade(0.0).val(data=str(data), batch=1, verbose=False, progress=False)
    own_rectangles = _yolo_val(data, tmp_path, imgsz=128, batch=1, rect=True)
    assert one.results_dict == own_rectangles
    # batched (images of one shape run together): the same letterbox, equal up to float rounding
    metrics = _cascade(0.0).val(data=str(data), batch=4, verbose=False, progress=False)
    for key, value in own_rectangles.items():
        assert metrics.results_dict[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    # ultralytics' default, rectangular batches of 4, letterboxes each image by its batch: other numbers
    by_batch = _yolo_val(data, tmp_path, imgsz=128, batch=4, rect=True)
    assert max(abs(by_batch[k] - own_rectangles[k]) for k in by_batch) > 1e-3
    # square letterbox: equal at any batch size
    square = _cascade(0.0).val(data=str(data), batch=4, rect=False, verbose=False, progress=False)
    assert square.results_dict == _yolo_val(data, tmp_path, imgsz=128, batch=4, rect=False)
    # per-image cost at the shape each image ran at: not all equal, and not the square's
    model = YOLO(YOLO_PT).model
    from tinysaver.plugins.ultralytics.val import StageVal

    from tinysaver.plugins.ultralytics import YOLOModel

    stage = YOLOModel(YOLO_PT, imgsz=128)
    val = StageVal(stage, dict(data=str(data), batch=4, rect=True, imgsz=128, plots=False, verbose=False),
                   tmp_path / "v")
    shapes = [val.shape_of(i) for i in range(8)]
    assert len(set(shapes)) > 3
    per_image = [get_flops(model, list(s)) for s in shapes]
    assert metrics.tinysaver["stage_gflops"][0] == pytest.approx(np.mean(per_image))
    # (ultralytics' rectangles carry half a stride of padding: not cheaper than the square per se)
    assert len({round(g, 6) for g in per_image}) >= 3
    assert square.tinysaver["stage_gflops"][0] == pytest.approx(get_flops(model, [128, 128]))


def test_predict_letterbox_does_not_depend_on_the_batch(fashion):
    import cv2
    from ultralytics import YOLO

    from tinysaver.plugins.ultralytics import YOLOModel

    square = cv2.imread(str(fashion / "images" / "val" / "000000.jpg"))
    wide = cv2.resize(cv2.imread(str(fashion / "images" / "val" / "000001.jpg")), (300, 140))
    model = YOLOModel(YOLO_PT, imgsz=192, conf=0.001)
    alone = model.predict([wide])[0]
    mixed = model.predict([square, wide, square])[1]
    np.testing.assert_array_equal(alone.bboxes, mixed.bboxes)
    np.testing.assert_array_equal(alone.scores, mixed.scores)
    # the problem it fixes: plain ultralytics letterboxes the wide image to the square in a mixed batch
    yolo = YOLO(YOLO_PT)
    plain_alone = yolo.predict([wide], imgsz=192, conf=0.001, verbose=False)[0].boxes.conf.numpy()
    plain_mixed = yolo.predict([square, wide], imgsz=192, conf=0.001, verbose=False)[1].boxes.conf.numpy()
    assert len(plain_alone) != len(plain_mixed) or not np.allclose(plain_alone, plain_mixed, atol=1e-3)
    np.testing.assert_array_equal(alone.scores, plain_alone)  # alone, ours is ultralytics' own answer
    assert model.letterbox_shape(140, 300) == (96, 192)
    assert model.image_gflops([(140, 300)])[0] == pytest.approx(model.gflops_at(96, 192))


def test_predict_returns_ultralytics_results_with_the_answering_stage(fashion):
    from ultralytics.engine.results import Results

    from tinysaver.plugins.ultralytics import YOLOModel

    files = sorted(str(p) for p in (fashion / "images" / "val").glob("*.jpg"))[:10]
    cascade = _cascade(0.25)
    results = cascade.predict(files, conf=0.001, batch=4)
    assert [r.path for r in results] == files and all(isinstance(r, Results) for r in results)
    stages = [r.tinysaver_stage for r in results]
    assert set(stages) == {0, 1}
    saver, base = YOLOModel(YOLO_PT, imgsz=128, conf=0.001), YOLOModel(YOLO_PT, imgsz=192, conf=0.001)
    import cv2

    images = [cv2.imread(f) for f in files]
    saver_conf = cascade.confidence([r.boxes.conf.numpy() for r in saver.predict_results(images)])
    np.testing.assert_array_equal(stages, np.where(saver_conf >= 0.25, 0, 1))
    for r, img in zip(results, images):
        expected = (saver if r.tinysaver_stage == 0 else base).predict_results([img])[0]
        # batched with other images of its shape: equal up to float rounding
        np.testing.assert_allclose(r.boxes.xyxy.numpy(), expected.boxes.xyxy.numpy(), atol=1e-3)
        reached = saver.image_gflops([img.shape[:2]])[0] + (base.image_gflops([img.shape[:2]])[0]
                                                             if r.tinysaver_stage == 1 else 0.0)
        assert r.tinysaver_gflops == pytest.approx(reached)
        assert r.tinysaver_model == cascade.stage_names[r.tinysaver_stage]


def test_val_records_feed_det_tradeoff(fashion, tmp_path):
    from tinysaver.detection import det_tradeoff, load_det_record

    metrics = _cascade(0.25).val(data=str(fashion / "data.yaml"), batch=8, verbose=False, progress=False,
                                 records=str(tmp_path / "rec"))
    saver, base = (load_det_record(tmp_path / "rec" / f"{n}.npz") for n in ("saver", "base"))
    assert saver.image_gflops is not None and saver.name == "yolov8n_fashion-det@128"
    sim = det_tradeoff(str(tmp_path / "rec" / "instances_val.json"), saver, base, [0.25, 0.0, 1.01], progress=False)
    assert sim["rows"][0]["exit_ratio"] == metrics.tinysaver["answered"][0]
    assert sim["rows"][0]["gflops"] == pytest.approx(metrics.tinysaver["gflops"])
    assert sim["rows"][1]["AP"] == sim["saver"]["AP"] and sim["saver"]["AP50"] > 0.3


def test_yolo_to_coco_gives_the_canvases_boxes(fashion, tmp_path):
    from tinysaver.plugins.ultralytics import yolo_to_coco

    coco = yolo_to_coco(str(fashion / "data.yaml"), "val", out=str(tmp_path / "ann.json"))
    native = json.loads((fashion / "annotations" / "instances_val.json").read_text())
    assert json.loads((tmp_path / "ann.json").read_text()) == coco
    assert [c["name"] for c in coco["categories"]] == [c["name"] for c in native["categories"]]
    def boxes(ann):
        name = {im["id"]: im["file_name"] for im in ann["images"]}
        return sorted((name[a["image_id"]], a["category_id"], *a["bbox"]) for a in ann["annotations"])
    ours, theirs = boxes(coco), boxes(native)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a[:2] == b[:2] and np.allclose(a[2:], b[2:], atol=1e-3)  # YOLO labels keep 6 decimals


def test_bad_ultralytics_arguments_are_one_line_errors(fashion, tmp_path):
    """A value ultralytics refuses, an unknown key or a data file that is not a dataset .yaml is a
    TinySaverError before any stage runs, not a traceback from inside ultralytics."""
    from tinysaver.errors import TinySaverError

    cascade = _cascade(0.5)
    data = str(fashion / "data.yaml")
    for kwargs, message in [(dict(conf=2), "'conf=2' is an invalid value"), (dict(max_det="x"), "'max_det' must be an int"),
                            (dict(foo=1), "'foo' is not an ultralytics val argument"),
                            (dict(data=str(ROOT / "README.md")), "README.md: not a dataset .yaml file"),
                            (dict(data=str(tmp_path / "none.yaml")), "none.yaml: dataset file not found")]:
        with pytest.raises(TinySaverError, match=message) as info:
            cascade.val(**{"data": data, **kwargs}, verbose=False, progress=False)
        assert "\n" not in str(info.value)
    files = sorted(str(p) for p in (fashion / "images" / "val").glob("*.jpg"))[:2]
    with pytest.raises(TinySaverError, match="'bar' is not an ultralytics predict argument"):
        cascade.predict(files, bar=1)
    with pytest.raises(TinySaverError, match="'iou=1.5' is an invalid value"):
        cascade.predict(files, iou=1.5)


def test_yolo_cli(fashion, tmp_path, capsys):
    out = tmp_path / "val.json"
    assert cli(["yolo", "val", f"saver={YOLO_PT}", f"base={YOLO_PT}", "imgsz=128,192", "threshold=0.45",
                f"data={fashion / 'data.yaml'}", "batch=8", f"json={out}"]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["metrics/mAP50-95(B)"] > 0.2 and len(result["tinysaver"]["answered"]) == 2
    assert "cascade:" in capsys.readouterr().out
    assert cli(["yolo", "val", f"saver={YOLO_PT}", f"data={fashion / 'data.yaml'}"]) == 2
    assert cli(["yolo", "val", "models=a.pt,b.pt", "data=x.yaml"]) == 2  # missing checkpoints
    assert cli(["yolo", "coco", "data=nope.yaml"]) == 2
    assert "error" in capsys.readouterr().err


def test_yolo_help_example_runs_on_the_demo_layout(tmp_path, monkeypatch, capsys):
    """`tinysaver yolo --help` ends with an example that runs where `make demo` ran."""
    from tests.test_paper_cuts import _help_example
    from tinysaver.plugins.fashion_det import make_fashion_det

    monkeypatch.chdir(tmp_path)
    make_fashion_det(tmp_path / "data" / "fashion_det", {"val": 8})
    (tmp_path / "weights").symlink_to(ROOT / "weights")
    argv = _help_example("yolo", capsys)
    assert cli(argv) == 0
    assert json.loads(Path("yolo_val.json").read_text())["tinysaver"]["images"] == 8
    assert max(len(line) for line in capsys.readouterr().out.splitlines() if "cascade" in line) <= 100
