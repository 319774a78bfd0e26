"""Records from what runs (``tinysaver record --runtime onnxruntime``) and costs in milliseconds
(``--cost latency``), on the real Fashion-MNIST demo models exported to ONNX (256 test images)."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tinysaver import Record, RecordError, load_record, save_record
from tinysaver.cli import main

N, BATCH = 256, 32


def _record(export: Path, stage: str, out: Path, *extra: str, split: str = "test") -> Path:
    argv = ["record", "--runtime", "onnxruntime", "--export", str(export), "--stage", stage, "--data",
            "fashion_mnist", "--split", split, "--limit", str(N), "--threads", "1", "--batch-size", str(BATCH),
            "--out", str(out), *extra]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """The demo pair s -> l exported, and each stage recorded on onnxruntime (test, and s on holdout)."""
    root = tmp_path_factory.mktemp("latency")
    export = root / "fmnist_s_l"
    assert main(["export", "--stages", "fmnist_cnn_s", "fmnist_cnn_l", "--thresholds", "0.9", "--out", str(export)]) == 0
    return dict(root=root, export=export,
                s=_record(export, "fmnist_cnn_s", root / "s_test.npz"),
                l=_record(export, "fmnist_cnn_l", root / "l_test.npz"),
                s_holdout=_record(export, "fmnist_cnn_s", root / "s_holdout.npz", split="holdout"),
                l_holdout=_record(export, "fmnist_cnn_l", root / "l_holdout.npz", split="holdout"),
                manifest=json.loads((export / "cascade.json").read_text()))


def test_a_runtime_record_is_what_the_exported_cascade_computes(runtime):
    """Sample by sample, the record's conf and pred are the OnnxCascade's own outputs of that stage
    on the same images (stage 0: everything exits there; stage 1: nothing exits before it)."""
    from tinysaver.plugins.datasets import load_fashion_mnist
    from tinysaver.runtime import OnnxCascade

    images, labels = load_fashion_mnist("test")
    cascade = OnnxCascade(runtime["export"], threads=1)
    for stage, threshold, key in ((0, -math.inf, "s"), (1, math.inf, "l")):
        cascade.thresholds = [threshold]
        outs = [cascade.predict_images(list(images[i:i + BATCH])) for i in range(0, N, BATCH)]
        assert all((o.stage == stage).all() for o in outs)
        record = load_record(runtime[key])
        np.testing.assert_array_equal(record.conf, np.concatenate([o.confidence for o in outs]))
        np.testing.assert_array_equal(record.pred, np.concatenate([o.logits.argmax(1) for o in outs]))
        np.testing.assert_array_equal(record.label, labels[:N])
        spec = runtime["manifest"]["stages"][stage]
        assert (record.name, record.gmacs, record.confidence, record.num_classes) == (
            spec["name"], spec["gmacs"], spec["confidence"], spec["num_classes"])
        assert record.accuracy > 0.8


def test_a_runtime_record_carries_its_measured_latency(runtime):
    import onnxruntime

    from tinysaver.runtime.recording import check_record_export

    for key, stage in (("s", 0), ("l", 1)):
        record = load_record(runtime[key])
        latency = record.latency
        assert latency.ms > 0 and math.isfinite(latency.ms)
        assert (latency.batch_size, latency.threads) == (BATCH, 1)
        assert latency.runtime == f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
        assert latency.device
        assert str(record.extras["export_sha256"]) == runtime["manifest"]["stages"][stage]["sha256"]
        assert record.split_name("?") == "test" and record.settings["stage"] == record.name
        check_record_export(record, runtime["export"])
    # the large model takes longer per sample than the small one (0.029 vs 0.0019 GMACs)
    assert load_record(runtime["l"]).latency.ms > load_record(runtime["s"]).latency.ms
    # a record of another graph of the stage (or a PyTorch record) is told apart
    other = load_record(runtime["s"])
    other.extras["export_sha256"] = np.str_("0" * 64)
    with pytest.raises(RecordError, match="another graph of 'fmnist_cnn_s'"):
        check_record_export(other, runtime["export"])
    del other.extras["export_sha256"]
    with pytest.raises(RecordError, match="not recorded on an exported graph"):
        check_record_export(other, runtime["export"])


def test_tradeoff_in_milliseconds_is_eq1_with_the_measured_latencies(runtime, tmp_path, capsys):
    out, md, csv, png = (tmp_path / n for n in ("row.json", "row.md", "curve.csv", "row.png"))
    argv = ["tradeoff", "--base", str(runtime["l"]), "--saver", str(runtime["s"]), "--cost", "latency",
            "--json", str(out), "--markdown", str(md), "--curve-csv", str(csv), "--plot", str(png)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    saver, base = load_record(runtime["s"]), load_record(runtime["l"])
    s_ms, b_ms = saver.latency.ms, base.latency.ms
    assert f"saver fmnist_cnn_s ({s_ms:.4g} ms" in printed and "GMACs" not in printed
    assert "speed-up over the base" in printed and "×" in printed
    table = md.read_text()
    assert "| Base | ms | Acc. | Saver | ms | Acc. | ms (speed-up) at drop ≤ 1 pt |" in table
    assert "GMACs" not in table
    row = json.loads(out.read_text())
    assert "gmacs" not in out.read_text()
    assert row["cost"]["unit"] == "ms" and row["cost"]["batch_size"] == BATCH and row["cost"]["threads"] == 1
    assert row["saver_ms"] == pytest.approx(s_ms) and row["base_ms"] == pytest.approx(b_ms)
    for drop, cell in row["required"].items():
        exit_ratio = float(np.mean(saver.conf >= float(cell["threshold"])))  # independently of the analysis
        assert cell["exit_ratio"] == pytest.approx(exit_ratio)
        assert cell["ms"] == pytest.approx(s_ms + (1 - exit_ratio) * b_ms, rel=1e-12), drop
        speed_up = f"{b_ms / cell['ms']:.2f}×"
        assert f"{cell['ms']:.4g} ({speed_up})" in table
    curve = np.genfromtxt(csv, delimiter=",", names=True)
    assert "expected_ms" in curve.dtype.names
    np.testing.assert_allclose(curve["expected_ms"], s_ms + (1 - curve["exit_ratio"]) * b_ms, rtol=1e-9)  # %.10g
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_every_analysis_command_takes_runtime_records_in_both_costs(runtime, tmp_path, capsys):
    r = {k: str(v) for k, v in runtime.items() if k in ("s", "l", "s_holdout", "l_holdout")}
    commands = [
        ["select", "--base", r["l"], "--saver", r["s"]],
        ["tradeoff", "--base", r["l"], "--saver", r["s"], "--calib-base", r["l_holdout"], "--calib-saver", r["s_holdout"]],
        ["chain", "--stages", r["s"], r["l"], "--thresholds", "0.9"],
        ["plan", "--base", r["l"], "--pool", r["s"], "--calib-base", r["l_holdout"], "--calib-pool", r["s_holdout"],
         "--max-stages", "2", "--grid", "32"],
        ["calibrate", "--base", r["l_holdout"], "--saver", r["s_holdout"], "--drop", "2"],
    ]
    for argv in commands:
        out = tmp_path / f"{argv[0]}.json"
        assert main([*argv, "--json", str(out)]) == 0, argv
        assert "GMACs" in capsys.readouterr().out and "gmacs" in out.read_text()
        assert main([*argv, "--cost", "latency", "--json", str(out)]) == 0, argv
        printed = capsys.readouterr().out
        assert "ms" in printed and "GMACs" not in printed, (argv, printed)
        text = out.read_text()
        assert "gmacs" not in text and ("_ms" in text or '"ms"' in text), (argv, text)
        if argv[0] == "chain":  # in ms, also how much faster than the base alone
            chain = json.loads(text)
            base_ms = load_record(runtime["l"]).latency.ms
            assert chain["speedup"] == pytest.approx(base_ms / chain["ms"], rel=1e-12)
            assert "speed-up vs base" in printed and f"{base_ms / chain['ms']:.2f}×" in printed
    # plan in ms: a model costs its reported split's latency in both splits (the holdout measurement
    # of the same graph differs by timing noise only)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["base_ms"] == pytest.approx(load_record(runtime["l"]).latency.ms)


def test_latencies_measured_differently_are_refused_unless_allowed(runtime, tmp_path, capsys):
    s16 = _record(runtime["export"], "fmnist_cnn_s", tmp_path / "s16.npz", "--batch-size", "16")
    argv = ["tradeoff", "--base", str(runtime["l"]), "--saver", str(s16), "--cost", "latency"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "batch_size 32 here, 16 there" in err and "--allow-mixed-latency" in err
    assert main([*argv, "--allow-mixed-latency"]) == 0
    assert "measured on mixed settings" in " ".join(capsys.readouterr().out.split())  # the legend, wrapped
    # GMACs do not care how the latency was measured
    assert main(argv[:-2]) == 0
    # ...so weighing mixed latencies there is a flag that would do nothing: refused, one line
    capsys.readouterr()
    assert main([*argv[:-2], "--allow-mixed-latency"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs --cost latency" in err


def test_missing_latency_other_graphs_and_gmacs_overrides_are_refused_with_latency(runtime, tmp_path, capsys):
    plain = load_record(runtime["l"])
    extras = {k: v for k, v in plain.extras.items() if not k.startswith("latency") and k != "runtime"}
    torch_like = save_record(tmp_path / "l_torch.npz", replace(plain, extras=extras))
    capsys.readouterr()
    other_graph = load_record(runtime["s_holdout"])
    other_graph.extras["export_sha256"] = np.str_("0" * 64)
    other_graph = save_record(tmp_path / "s_other_graph.npz", other_graph)
    for argv, expected in (
            (["tradeoff", "--base", str(torch_like), "--saver", str(runtime["s"]), "--cost", "latency"],
             "has no measured latency (latency_ms)"),
            (["tradeoff", "--base", str(runtime["l"]), "--saver", str(runtime["s"]), "--calib-base",
              str(runtime["l_holdout"]), "--calib-saver", str(other_graph), "--cost", "latency"],
             "model 'fmnist_cnn_s' was recorded on another graph"),
            (["select", "--base", str(runtime["l"]), "--saver", str(runtime["s"]), "--cost", "latency",
              "--gmacs", "fmnist_cnn_s=0.1"], "--gmacs states GMACs"),
            (["chain", "--stages", str(runtime["s"]), str(torch_like), "--thresholds", "0.9", "--cost", "latency"],
             "has no measured latency")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and expected in err, err


def test_record_refuses_the_other_runtimes_options(runtime, tmp_path, capsys):
    base = ["record", "--data", "fashion_mnist", "--split", "test", "--out", str(tmp_path / "r.npz")]
    exported = ["--runtime", "onnxruntime", "--export", str(runtime["export"])]
    for argv, expected in (
            ([*base, *exported, "--stage", "nope"], "no stage named 'nope' (stages: fmnist_cnn_s, fmnist_cnn_l)"),
            ([*base, *exported, "--stage", "fmnist_cnn_s", "--model", "fmnist_cnn_s"], "--model: PyTorch's option"),
            ([*base, *exported], "give --export DIR and --stage NAME"),
            ([*base, "--model", "fmnist_cnn_s", "--threads", "2"], "--threads: for recording an exported stage"),
            ([*base, *exported, "--stage", "fmnist_cnn_s", "--threads", "0"], "--threads must be >= 1"),
            ([*base], "--model is required")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "r.npz").exists()


def test_a_latency_must_be_whole_and_positive(tmp_path):
    arrays = dict(name="m", gmacs=0.1, conf=np.full(2, 0.5), pred=np.zeros(2, int), label=np.zeros(2, int))
    good = {"latency_ms": np.float64(0.2), "latency_batch_size": np.int64(8), "latency_threads": np.int64(0),
            "runtime": np.str_("onnxruntime 1.0 (CPUExecutionProvider)")}
    back = load_record(save_record(tmp_path / "m.npz", Record(**arrays, extras=dict(good))))
    assert back.latency.ms == 0.2 and back.latency.describe().endswith("batch 8, default threads")
    for change, problem in (({"latency_ms": np.float64(0.0)}, "finite time > 0"),
                            ({"latency_ms": np.float64(np.nan)}, "finite time > 0"),
                            ({"latency_batch_size": np.int64(0)}, "latency_batch_size >= 1"),
                            ({"latency_threads": np.str_("two")}, "'latency_threads' must be an int scalar"),
                            ({"latency_ms": np.full(2, 0.2)}, "'latency_ms' must be a number scalar")):
        with pytest.raises(RecordError, match=problem):
            Record(**arrays, extras={**good, **change})
    partial = dict(good)
    del partial["runtime"]
    with pytest.raises(RecordError, match="missing runtime"):
        Record(**arrays, extras=partial)


def test_plot_axes_say_milliseconds_and_how_they_were_measured(runtime, tmp_path, monkeypatch):
    from tinysaver.report import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    r = {k: str(v) for k, v in runtime.items() if k in ("s", "l")}
    for argv in (["tradeoff", "--base", r["l"], "--saver", r["s"]],
                 ["plan", "--base", r["l"], "--pool", r["s"], "--max-stages", "2", "--grid", "32"]):
        assert main([*argv, "--plot", str(tmp_path / "p.png")]) == 0
        assert main([*argv, "--cost", "latency", "--plot", str(tmp_path / "p.png")]) == 0
    gmacs_t, ms_t, gmacs_p, ms_p = (fig.axes[0].get_xlabel() for fig in figures)
    assert gmacs_t == "expected cost (GMACs per sample)" and gmacs_p.startswith("expected GMACs per sample")
    for label in (ms_t, ms_p):
        first, measured = label.split("\n")
        assert first.startswith("expected cost (ms per sample)") and "GMACs" not in label
        assert measured == f"(measured on {load_record(runtime['s']).latency.describe()})"
