"""Quantized stages (``tinysaver export --precision``): an int8 saver calibrated on the Fashion-MNIST
holdout split runs in :class:`OnnxCascade` unchanged and agrees with its fp32 graph on the top-1
class of real test images; fp16 too; the manifest says each stage's precision, calibration images
and agreement; a manifest without precisions reads as fp32; a broken conversion and images a stage
cannot take are refused before anything is written. The command-line refusals are in
``tests/test_bad_input.py``; serving an int8 export in ``tests/test_serve.py``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
import torch

from tinysaver import Cascade, TinySaverError
from tinysaver.cli import main
from tinysaver.runtime import OnnxCascade, StageModel, make_session, preprocess_image, read_manifest, stage_specs
from tinysaver.runtime.export import export_cascade
from tinysaver.runtime.quantize import Calibration, CalibrationError, check_precisions

from .test_export import FMNIST_PREPROCESS

N = 500  # real test images the precisions are compared on
CALIB = 256
NAMES = ["fmnist_cnn_s", "fmnist_cnn_l"]


@pytest.fixture(scope="module")
def test_images():
    from PIL import Image

    from tinysaver.plugins.datasets import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    x = np.stack([preprocess_image(Image.fromarray(img, mode="L"), FMNIST_PREPROCESS) for img in images[:N]])
    return x, labels[:N]


@pytest.fixture(scope="module")
def pair():
    from tinysaver.plugins.timm import create_classifier

    torch.set_grad_enabled(False)
    return [create_classifier(name) for name in NAMES]


@pytest.fixture(scope="module")
def exports(pair, tmp_path_factory):
    """The pair exported three ways: fp32 (library), int8 saver + fp32 base (the command line, with
    the single graph), fp16 (library, no calibration images)."""
    root = tmp_path_factory.mktemp("quantize")
    cascade = Cascade(*pair, threshold=0.9)
    export_cascade(cascade, root / "fp32", names=NAMES, data_configs=[FMNIST_PREPROCESS] * 2)
    argv = ["export", "--stages", *NAMES, "--thresholds", "0.9", "--precision", "int8", "fp32",
            "--calib-data", "fashion_mnist", "--calib-split", "holdout", "--calib-limit", str(CALIB),
            "--single-graph", "--out", str(root / "int8")]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    (root / "int8_stdout.txt").write_text(printed.getvalue())
    export_cascade(cascade, root / "fp16", names=NAMES, data_configs=[FMNIST_PREPROCESS] * 2, precision="fp16")
    return root


def _stage_logits(directory, k: int, x: np.ndarray) -> np.ndarray:
    spec = stage_specs(read_manifest(directory))[k]
    return StageModel(make_session(directory / spec.file), spec)(x)


def test_an_int8_saver_runs_in_onnx_cascade_and_agrees_with_fp32(exports, test_images):
    x, labels = test_images
    manifest = read_manifest(exports / "int8")  # also checks every file's sha256
    saver, base = manifest["stages"]
    assert saver["precision"] == "int8" and base["precision"] == "fp32" and "agreement" not in base
    assert saver["calibration"] == dict(data="fashion_mnist", split="holdout", count=CALIB, seed=0)
    check = saver["agreement"]
    assert check["samples"] == CALIB and check["on"] == "calibration images" and check["top1"] >= 0.95
    assert "quantize_static" in saver["converter"]
    for stage in manifest["stages"]:  # the sha256 is of the file written
        assert hashlib.sha256((exports / "int8" / stage["file"]).read_bytes()).hexdigest() == stage["sha256"]
    assert f"top-1 agreement with the fp32 graph {check['top1']:.2%} on {CALIB} calibration images " \
           "(fashion_mnist/holdout)" in (exports / "int8_stdout.txt").read_text()
    # really int8: per-channel QDQ around int8 weights, a graph about a third of the fp32 one
    import onnx

    graph = onnx.load(str(exports / "int8" / saver["file"]))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {init.data_type for init in graph.graph.initializer} & {onnx.TensorProto.INT8}
    fp32_file = exports / "fp32" / saver["file"]
    assert (exports / "int8" / saver["file"]).stat().st_size < 0.5 * fp32_file.stat().st_size

    cascade = OnnxCascade(exports / "int8")
    assert [s.precision for s in cascade.specs] == ["int8", "fp32"]
    out = cascade(x)
    assert out.logits.shape == (N, 10) and out.logits.dtype == np.float32
    assert out.stage.shape == (N,) and set(out.stage.tolist()) == {0, 1}
    assert out.confidence.shape == (N,) and out.confidence.dtype == np.float64
    single = OnnxCascade(exports / "int8", single_graph=True)(x)
    np.testing.assert_array_equal(single.stage, out.stage)
    # the int8 saver against the fp32 saver on real test images (never calibrated on)
    q, f = _stage_logits(exports / "int8", 0, x), _stage_logits(exports / "fp32", 0, x)
    agree = float(np.mean(q.argmax(1) == f.argmax(1)))
    acc_q, acc_f = float(np.mean(q.argmax(1) == labels)), float(np.mean(f.argmax(1) == labels))
    print(f"int8 vs fp32 saver on {N} test images: top-1 agreement {agree:.2%}, accuracy {acc_q:.2%} vs {acc_f:.2%}, "
          f"largest logit difference {np.abs(q - f).max():.3g}")
    assert agree >= 0.97 and abs(acc_q - acc_f) <= 0.02
    np.testing.assert_array_equal(_stage_logits(exports / "int8", 1, x), _stage_logits(exports / "fp32", 1, x))


def test_fp16_stages_keep_float32_io_and_agree_with_fp32(exports, test_images):
    x, _ = test_images
    manifest = read_manifest(exports / "fp16")
    for stage in manifest["stages"]:
        assert stage["precision"] == "fp16" and "calibration" not in stage
        assert stage["agreement"]["on"] == "random inputs" and stage["agreement"]["top1"] >= 0.9
    out, ref = OnnxCascade(exports / "fp16")(x), OnnxCascade(exports / "fp32")(x)
    assert out.logits.dtype == np.float32 and out.logits.shape == ref.logits.shape
    assert np.mean(out.logits.argmax(1) == ref.logits.argmax(1)) >= 0.99
    assert np.abs(_stage_logits(exports / "fp16", 0, x) - _stage_logits(exports / "fp32", 0, x)).max() < 0.1


def test_a_manifest_without_precisions_reads_as_fp32_and_an_unknown_one_is_refused(exports, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(exports / "fp32", old)
    manifest = json.loads((old / "cascade.json").read_text())
    for stage in manifest["stages"]:
        del stage["precision"]
    (old / "cascade.json").write_text(json.dumps(manifest))
    assert [s.precision for s in OnnxCascade(old).specs] == ["fp32", "fp32"]
    manifest["stages"][0]["precision"] = "int4"
    (old / "cascade.json").write_text(json.dumps(manifest))
    with pytest.raises(TinySaverError, match="precision 'int4', which this runtime does not run"):
        OnnxCascade(old)


def test_a_broken_conversion_is_refused_and_nothing_is_written(pair, tmp_path, monkeypatch):
    from tinysaver.runtime import quantize

    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # a floor no conversion meets: the refusal path
    out = tmp_path / "exp"
    with pytest.raises(TinySaverError, match=r"fmnist_cnn_s: the int8 graph agrees .* a broken conversion"):
        export_cascade(Cascade(*pair, threshold=0.9), out, names=NAMES, data_configs=[FMNIST_PREPROCESS] * 2,
                       precision=["int8", "fp32"], calib=Calibration("fashion_mnist", "holdout", limit=32))
    assert not out.exists() or list(out.iterdir()) == []


def test_library_refusals_in_library_terms(pair, tmp_path):
    with pytest.raises(TinySaverError, match="unknown precision 'int4'"):
        check_precisions("int4", 2)
    with pytest.raises(TinySaverError, match="3 precisions for 2 stages"):
        check_precisions(["fp32"] * 3, 2)
    with pytest.raises(TinySaverError, match="int8 stages need calibration images"):
        check_precisions(["int8", "fp32"], 2)
    with pytest.raises(TinySaverError, match="opset >= 13"):
        check_precisions("int8", 2, Calibration("fashion_mnist", "holdout"), opset=11)
    assert check_precisions("fp16", 3) == ["fp16"] * 3
    # grey Fashion-MNIST images cannot calibrate a three-channel stage
    rgb = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10)).eval()
    config = dict(FMNIST_PREPROCESS, input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.25] * 3)
    out = tmp_path / "exp"
    with pytest.raises(CalibrationError, match="fashion_mnist/holdout: image .* is grey, but stage rgb takes 3-channel"):
        export_cascade(Cascade(rgb, pair[1], threshold=0.9), out, names=["rgb", "l"],
                       data_configs=[config, FMNIST_PREPROCESS], precision=["int8", "fp32"],
                       calib=Calibration("fashion_mnist", "holdout", limit=8))
    with pytest.raises(CalibrationError, match="unknown Fashion-MNIST split 'val'"):
        export_cascade(Cascade(*pair, threshold=0.9), out, data_configs=[FMNIST_PREPROCESS] * 2, precision="int8",
                       calib=Calibration("fashion_mnist", "val"))
    assert not out.exists() or list(out.iterdir()) == []
