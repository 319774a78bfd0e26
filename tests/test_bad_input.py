"""Bad input, the way an adversarial user gives it: every user-facing command answers with exit code
2 and one line on stderr that names the file or argument and the problem, writes no output file
(not even a partial or temporary one) and never runs code from a file it reads.

Each case runs the real command (in process for speed, ``tinysaver``/``tools/*.py`` as subprocesses
where the real stderr matters) on tiny inputs built once per module.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, NamedTuple, Sequence

import numpy as np
import pytest
import torch

from tinysaver import Record, save_record
from tinysaver.cli import main
from tinysaver.detection import DetRecord, save_det_record

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "fashion_mnist"
YOLO_PT = ROOT / "weights" / "det" / "yolov8n_fashion-det.pt"
SAMPLES = 60
CATEGORIES = (1, 2)


class RunsCode:
    """Unpickling this touches ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- the inputs ------------------------------------------------------------------------------------

def _record(d: Path, name: str, seed: int, gmacs: float = 1.0, **arrays) -> Path:
    rng = np.random.default_rng(seed)
    label = np.arange(SAMPLES) % 10
    pred = np.where(rng.random(SAMPLES) < 0.8, label, (label + 1) % 10)
    rec = Record(name, gmacs, rng.uniform(0.2, 1.0, SAMPLES), pred, label)
    return save_record(d / f"{name}.npz", rec)


def _raw_npz(path: Path, base: Path, allow_pickle: bool = False, **changes) -> Path:
    """``base``'s arrays with ``changes`` (None removes a key), written as is: no validation."""
    with np.load(base) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **{k: v for k, v in arrays.items() if v is not None}, allow_pickle=allow_pickle)
    return path


def _det_record(d: Path, name: str, image_ids: Sequence[int] = (1, 2, 3, 4, 5), cat_ids=CATEGORIES,
                shift: float = 0.0, **fields) -> Path:
    n = len(image_ids)
    rec = DetRecord.from_lists(name, 1.0, list(image_ids), [np.array([[10 + shift, 10, 40, 40]], np.float32)] * n,
                               [np.array([0.9 - 0.1 * i], np.float32) for i in range(n)],
                               [np.array([0])] * n, list(cat_ids))
    for key, value in fields.items():
        setattr(rec, key, value)
    return save_det_record(d / f"{name}.npz", rec)


def _annotations() -> dict:
    return {"images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in range(1, 6)],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900,
                             "iscrowd": 0} for i in range(1, 6)],
            "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORIES]}


def _image(path: Path, mode: str = "L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (28, 28)).save(path)


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """Every input of the catalogue, good and bad, in one folder."""
    d = tmp_path_factory.mktemp("bad_input")
    base, saver = _record(d, "base", 0, gmacs=10.0), _record(d, "saver", 1)
    _record(d, "saver2", 2, gmacs=2.0)
    _raw_npz(d / "nan_conf.npz", saver, conf=np.where(np.arange(SAMPLES) == 3, np.nan, 0.5))
    _raw_npz(d / "inf_conf.npz", saver, conf=np.where(np.arange(SAMPLES) == 3, np.inf, 0.5))
    _raw_npz(d / "str_conf.npz", saver, conf=np.array(["high"] * SAMPLES))
    _raw_npz(d / "float_pred.npz", saver, pred=np.linspace(0, 9, SAMPLES))
    _raw_npz(d / "short_label.npz", saver, label=np.zeros(SAMPLES - 1, np.int64))
    _raw_npz(d / "bad_recording.npz", saver, recording=np.str_("{not json"))
    _raw_npz(d / "object_array.npz", saver, allow_pickle=True,
             conf=np.array([RunsCode(d / "PWNED_npz")] * SAMPLES, dtype=object))
    _raw_npz(d / "shuffled.npz", saver, label=np.roll(np.load(saver)["label"], 1))
    _raw_npz(d / "unlabelled.npz", saver, label=np.full(SAMPLES, -1))  # unlabelled data's placeholder
    _raw_npz(d / "zero_classes.npz", saver, num_classes=np.int64(0))
    _raw_npz(d / "negative_pred.npz", saver, pred=np.where(np.arange(SAMPLES) == 7, -1, np.load(saver)["pred"]))
    (d / "text.npz").write_text("conf,pred,label\n0.9,1,1\n")
    np.save(d / "plain.npy", np.ones(3))
    (d / "plain.npy").rename(d / "plain_npy.npz")

    ann = _annotations()
    (d / "ann.json").write_text(json.dumps(ann))
    (d / "ann_malformed.json").write_text('{"images": [')
    (d / "ann_empty.json").write_text("")
    for key in ("images", "annotations", "categories"):
        (d / f"ann_no_{key}.json").write_text(json.dumps({k: v for k, v in ann.items() if k != key}))
    _det_record(d, "det_saver")
    _det_record(d, "det_base", shift=1.0)
    _det_record(d, "det_other_cats", cat_ids=(7, 8))
    _det_record(d, "det_other_images", image_ids=(2, 3, 4, 5, 6))
    _det_record(d, "det_unknown_images", image_ids=(101, 102, 103, 104, 105))
    _det_record(d, "det_maxdets_1_10_100", max_dets=(1, 10, 100))
    _det_record(d, "det_maxdets_100_300_1000", shift=1.0, max_dets=(100, 300, 1000))
    _raw_npz(d / "det_outside.npz", d / "det_saver.npz", det_image=np.array([0, 1, 2, 3, 40]))
    _raw_npz(d / "det_float_labels.npz", d / "det_saver.npz", det_labels=np.full(5, 0.5))

    (d / "garbage.pth").write_bytes(np.random.default_rng(0).bytes(2000))
    good = (WEIGHTS / "fmnist_cnn_xs.pth").read_bytes()
    (d / "truncated.pth").write_bytes(good[: len(good) // 2])
    (d / "xs_copy.pth").write_bytes(good)
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": RunsCode(d / "PWNED_pth")}, d / "runs_code.pth")
    torch.save({"model": RunsCode(d / "PWNED_pt")}, d / "runs_code.pt")
    for suffix in (".pth", ".pt"):
        with open(d / f"plain_pickle{suffix}", "wb") as f:
            pickle.dump(RunsCode(d / "PWNED_pickle"), f)

    (d / "cmap_malformed.json").write_text('{"a": ')
    (d / "cmap_big.json").write_text(json.dumps({"a": 0, "b": 10}))
    for folder in ("a", "b"):  # two class folders with made-up names
        _image(d / "img" / "ab" / folder / "x.png")
    for k in range(10):  # ten numeric class folders; "3" is empty
        if k != 3:
            _image(d / "img" / "one_empty" / str(k) / "x.png")
    (d / "img" / "one_empty" / "3").mkdir()
    for k in range(10):
        _image(d / "img" / "rgb" / str(k) / "x.png", mode="RGB")
    (d / "img" / "no_folders").mkdir()
    (d / "serve_binary.yaml").write_bytes(b"\x80\x04\x95\xe4\x00binary")
    (d / "serve_no_export.yaml").write_text("thresholds: [0.5]\n")
    return d


# --- the catalogue ---------------------------------------------------------------------------------

class Case(NamedTuple):
    argv: Callable[[Path, Path], List[str]]  # (inputs folder, empty output folder) -> argv
    expected: Sequence[str]  # what the one line must say (the file or argument, the problem)


def _s(p: Path) -> str:
    return str(p)


R = lambda d, name: _s(d / f"{name}.npz")  # noqa: E731
EXPORT = ["--stages", "fmnist_cnn_xxs", "fmnist_cnn_xs", "--thresholds", "0.5"]
CALIB = ["--calib-data", "fashion_mnist", "--calib-split", "holdout", "--calib-limit", "16"]
RECORDS = {
    "select: NaN confidence": Case(lambda d, o: ["select", "--base", R(d, "base"), "--saver", R(d, "nan_conf"),
                                                 "--json", _s(o / "r.json")], ["nan_conf.npz", "non-finite"]),
    "select: inf confidence": Case(lambda d, o: ["select", "--base", R(d, "base"), "--saver", R(d, "inf_conf"),
                                                 "--json", _s(o / "r.json")], ["inf_conf.npz", "non-finite"]),
    "tradeoff: confidences are strings": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "str_conf"), "--json", _s(o / "r.json")],
        ["str_conf.npz", "'conf' must be float"]),
    "tradeoff: float predictions": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "float_pred"), "--json", _s(o / "r.json")],
        ["float_pred.npz", "integer class ids"]),
    "select: arrays of different lengths": Case(
        lambda d, o: ["select", "--base", R(d, "base"), "--saver", R(d, "short_label"), "--json", _s(o / "r.json")],
        ["short_label.npz", "different lengths"]),
    "tradeoff: labels differ between saver and base": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "shuffled"), "--json", _s(o / "r.json")],
        ["shuffled.npz", "labels differ from the base record"]),
    "tradeoff: a record of unlabelled data (label -1)": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "unlabelled"), "--json", _s(o / "r.json")],
        ["unlabelled.npz", "unlabelled samples", "accuracies need labels"]),
    "select: a text file named .npz": Case(
        lambda d, o: ["select", "--base", R(d, "base"), "--saver", R(d, "text"), "--markdown", _s(o / "r.md")],
        ["text.npz", "unreadable record"]),
    "select: an object (pickled) array": Case(
        lambda d, o: ["select", "--base", R(d, "base"), "--saver", R(d, "object_array"), "--json", _s(o / "r.json")],
        ["object_array.npz", "unreadable record"]),
    "select: a bare .npy named .npz": Case(
        lambda d, o: ["select", "--base", R(d, "plain_npy"), "--saver", R(d, "saver"), "--json", _s(o / "r.json")],
        ["plain_npy.npz", "not an .npz archive"]),
    "select: 'recording' is not JSON": Case(
        lambda d, o: ["select", "--base", R(d, "base"), "--saver", R(d, "bad_recording"), "--json", _s(o / "r.json")],
        ["bad_recording.npz", "'recording'"]),
    "select: missing record": Case(
        lambda d, o: ["select", "--base", R(d, "base"), "--saver", R(d, "nope"), "--json", _s(o / "r.json")],
        ["nope.npz", "no such file"]),
    "tradeoff: num_classes 0": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "zero_classes"), "--json", _s(o / "r.json")],
        ["zero_classes.npz", "'num_classes' must be >= 1, got 0"]),
    "tradeoff: a negative class id": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "negative_pred"), "--json", _s(o / "r.json")],
        ["negative_pred.npz", "'pred'", "negative class id -1", "index 7"]),
    "tradeoff: a trillion bootstrap draws": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--calib-base", R(d, "base"),
                      "--calib-saver", R(d, "saver"), "--ci", "0.9", "--ci-draws", "1000000000000",
                      "--json", _s(o / "r.json")], ["--ci-draws", "at most 1e+06", "1e+12"]),
    "plan: a trillion bootstrap draws": Case(
        lambda d, o: ["plan", "--base", R(d, "base"), "--pool", R(d, "saver"), "--calib-base", R(d, "base"),
                      "--calib-pool", R(d, "saver"), "--ci", "0.9", "--draws", "1000000000000",
                      "--json", _s(o / "r.json")], ["--draws", "at most 1e+06", "1e+12"]),
    "plan: a pair grid of a billion": Case(
        lambda d, o: ["plan", "--base", R(d, "base"), "--pool", R(d, "saver"), R(d, "saver2"), "--pair-grid",
                      "1000000000", "--json", _s(o / "r.json")], ["--pair-grid", "at most 4096", "1e+09"]),
    "chain: the same model twice": Case(
        lambda d, o: ["chain", "--stages", R(d, "saver"), R(d, "saver"), R(d, "base"), "--thresholds", "0.9", "0.9",
                      "--json", _s(o / "r.json")], ["--stages", "'saver'", "more than once"]),
    "calibrate: the same model twice": Case(
        lambda d, o: ["calibrate", "--stages", R(d, "saver"), R(d, "saver"), R(d, "base"), "--drop", "0.5",
                      "--json", _s(o / "r.json")], ["--stages", "'saver'", "more than once"]),
    "tradeoff: NaN drop": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--drops", "1", "nan",
                      "--json", _s(o / "r.json")], ["--drops", "nan"]),
    "tradeoff: drop beyond 100 points": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--drops", "150",
                      "--json", _s(o / "r.json")], ["--drops", "150"]),
    "tradeoff: --calib-base without --calib-saver": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--calib-base", R(d, "base"),
                      "--json", _s(o / "r.json")], ["--calib-base and --calib-saver"]),
    "tradeoff: --ci without a calibration split": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--ci", "0.95",
                      "--json", _s(o / "r.json")], ["--ci", "calibrated mode"]),
    "tradeoff: --json under a file": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--plot", _s(o / "r.png"),
                      "--json", R(d, "base") + "/r.json"], ["--json", "base.npz", "is a file, not a folder"]),
    "tradeoff: --json in /proc": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--markdown", _s(o / "r.md"),
                      "--json", "/proc/tinysaver/r.json"], ["--json", "/proc/tinysaver/r.json", "cannot write"]),
    "tradeoff: --json would overwrite an input": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--json", R(d, "saver")],
        ["--json", "saver.npz", "is also an input"]),
    "select: --json and --markdown name one file": Case(
        lambda d, o: ["select", "--base", R(d, "base"), "--saver", R(d, "saver"), "--json", _s(o / "r"),
                      "--markdown", _s(o / "r")], ["--markdown", "also given to --json"]),
    "tradeoff: --plot named .pdf (it is written as PNG)": Case(
        lambda d, o: ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--json", _s(o / "r.json"),
                      "--plot", _s(o / "r.pdf")], ["--plot", "r.pdf", "PNG"]),
    "plan: --plot named .svg": Case(
        lambda d, o: ["plan", "--base", R(d, "base"), "--pool", R(d, "saver"), "--plot", _s(o / "r.svg")],
        ["--plot", "r.svg", "PNG"]),
    "chain: threshold count is not stages - 1": Case(
        lambda d, o: ["chain", "--stages", R(d, "saver"), R(d, "saver2"), R(d, "base"), "--thresholds", "0.5",
                      "--json", _s(o / "r.json")], ["--thresholds", "3 stages need 2"]),
    "chain: NaN threshold": Case(
        lambda d, o: ["chain", "--stages", R(d, "saver"), R(d, "base"), "--thresholds", "nan",
                      "--json", _s(o / "r.json")], ["--thresholds", "nan"]),
    "chain: threshold is not a number (argparse)": Case(
        lambda d, o: ["chain", "--stages", R(d, "saver"), R(d, "base"), "--thresholds", "high",
                      "--json", _s(o / "r.json")], ["argument --thresholds", "'high'"]),
    "plan: --calib-pool of another size": Case(
        lambda d, o: ["plan", "--base", R(d, "base"), "--pool", R(d, "saver"), R(d, "saver2"),
                      "--calib-base", R(d, "base"), "--calib-pool", R(d, "saver"), "--json", _s(o / "r.json")],
        ["--calib-pool"]),
    "plan: --max-stages 0": Case(
        lambda d, o: ["plan", "--base", R(d, "base"), "--pool", R(d, "saver"), "--max-stages", "0",
                      "--json", _s(o / "r.json")], ["--max-stages", "0"]),
    "plan: infinite drop": Case(
        lambda d, o: ["plan", "--base", R(d, "base"), "--pool", R(d, "saver"), "--drops", "inf",
                      "--json", _s(o / "r.json")], ["--drops", "inf"]),
    "calibrate: --delta outside (0, 1)": Case(
        lambda d, o: ["calibrate", "--base", R(d, "base"), "--saver", R(d, "saver"), "--drop", "0.5", "--delta",
                      "1.5", "--json", _s(o / "r.json")], ["--delta", "1.5"]),
    "calibrate: negative --drop": Case(
        lambda d, o: ["calibrate", "--base", R(d, "base"), "--saver", R(d, "saver"), "--drop", "-1",
                      "--json", _s(o / "r.json")], ["--drop", "-1"]),
    "calibrate: --delta is not a number (argparse)": Case(
        lambda d, o: ["calibrate", "--base", R(d, "base"), "--saver", R(d, "saver"), "--drop", "0.5", "--delta",
                      "small"], ["argument --delta", "'small'"]),
    "unknown command (argparse)": Case(lambda d, o: ["selct", "--base", R(d, "base")], ["invalid choice", "'selct'"]),
}

A = lambda d, name: _s(d / f"{name}.json")  # noqa: E731


def _det(command: str, ann: str, saver: str = "det_saver", base: str = "det_base", *extra: str):
    return lambda d, o: [command, "--ann", A(d, ann), "--saver", R(d, saver), "--base", R(d, base), *extra,
                         "--json", _s(o / "r.json"), "--plot", _s(o / "r.png")]


DETECTION = {
    "det-tradeoff: annotation file is not JSON": Case(_det("det-tradeoff", "ann_malformed"),
                                                      ["ann_malformed.json", "not a JSON file"]),
    "det-tradeoff: annotation file is empty": Case(_det("det-tradeoff", "ann_empty"), ["ann_empty.json", "not a JSON"]),
    "det-tradeoff: annotation file is missing": Case(_det("det-tradeoff", "ann_missing"),
                                                     ["ann_missing.json", "not found"]),
    "det-tradeoff: no images": Case(_det("det-tradeoff", "ann_no_images"), ["ann_no_images.json", "'images'"]),
    "det-tradeoff: no annotations": Case(_det("det-tradeoff", "ann_no_annotations"),
                                         ["ann_no_annotations.json", "'annotations'"]),
    "det-tradeoff: no categories": Case(_det("det-tradeoff", "ann_no_categories"),
                                        ["ann_no_categories.json", "'categories'"]),
    "det-tradeoff: category ids not in the annotations": Case(
        _det("det-tradeoff", "ann", "det_other_cats", "det_other_cats"), ["det_other_cats.npz", "[7, 8]", "ann.json"]),
    "det-tradeoff: records of different image sets": Case(
        _det("det-tradeoff", "ann", "det_other_images"), ["det_other_images.npz", "image ids differ"]),
    "det-tradeoff: images the annotations do not have": Case(
        _det("det-tradeoff", "ann", "det_unknown_images", "det_unknown_images"),
        ["det_unknown_images.npz", "not in the annotation file", "101"]),
    "det-tradeoff: det_image points outside": Case(
        _det("det-tradeoff", "ann", "det_outside"), ["det_outside.npz", "det_image points outside"]),
    "det-tradeoff: float class labels": Case(
        _det("det-tradeoff", "ann", "det_float_labels"), ["det_float_labels.npz", "'det_labels' must hold integers"]),
    "det-tradeoff: max_dets differ": Case(
        _det("det-tradeoff", "ann", "det_maxdets_1_10_100", "det_maxdets_100_300_1000"),
        ["det_maxdets_1_10_100.npz", "maxDets"]),
    "det-tradeoff: a classification record": Case(_det("det-tradeoff", "ann", "saver"), ["saver.npz", "missing array"]),
    "det-tradeoff: a classification confidence": Case(
        _det("det-tradeoff", "ann", "det_saver", "det_base", "--confidence", "max_softmax"),
        ["--confidence", "'max_softmax'", "not a detection confidence"]),
    "det-tradeoff: NaN in the threshold grid": Case(
        _det("det-tradeoff", "ann", "det_saver", "det_base", "--thresholds", "nan", "1", "0.1"), ["--thresholds", "nan"]),
    "det-tradeoff: a grid of a trillion thresholds": Case(
        _det("det-tradeoff", "ann", "det_saver", "det_base", "--thresholds", "0", "1", "1e-12"),
        ["--thresholds", "1e-12", "more than"]),
    "det-tradeoff: --min-score above 1": Case(
        _det("det-tradeoff", "ann", "det_saver", "det_base", "--min-score", "2"), ["--min-score", "2"]),
    "det-signals: annotation file is not JSON": Case(_det("det-signals", "ann_malformed"),
                                                     ["ann_malformed.json", "not a JSON file"]),
    "det-signals: category ids not in the annotations": Case(
        _det("det-signals", "ann", "det_other_cats", "det_other_cats"), ["det_other_cats.npz", "category id(s)"]),
    "det-tradeoff: --plot named .jpg": Case(
        lambda d, o: ["det-tradeoff", "--ann", A(d, "ann"), "--saver", R(d, "det_saver"), "--base", R(d, "det_base"),
                      "--plot", _s(o / "r.jpg")], ["--plot", "r.jpg", "PNG"]),
    "det-signals: --min-score NaN": Case(_det("det-signals", "ann", "det_saver", "det_base", "--min-score", "nan"),
                                         ["--min-score", "nan"]),
}

W = lambda d, name: _s(d / name)  # noqa: E731
FM = ["--data", "fashion_mnist", "--split", "test", "--limit", "4"]


def _folder(split: str, *extra: str):
    return lambda d, o: ["record", "--model", "fmnist_cnn_xs", "--data", _s(d / "img"), "--split", split, *extra,
                         "--out", _s(o / "r.npz")]


MODELS = {
    "complexity: --input-size 0": Case(lambda d, o: ["complexity", "fmnist_cnn_xs", "--input-size", "0",
                                                     "--json", _s(o / "r.json")], ["--input-size", "0"]),
    "complexity: --input-size negative": Case(lambda d, o: ["complexity", "fmnist_cnn_xs", "--input-size", "28", "-3",
                                                            "--json", _s(o / "r.json")], ["--input-size", "-3"]),
    "complexity: --input-size with four values": Case(
        lambda d, o: ["complexity", "fmnist_cnn_xs", "--input-size", "1", "2", "3", "4", "--json", _s(o / "r.json")],
        ["--input-size", "4 values"]),
    "complexity: --input-size the network cannot take": Case(
        lambda d, o: ["complexity", "fmnist_cnn_xs", "--input-size", "3", "28", "28", "--json", _s(o / "r.json")],
        ["--input-size 3 28 28", "cannot run"]),
    "complexity: unknown model": Case(lambda d, o: ["complexity", "no_such_net", "--json", _s(o / "r.json")],
                                      ["unknown timm model", "'no_such_net'"]),
    "complexity: --batch-sizes 0": Case(lambda d, o: ["complexity", "fmnist_cnn_xs", "--measure", "--batch-sizes", "0",
                                                      "--json", _s(o / "r.json")], ["--batch-sizes", "0"]),
    "complexity: a device this machine lacks": Case(
        lambda d, o: ["complexity", "fmnist_cnn_xs", "--measure", "--device", "cuda:99", "--json", _s(o / "r.json")],
        ["--device cuda:99"]),
    "complexity: a device that does not exist": Case(
        lambda d, o: ["complexity", "fmnist_cnn_xs", "--device", "gpu0", "--json", _s(o / "r.json")],
        ["--device", "'gpu0'", "not a device"]),
    "complexity: garbage weights": Case(
        lambda d, o: ["complexity", "fmnist_cnn_xs", "--weights", W(d, "garbage.pth"), "--json", _s(o / "r.json")],
        ["garbage.pth", "unreadable weights"]),
    "complexity: truncated weights": Case(
        lambda d, o: ["complexity", "fmnist_cnn_xs", "--weights", W(d, "truncated.pth"), "--json", _s(o / "r.json")],
        ["truncated.pth", "unreadable weights"]),
    "complexity: weights that would run os.system": Case(
        lambda d, o: ["complexity", "fmnist_cnn_xs", "--weights", W(d, "runs_code.pth"), "--json", _s(o / "r.json")],
        ["runs_code.pth", "refused by the weights_only loader", "system"]),
    "complexity: --json would overwrite the weights": Case(
        lambda d, o: ["complexity", "fmnist_cnn_xs", "--weights", W(d, "xs_copy.pth"), "--json", W(d, "xs_copy.pth")],
        ["--json", "xs_copy.pth", "is also an input"]),
    "complexity: weights of another model": Case(
        lambda d, o: ["complexity", "fmnist_cnn_xs", "--weights", _s(WEIGHTS / "fmnist_cnn_l.pth"),
                      "--json", _s(o / "r.json")], ["fmnist_cnn_l.pth", "does not fit fmnist_cnn_xs"]),
    "record: unknown Fashion-MNIST split": Case(
        lambda d, o: ["record", "--model", "fmnist_cnn_xs", "--data", "fashion_mnist", "--split", "val",
                      "--out", _s(o / "r.npz")], ["split 'val'"]),
    "record: negative --limit": Case(
        lambda d, o: ["record", "--model", "fmnist_cnn_xs", "--data", "fashion_mnist", "--split", "test",
                      "--limit", "-5", "--out", _s(o / "r.npz")], ["--limit", "-5"]),
    "record: --batch-size 0": Case(
        lambda d, o: ["record", "--model", "fmnist_cnn_xs", *FM, "--batch-size", "0", "--out", _s(o / "r.npz")],
        ["--batch-size", "0"]),
    "record: a device this machine lacks": Case(
        lambda d, o: ["record", "--model", "fmnist_cnn_xs", *FM, "--device", "cuda:99", "--out", _s(o / "r.npz")],
        ["--device cuda:99"]),
    "record: --out is a folder": Case(
        lambda d, o: ["record", "--model", "fmnist_cnn_xs", *FM, "--out", _s(o)], ["--out", "is a folder"]),
    "record: weights that would run code": Case(
        lambda d, o: ["record", "--model", "fmnist_cnn_xs", *FM, "--weights", W(d, "plain_pickle.pth"),
                      "--out", _s(o / "r.npz")], ["plain_pickle.pth", "weights"]),
    "record: unknown model": Case(
        lambda d, o: ["record", "--model", "resnet_9000", *FM, "--out", _s(o / "r.npz")], ["'resnet_9000'"]),
    "record: split folder that does not exist": Case(_folder("val"), ["img/val", "no such dataset folder"]),
    "record: split with no class folders": Case(_folder("no_folders"), ["no_folders", "no class folders"]),
    "record: a class folder without images": Case(_folder("one_empty"), ["one_empty/3", "has no image"]),
    "record: folders that map to no class": Case(_folder("ab"), ["ab/a", "pass --class-map"]),
    "record: --class-map is not JSON": Case(
        lambda d, o: _folder("ab", "--class-map", W(d, "cmap_malformed.json"))(d, o),
        ["cmap_malformed.json", "invalid JSON"]),
    "record: --class-map maps to an index >= num_classes": Case(
        lambda d, o: _folder("ab", "--class-map", W(d, "cmap_big.json"))(d, o), ["cmap_big.json", "class index 10"]),
    "record: RGB images for a one-channel model": Case(_folder("rgb"), ["rgb", "shape 3x28x28", "1x28x28"]),
    "export: threshold count is not stages - 1": Case(
        lambda d, o: ["export", "--stages", "fmnist_cnn_xxs", "fmnist_cnn_xs", "--thresholds", "0.5", "0.6",
                      "--out", _s(o / "exp")], ["--thresholds", "2 stages need 1"]),
    "export: the same model twice": Case(
        lambda d, o: ["export", "--stages", "fmnist_cnn_xs", "fmnist_cnn_xs", "--thresholds", "0.5",
                      "--out", _s(o / "exp")], ["--stages", "'fmnist_cnn_xs'", "more than once"]),
    "export: --opset the exporter cannot write": Case(
        lambda d, o: ["export", "--stages", "fmnist_cnn_xxs", "fmnist_cnn_xs", "--thresholds", "0.5", "--opset", "2",
                      "--out", _s(o / "exp")], ["--opset 2"]),
    "export: --out is a file": Case(
        lambda d, o: ["export", "--stages", "fmnist_cnn_xxs", "fmnist_cnn_xs", "--thresholds", "0.5",
                      "--out", R(d, "base")], ["--out", "base.npz", "not a folder"]),
    "export: stage weights that would run code": Case(
        lambda d, o: ["export", "--stages", f"fmnist_cnn_xxs={d / 'runs_code.pth'}", "fmnist_cnn_xs",
                      "--thresholds", "0.5", "--out", _s(o / "exp")], ["runs_code.pth", "refused"]),
    "export: an unknown --precision": Case(
        lambda d, o: ["export", *EXPORT, "--precision", "int4", "--out", _s(o / "exp")],
        ["--precision int4", "unknown precision 'int4'", "fp32, fp16, int8"]),
    "export: --precision int8 without --calib-data": Case(
        lambda d, o: ["export", *EXPORT, "--precision", "int8", "fp32", "--out", _s(o / "exp")],
        ["--precision int8 fp32", "--calib-data"]),
    "export: three --precision values for two stages": Case(
        lambda d, o: ["export", *EXPORT, "--precision", "int8", "fp32", "fp32", *CALIB, "--out", _s(o / "exp")],
        ["--precision int8 fp32 fp32", "3 precisions for 2 stages"]),
    "export: a --calib-split Fashion-MNIST lacks": Case(
        lambda d, o: ["export", *EXPORT, "--precision", "int8", "--calib-data", "fashion_mnist", "--calib-split", "val",
                      "--out", _s(o / "exp")], ["--calib-data fashion_mnist --calib-split val", "split 'val'"]),
    "export: RGB calibration images for a one-channel saver": Case(
        lambda d, o: ["export", *EXPORT, "--precision", "int8", "fp32", "--calib-data", _s(d / "img"),
                      "--calib-split", "rgb", "--out", _s(o / "exp")], ["--calib-data", "rgb", "1-channel"]),
    "export: int8 at an opset without per-channel quantization": Case(
        lambda d, o: ["export", *EXPORT, "--precision", "int8", *CALIB, "--opset", "11", "--out", _s(o / "exp")],
        ["--opset 11", "opset >= 13"]),
    "serve: a binary config": Case(lambda d, o: ["serve", W(d, "serve_binary.yaml"), "--check"], ["serve_binary.yaml"]),
    "serve: a config without export_dir": Case(lambda d, o: ["serve", W(d, "serve_no_export.yaml"), "--check"],
                                               ["serve_no_export.yaml", "export_dir"]),
    "imagenet: saver weights that would run code": Case(
        lambda d, o: ["imagenet", "--data", "fashion_mnist", "--base", "fmnist_cnn_xs",
                      "--savers", f"fmnist_cnn_xxs={d / 'runs_code.pth'}", "--train-subset", "8",
                      "--out", _s(o / "p")], ["runs_code.pth", "refused"]),
    "imagenet: a split that does not exist": Case(
        lambda d, o: ["imagenet", "--data", "fashion_mnist", "--base", "fmnist_cnn_xs", "--savers", "fmnist_cnn_xxs",
                      "--train-split", "test", "--val-split", "nosuch", "--train-subset", "8",
                      "--out", _s(o / "p")], ["split 'nosuch'"]),
    "imagenet: --batch-size -1": Case(
        lambda d, o: ["imagenet", "--data", "fashion_mnist", "--base", "fmnist_cnn_xs", "--savers", "fmnist_cnn_xxs",
                      "--batch-size", "-1", "--out", _s(o / "p")], ["--batch-size", "-1"]),
    "imagenet: the same model twice": Case(
        lambda d, o: ["imagenet", "--data", "fashion_mnist", "--base", "fmnist_cnn_xs", "--savers", "fmnist_cnn_xs",
                      "--out", _s(o / "p")], ["fmnist_cnn_xs", "twice"]),
    "yolo: a checkpoint that would run code": Case(
        lambda d, o: ["yolo", "val", f"models={d / 'runs_code.pt'},{YOLO_PT}", "data=data.yaml",
                      f"json={o / 'r.json'}"], ["runs_code.pt", "refused"]),
    "yolo: a threshold that is not a number": Case(
        lambda d, o: ["yolo", "val", f"models={YOLO_PT},{YOLO_PT}", "threshold=high", "data=data.yaml",
                      f"json={o / 'r.json'}"], ["threshold", "high"]),
}

CATALOGUE = {**RECORDS, **DETECTION, **MODELS}
MARKERS = ("PWNED_npz", "PWNED_pth", "PWNED_pt", "PWNED_pickle")


def test_the_catalogue_is_large():
    assert len(CATALOGUE) >= 25


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input_is_one_line_exit_2_and_no_file(name, d, tmp_path, capsys, monkeypatch):
    case = CATALOGUE[name]
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)  # a default output path would land here, and be seen
    before = {p.name for p in d.iterdir()}
    try:
        code = main(case.argv(d, out))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip("\n").split("\n")
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("tinysaver"), err
    assert "Traceback" not in err
    for text in case.expected:
        assert text in lines[0], (text, lines[0])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]  # no output, no .tmp, no .partial
    assert {p.name for p in d.iterdir()} == before  # nothing written next to the inputs either
    assert not [m for m in MARKERS if (d / m).exists()]  # no file ran code


# --- the real stderr: console script and tools/ --------------------------------------------------

def _run(argv: List[str], cwd: Path, data: Path) -> subprocess.CompletedProcess:
    # the detection config reads its data root from FASHION_DET_ROOT: here a folder that is not there
    env = dict(os.environ, OMP_NUM_THREADS="1", FASHION_DET_ROOT=str(data))
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


def _tinysaver() -> List[str]:
    return [sys.executable, "-c", "import sys; from tinysaver.cli import main; sys.exit(main())"]


SUBPROCESS = {
    "tinysaver select: NaN confidence": (
        lambda d, o: [*_tinysaver(), "select", "--base", R(d, "base"), "--saver", R(d, "nan_conf"),
                      "--json", _s(o / "r.json")], ["tinysaver select: error:", "nan_conf.npz", "non-finite"]),
    "tinysaver complexity: a plain pickle as weights": (
        lambda d, o: [*_tinysaver(), "complexity", "fmnist_cnn_xs", "--weights", W(d, "plain_pickle.pth"),
                      "--json", _s(o / "r.json")], ["plain_pickle.pth", "weights"]),
    "tinysaver yolo: a plain pickle that would run code": (
        lambda d, o: [*_tinysaver(), "yolo", "val", f"models={d / 'plain_pickle.pt'},{YOLO_PT}", "data=data.yaml"],
        ["tinysaver yolo: error:", "plain_pickle.pt", "refused"]),
    "tinysaver chain: argparse type error": (
        lambda d, o: [*_tinysaver(), "chain", "--stages", R(d, "saver"), R(d, "base"), "--thresholds", "x"],
        ["tinysaver chain: error: argument --thresholds", "see tinysaver chain --help"]),
    "tools/test.py: config without a TinySaver model": (
        lambda d, o: [sys.executable, _s(ROOT / "tools" / "test.py"), W(d, "retinanet.py"), "none",
                      "--work-dir", _s(o / "w")], ["tools/test.py: error:", "retinanet.py", "RetinaNet"]),
    "tools/test.py: a checkpoint that would run code": (
        lambda d, o: [sys.executable, _s(ROOT / "tools" / "test.py"), _s(CLS_PAIR), W(d, "runs_code.pth"),
                      "--work-dir", _s(o / "w")], ["tools/test.py: error:", "runs_code.pth", "refused"]),
    "tools/test.py: data the config names is missing (the work dir is taken back)": (
        lambda d, o: [sys.executable, _s(ROOT / "tools" / "test.py"), _s(DET_CONFIG), "none",
                      "--work-dir", _s(o / "w")],
        ["tools/test.py: error:", "no_data", "not found"]),
    "tools/get_flops.py: --json in /proc": (
        lambda d, o: [sys.executable, _s(ROOT / "tools" / "get_flops.py"), _s(CLS_PAIR), "--random-init",
                      "--json", "/proc/tinysaver/g.json"], ["tools/get_flops.py: error:", "--json", "/proc"]),
    "tools/get_flops.py: NaN shares": (
        lambda d, o: [sys.executable, _s(ROOT / "tools" / "get_flops.py"), _s(CLS_PAIR), "--random-init",
                      "--answered", "nan", "nan"], ["--answered", "nan"]),
    "tools/test.py: --cfg-options without key=value (mmengine's DictAction)": (
        lambda d, o: [sys.executable, _s(ROOT / "tools" / "test.py"), _s(CLS_PAIR), "none", "--cfg-options", "foo",
                      "--work-dir", _s(o / "w")], ["tools/test.py: error: argument --cfg-options", "key=value"]),
    "tools/test.py: a threshold that is not a number (argparse)": (
        lambda d, o: [sys.executable, _s(ROOT / "tools" / "test.py"), _s(CLS_PAIR), "none", "--threshold", "high",
                      "--work-dir", _s(o / "w")], ["tools/test.py: error: argument --threshold", "'high'"]),
    "tools/test.py: --work-dir is a file": (
        lambda d, o: [sys.executable, _s(ROOT / "tools" / "test.py"), _s(CLS_PAIR), "none",
                      "--work-dir", R(d, "base")], ["tools/test.py: error: --work-dir", "base.npz", "not a folder"]),
    "tools/get_flops.py: an unknown option (argparse)": (
        lambda d, o: [sys.executable, _s(ROOT / "tools" / "get_flops.py"), _s(CLS_PAIR), "--bogus"],
        ["tools/get_flops.py: error: unrecognized arguments: --bogus"]),
}
CLS_PAIR = ROOT / "configs" / "tinysaver" / "cls" / "fmnist-cnn-s_fmnist-cnn-l_fashion-mnist.py"
DET_CONFIG = ROOT / "configs" / "tinysaver" / "yolov8n_retinanet-r18-tiny_fashion-det.py"


@pytest.mark.parametrize("name", list(SUBPROCESS))
def test_real_stderr_is_one_line(name, d, tmp_path):
    (d / "retinanet.py").write_text("model = dict(type='RetinaNet')\n")
    make, expected = SUBPROCESS[name]
    out = tmp_path / "out"
    out.mkdir()
    proc = _run(make(d, out), cwd=tmp_path, data=d / "no_data")
    lines = proc.stderr.strip("\n").split("\n")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]
    assert not [m for m in MARKERS if (d / m).exists()]


# --- outputs that are not plain files: written through, never replaced ----------------------------

def _tradeoff_to(d: Path, out: str) -> List[str]:
    return ["tradeoff", "--base", R(d, "base"), "--saver", R(d, "saver"), "--json", out]


def test_output_to_a_fifo_is_written_into_it_not_replaced(d, tmp_path):
    """`--json /dev/null` (or a pipe) as root renamed the temporary file onto the device node: /dev/null
    became a regular file for the whole machine. A FIFO stands in for the device here."""
    import stat
    import threading

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got: List[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    code = main(_tradeoff_to(d, str(fifo)))
    reader.join(timeout=30)
    assert code == 0
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert got and json.loads(got[0])["base"] == "base"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.json"]  # no temporary file left


def test_output_through_a_symlink_writes_its_target(d, tmp_path):
    target = tmp_path / "runs" / "row.json"
    target.parent.mkdir()
    target.write_text('{"stale": true}')
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    assert main(_tradeoff_to(d, str(link))) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link is kept
    assert json.loads(target.read_text())["base"] == "base"  # and its target holds the new row
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["latest.json", "row.json", "runs"]


# --- a refused run takes back its own files, never another program's ----------------------------

def _other_program_writes(path: Path) -> None:
    """Another process (not audited by this one) creates ``path``, as a parallel run would."""
    subprocess.run([sys.executable, "-c", f"open({str(path)!r}, 'w').write('theirs')"], check=True)


def test_a_refused_run_takes_back_only_what_it_created(tmp_path):
    from tinysaver.errors import TinySaverError
    from tinysaver.io import remove_created_on_error

    shared = tmp_path / "work_dirs"  # an existing folder other runs use too
    shared.mkdir()
    (shared / "old.log").write_text("before")
    with pytest.raises(TinySaverError):
        with remove_created_on_error(shared):
            (shared / "20260101_000000").mkdir()  # what mmengine's Runner makes: a log dir, a config dump
            (shared / "20260101_000000" / "run.log").write_text("mine")
            with open(shared / "config.py", "w") as f:
                f.write("mine")
            _other_program_writes(shared / "parallel_run.log")
            raise TinySaverError("refused")
    assert sorted(p.name for p in shared.rglob("*")) == ["old.log", "parallel_run.log"]


def test_a_refused_run_keeps_a_folder_it_made_that_another_program_wrote_into(tmp_path):
    from tinysaver.errors import TinySaverError
    from tinysaver.io import remove_created_on_error

    fresh = tmp_path / "new" / "work"
    with pytest.raises(TinySaverError):
        with remove_created_on_error(fresh):
            fresh.mkdir(parents=True)
            (fresh / "run.log").write_text("mine")
            _other_program_writes(fresh / "theirs.log")
            raise TinySaverError("refused")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "new", "new/work", "new/work/theirs.log"]
    with pytest.raises(TinySaverError):  # alone, everything it made goes, the folders too
        with remove_created_on_error(tmp_path / "other" / "work"):
            (tmp_path / "other" / "work").mkdir(parents=True)
            (tmp_path / "other" / "work" / "run.log").write_text("mine")
            raise TinySaverError("refused")
    assert not (tmp_path / "other").exists()
