"""Deploy what you measured: an int8 saver's export retuned on its own runtime records
(``tinysaver export --out DIR --calib-records ...``) routes, live in ``OnnxCascade``, exactly as the
simulation of those records says, on the whole Fashion-MNIST test split; records of another graph
are refused."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tinysaver import load_record, save_record
from tinysaver.cli import main

BATCH = 500  # the recording's batch, and the live cascade's


def _record(export: Path, stage: str, split: str, out: Path, limit: int = 0) -> Path:
    argv = ["record", "--runtime", "onnxruntime", "--export", str(export), "--stage", stage, "--data",
            "fashion_mnist", "--split", split, "--threads", "1", "--batch-size", str(BATCH), "--out", str(out)]
    assert main(argv + (["--limit", str(limit)] if limit else [])) == 0
    return out


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    """s (int8, calibrated on 256 holdout images) -> l (fp32), each stage recorded on the runtime on
    the whole holdout and test splits (10,000 images each)."""
    root = tmp_path_factory.mktemp("deploy")
    export = root / "s_int8_l"
    assert main(["export", "--stages", "fmnist_cnn_s", "fmnist_cnn_l", "--thresholds", "0.9", "--precision", "int8",
                 "fp32", "--calib-data", "fashion_mnist", "--calib-split", "holdout", "--calib-limit", "256",
                 "--out", str(export)]) == 0
    records = {(stage, split): _record(export, stage, split, root / f"{stage}_{split}.npz")
               for stage in ("fmnist_cnn_s", "fmnist_cnn_l") for split in ("holdout", "test")}
    return dict(root=root, export=export, records=records)


@pytest.mark.parametrize("guarantee", [["--guarantee", "expected"], ["--delta", "0.1"]])
def test_the_retuned_int8_cascade_routes_live_as_its_runtime_records_say(int8, guarantee, capsys):
    from tinysaver.plugins.datasets import load_fashion_mnist
    from tinysaver.runtime import OnnxCascade

    export, rec = int8["export"], int8["records"]
    before = json.loads((export / "cascade.json").read_text())
    assert main(["export", "--out", str(export), "--calib-records", str(rec["fmnist_cnn_s", "holdout"]),
                 str(rec["fmnist_cnn_l", "holdout"]), "--drop", "0.5", *guarantee]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((export / "cascade.json").read_text())
    threshold = manifest["thresholds"][0]
    assert threshold != before["thresholds"][0] and f"thresholds [{threshold}]" in out
    assert manifest["stages"] == before["stages"]  # the graphs are untouched
    calibration = manifest["calibration"]
    assert calibration["samples"] == 10_000 and calibration["drop"] == 0.5
    assert calibration["guarantee"] == ("expected" if "expected" in guarantee else "high-probability")

    saver, base = load_record(rec["fmnist_cnn_s", "test"]), load_record(rec["fmnist_cnn_l", "test"])
    simulated_stage = (saver.conf < threshold).astype(np.int64)  # a sample exits where conf >= threshold
    simulated_class = np.where(simulated_stage == 0, saver.pred, base.pred)
    images, labels = load_fashion_mnist("test")
    cascade = OnnxCascade(export, threads=1)
    assert cascade.thresholds == [threshold]
    live = [cascade.predict_images(list(images[i:i + BATCH])) for i in range(0, len(images), BATCH)]
    stage = np.concatenate([o.stage for o in live])
    assert len(stage) == 10_000
    assert int((stage != simulated_stage).sum()) == 0  # 0 routing mismatches
    np.testing.assert_array_equal(np.concatenate([o.logits.argmax(1) for o in live]), simulated_class)
    assert 0.2 < (simulated_stage == 0).mean() < 1.0  # the saver answers some, not all
    assert (simulated_class == labels).mean() > 0.9


def test_retuning_refuses_records_of_other_graphs_in_one_line(int8, tmp_path, capsys):
    export, rec = int8["export"], int8["records"]
    saver, base = str(rec["fmnist_cnn_s", "holdout"]), str(rec["fmnist_cnn_l", "holdout"])
    fp32 = tmp_path / "s_fp32_l"
    assert main(["export", "--stages", "fmnist_cnn_s", "fmnist_cnn_l", "--thresholds", "0.9", "--out", str(fp32)]) == 0
    other = _record(fp32, "fmnist_cnn_s", "holdout", tmp_path / "s_fp32.npz", limit=BATCH)
    torch_like = load_record(saver)
    extras = {k: v for k, v in torch_like.extras.items() if k != "export_sha256"}
    plain = save_record(tmp_path / "s_plain.npz", replace(torch_like, extras=extras))
    short_base = str(_record(export, "fmnist_cnn_l", "holdout", tmp_path / "l_short.npz", limit=BATCH))
    manifest = (export / "cascade.json").read_text()
    capsys.readouterr()
    cases = [
        (["--calib-records", str(other), short_base, "--drop", "0.5"], "was recorded on another graph of 'fmnist_cnn_s'"),
        (["--calib-records", str(plain), base, "--drop", "0.5"], "was not recorded on an exported graph"),
        (["--calib-records", base, saver, "--drop", "0.5"], "give one record per stage, in that order"),
        (["--calib-records", saver, base], "--calib-records needs --drop PT"),
        (["--calib-records", saver, base, "--drop", "0.5", "--thresholds", "0.3"], "--thresholds belong to writing one"),
        # options of writing an export are refused, not silently ignored (the graphs are not rewritten)
        (["--calib-records", saver, base, "--drop", "0.5", "--precision", "int8"], "--precision belong to writing one"),
        (["--calib-records", saver, base, "--drop", "0.5", "--confidence", "entropy"], "--confidence belong to"),
        (["--calib-records", saver, base, "--drop", "0.5", "--calib-split", "test"], "--calib-split belong to"),
        (["--calib-records", saver, base, "--drop", "0.5", "--opset", "13"], "--opset belong to"),
        (["--calib-records", saver, base, "--drop", "0.5", "--guarantee", "expected", "--delta", "0.1"],
         "--delta belong to --guarantee high-probability"),
    ]
    for argv, reason in cases:
        assert main(["export", "--out", str(export), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert reason in err and err.count("\n") == 1, (argv, err)
    assert (export / "cascade.json").read_text() == manifest  # nothing written
    assert main(["export", "--out", str(export), "--stages", "fmnist_cnn_s", "fmnist_cnn_l"]) == 2
    assert "give --stages and --thresholds" in capsys.readouterr().err
