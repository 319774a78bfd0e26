"""A chain at given thresholds: by hand, against the exact 2-stage analysis, and the `chain` CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tinysaver import Record, exit_curve
from tinysaver.analysis import ChainStage, chain_from_records, simulate_chain
from tinysaver.cli import main
from tinysaver.errors import TinySaverError


def _stages():
    s1 = ChainStage("tiny", 1.0, np.array([0.9, 0.4, 0.8, 0.95]), np.array([1.0, 0.0, 1.0, 0.0]))
    s2 = ChainStage("small", 2.0, np.array([0.7, 0.9, 0.2, 0.5]), np.array([1.0, 1.0, 0.0, 1.0]))
    b = ChainStage("base", 10.0, np.ones(4), np.array([1.0, 1.0, 1.0, 1.0]))
    return [s1, s2, b]


def test_by_hand():
    ev = simulate_chain(_stages(), [[0.85, 0.8], [np.inf, 0.5], [np.inf, np.inf], [0.0, 0.0]])
    # row 0: tiny takes samples 0 and 3 (3 wrong), small sample 1, base sample 2
    assert ev.answered[0].tolist() == [0.5, 0.25, 0.25]
    assert ev.acc[0] == 0.75
    assert ev.gmacs[0] == pytest.approx((2 * 1 + 1 * 3 + 1 * 13) / 4)
    # row 1: nothing exits at tiny; small takes 0, 1, 3 (all right); base sample 2
    assert ev.answered[1].tolist() == [0.0, 0.75, 0.25] and ev.acc[1] == 1.0
    assert ev.gmacs[1] == pytest.approx((3 * 3 + 13) / 4)
    # row 2: the base answers everything but every stage was paid
    assert ev.answered[2].tolist() == [0.0, 0.0, 1.0] and ev.gmacs[2] == 13.0
    # row 3: everything exits at the first stage
    assert ev.answered[3].tolist() == [1.0, 0.0, 0.0] and ev.acc[3] == 0.5 and ev.gmacs[3] == 1.0


def test_two_stages_equal_the_exact_pair_analysis():
    rng = np.random.default_rng(0)
    m = 500
    conf = np.round(rng.random(m), 2)
    sc, bc = (rng.random(m) < 0.7).astype(float), (rng.random(m) < 0.9).astype(float)
    curve = exit_curve(conf, sc, bc, 0.3, 4.0)
    ev = simulate_chain([ChainStage("s", 0.3, conf, sc), ChainStage("b", 4.0, np.ones(m), bc)],
                        curve.threshold[:, None])
    np.testing.assert_allclose(ev.acc, curve.system_acc)
    np.testing.assert_allclose(ev.gmacs, curve.expected_gmacs)
    np.testing.assert_allclose(ev.answered[:, 0], curve.exit_ratio)


def _write(make_record, stages, label=None):
    paths = []
    for s in stages:
        lab = np.zeros(len(s.conf), dtype=np.int64) if label is None else label
        pred = np.where(s.correct > 0, lab, lab + 1)
        paths.append(str(make_record(s.name, s.conf, pred, lab, gmacs=s.gmacs)))
    return paths


def test_chain_cli(make_record, tmp_path, capsys):
    paths = _write(make_record, _stages())
    out = tmp_path / "chain.json"
    assert main(["chain", "--stages", *paths, "--thresholds", "0.85", "inf", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["stages"] == ["tiny", "small", "base"]
    assert data["thresholds"] == [0.85, "inf"]
    assert data["answered"] == [0.5, 0.0, 0.5]
    assert data["acc"] == 0.75 and data["gmacs"] == pytest.approx((2 * 1 + 2 * 13) / 4)
    assert "tiny → small → base" in capsys.readouterr().out


@pytest.mark.parametrize("argv_tail, message", [
    (["--thresholds", "0.5"], "need 2 threshold"),
    (["--thresholds", "0.5", "0.5", "0.5"], "need 2 threshold"),
    (["--thresholds", "nan", "0.5"], "NaN"),
])
def test_chain_cli_bad_thresholds(make_record, tmp_path, capsys, argv_tail, message):
    paths = _write(make_record, _stages())
    out = tmp_path / "x.json"
    assert main(["chain", "--stages", *paths, *argv_tail, "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_chain_cli_bad_records(make_record, tmp_path, capsys):
    s1, s2, b = _stages()
    paths = _write(make_record, [s2, s1, b])  # small (2 GMACs) before tiny (1 GMAC)
    assert main(["chain", "--stages", *paths, "--thresholds", "0.5", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "increasing cost" in err and "tiny small base" in err
    short = make_record("short", [0.5, 0.5], [0, 0], [0, 0], gmacs=0.1, filename="short.npz")
    base = _write(make_record, [b])[0]
    assert main(["chain", "--stages", str(short), base, "--thresholds", "0.5"]) == 2
    assert "2 samples" in capsys.readouterr().err
    other = make_record("other", [0.5] * 4, [0] * 4, [0, 0, 1, 0], gmacs=0.1, filename="other.npz")
    assert main(["chain", "--stages", str(other), base, "--thresholds", "0.5"]) == 2
    assert "labels differ" in capsys.readouterr().err


def test_chain_from_records_base_alone():
    label = np.zeros(3, dtype=np.int64)
    base = Record("b", 5.0, np.ones(3), np.array([0, 1, 0]), label)
    point = chain_from_records([base], [])
    assert point.acc == pytest.approx(2 / 3) and point.gmacs == 5.0 and point.answered == [1.0]
    with pytest.raises(TinySaverError):
        chain_from_records([base], [0.5])
