"""The CLI: outputs agree with the brute-force reference; bad input exits 2 with one clear line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tinysaver.cli import main

from .brute_force import brute_force


@pytest.fixture
def pair(make_record):
    rng = np.random.default_rng(3)
    m = 400
    label = rng.integers(0, 10, m)
    conf = np.round(rng.random(m), 2)  # many ties
    saver_pred = np.where(rng.random(m) < conf, label, (label + 1) % 10)
    base_pred = np.where(rng.random(m) < 0.8, label, (label + 2) % 10)
    base = make_record("base", rng.random(m), base_pred, label, gmacs=4.0)
    saver = make_record("saver", conf, saver_pred, label, gmacs=0.5)
    worse = make_record("worse", conf, (label + 3) % 10, label, gmacs=0.2)
    return dict(base=base, saver=saver, worse=worse, conf=conf, sc=saver_pred == label,
                bc=base_pred == label)


def test_select_json(pair, tmp_path, capsys):
    out = tmp_path / "rank.json"
    assert main(["select", "--base", str(pair["base"]), "--saver", str(pair["worse"]),
                 str(pair["saver"]), "--json", str(out)]) == 0
    ranking = json.loads(out.read_text())
    assert [r["saver"] for r in ranking] == ["saver", "worse"]
    assert set(ranking[0]) >= {"saver", "r_match", "threshold", "delta_c", "saver_gmacs", "base_gmacs"}
    ref = brute_force(pair["conf"], pair["sc"], pair["bc"], 0.5, 4.0, [])
    assert ranking[0]["r_match"] == pytest.approx(ref["r_match"])
    assert ranking[0]["delta_c"] == pytest.approx(ref["delta_c"])
    assert ranking[1]["delta_c"] == pytest.approx(0.05)  # always wrong: r_match 0, ΔC = C_S/C_B
    assert "does not compress this base" in capsys.readouterr().out


def test_tradeoff_json_plot_markdown(pair, tmp_path, capsys):
    out, png, md, csv = (tmp_path / n for n in ("row.json", "row.png", "row.md", "curve.csv"))
    assert main(["tradeoff", "--base", str(pair["base"]), "--saver", str(pair["saver"]), "--json", str(out),
                 "--plot", str(png), "--markdown", str(md), "--curve-csv", str(csv)]) == 0
    row = json.loads(out.read_text())
    ref = brute_force(pair["conf"], pair["sc"], pair["bc"], 0.5, 4.0, [1.0, 0.5, 0.1, 0.0])
    assert set(row["required"]) == {"1.0", "0.5", "0.1", "0.0"}
    for key, d in (("1.0", 1.0), ("0.5", 0.5), ("0.1", 0.1), ("0.0", 0.0)):
        assert row["required"][key]["gmacs"] == pytest.approx(ref["required"][d]["cost"])
        assert row["required"][key]["acc"] == pytest.approx(ref["required"][d]["acc"])
    assert row["max_performance"]["acc"] == pytest.approx(ref["max_perf"]["acc"])
    assert row["base_acc"] == pytest.approx(ref["base_acc"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| base |" in md.read_text()  # the file is markdown, the terminal gets the compact table
    assert "saver saver (0.5 GMACs" in capsys.readouterr().out
    assert len(np.loadtxt(csv, delimiter=",", skiprows=1)) == len(np.unique(pair["conf"])) + 1


def test_tradeoff_calibrated(pair, make_record, tmp_path):
    out = tmp_path / "row.json"
    assert main(["tradeoff", "--base", str(pair["base"]), "--saver", str(pair["saver"]),
                 "--calib-base", str(pair["base"]), "--calib-saver", str(pair["saver"]),
                 "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["mode"] == "calibrated"
    # calibrating on the reported split itself reproduces the same-split numbers
    assert row["required"]["0.0"]["acc"] == row["required"]["0.0"]["calib_acc"]


def test_console_script_runs(pair, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "tinysaver")
    if not os.path.exists(exe):
        pytest.skip("package not installed in this interpreter's environment")
    proc = subprocess.run([exe, "select", "--base", str(pair["base"]), "--saver", str(pair["saver"])],
                          capture_output=True, text=True, check=True)
    assert "Saver selection" in proc.stdout


# --- bad input: one line naming the file and the problem, exit 2, no output file -------------

def _arrays(m=5, **over):
    a = dict(conf=np.linspace(0.2, 0.9, m), pred=np.arange(m) % 3, label=np.arange(m) % 3,
             name=np.str_("bad"), gmacs=np.float64(1.0))
    a.update(over)
    return {k: v for k, v in a.items() if v is not None}


def _raw(tmp_path, filename, /, **arrays):
    path = tmp_path / filename
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


BAD = {
    "missing array": (lambda t: _raw(t, "r.npz", **_arrays(label=None)), "missing array(s) 'label'"),
    "length mismatch": (lambda t: _raw(t, "r.npz", **_arrays(pred=np.zeros(4, int))), "different lengths"),
    "nan conf": (lambda t: _raw(t, "r.npz", **_arrays(conf=np.array([0.1, np.nan, 0.3, 0.4, 0.5]))), "non-finite"),
    "inf conf": (lambda t: _raw(t, "r.npz", **_arrays(conf=np.array([0.1, np.inf, 0.3, 0.4, 0.5]))), "non-finite"),
    "softmax out of range": (lambda t: _raw(t, "r.npz", **_arrays(conf=np.array([0.1, 1.5, 0.3, 0.4, 0.5]))),
                             "max_softmax confidence must lie in [0, 1]"),
    "empty": (lambda t: _raw(t, "r.npz", **_arrays(m=0)), "empty"),
    "unreadable": (lambda t: (t / "r.npz").write_bytes(b"not a zip") and t / "r.npz", "unreadable record"),
    "truncated": (lambda t: _truncate(_raw(t, "r.npz", **_arrays())), "unreadable record"),
    "missing file": (lambda t: t / "nope.npz", "no such file"),
    "float labels": (lambda t: _raw(t, "r.npz", **_arrays(label=np.linspace(0, 1, 5))), "integer class ids"),
    "wrong class count": (lambda t: _raw(t, "r.npz", **_arrays(num_classes=np.int64(2))), "outside 0..1"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["select", "tradeoff"])
def test_bad_saver_record(case, command, pair, tmp_path, capsys):
    make, expected = BAD[case]
    bad = make(tmp_path)
    out = tmp_path / "out.json"
    args = [command, "--base", str(pair["base"]), "--saver", str(bad), "--json", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and str(bad) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.json")]


def test_labels_differ(pair, make_record, tmp_path, capsys):
    other = make_record("shuffled", np.full(400, 0.5), np.zeros(400), np.roll(np.arange(400) % 10, 1))
    out = tmp_path / "out.json"
    assert main(["tradeoff", "--base", str(pair["base"]), "--saver", str(other), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "labels differ from the base record" in err and not out.exists()


def test_length_differs(pair, make_record, tmp_path, capsys):
    short = make_record("short", [0.5], [0], [0])
    assert main(["select", "--base", str(pair["base"]), "--saver", str(short)]) == 2
    assert "has 1 samples but the base record" in capsys.readouterr().err


def test_calibration_needs_both(pair, capsys):
    assert main(["tradeoff", "--base", str(pair["base"]), "--saver", str(pair["saver"]),
                 "--calib-base", str(pair["base"])]) == 2
    assert "go together" in capsys.readouterr().err


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tinysaver.cli", "select", "--base", str(tmp_path / "x.npz"),
                           "--saver", str(tmp_path / "y.npz")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr
