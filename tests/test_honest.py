"""Every reported number is the number that happened (issue: honest numbers).

- A threshold chosen on a calibration split is reported with what it measured on the reported split,
  with ``meets_target``; "nothing exits" is +inf and lets nothing exit on any split.
- The live cascade routes exactly like the records under the numerics they were made with
  (float16 models, bfloat16 autocast) and for hand-typed thresholds.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinysaver import Cascade, exit_curve, tradeoff
from tinysaver.cli import main
from tinysaver.models.recording import record_predictions
from tinysaver.plugins.timm import create_classifier, eval_transform
from tinysaver.report import tradeoff_markdown

from .helpers import fmnist_dataset, stack_inputs, weights


# --- calibrated mode ------------------------------------------------------------------------------

def test_nothing_exits_means_nothing_exits_on_the_reported_split():
    # Calibration: the most confident sample is the saver's only error, so a zero drop lets
    # nothing exit. On the reported split every confidence is higher than any calibration one.
    calib = exit_curve([0.6, 0.5, 0.4], [0, 1, 1], [1, 1, 1], 1.0, 4.0)
    report = exit_curve([0.9, 0.8, 0.7, 0.65], [0, 0, 1, 1], [1, 1, 1, 1], 1.0, 4.0)
    row = tradeoff(report, drops=[0.0], calibration=calib)
    cell = row.required[0.0]
    assert cell.threshold == np.inf
    assert cell.exit_ratio == 0.0 and cell.acc == 1.0 and cell.gmacs == 5.0
    assert cell.meets_target is True
    assert row.to_json()["required"]["0.0"]["threshold"] == "inf"
    json.dumps(row.to_json(), allow_nan=False)  # valid JSON


def _brute_force_calibrated_cell(calib, report, drop, gmacs):
    """The honest mode by its definition, one threshold at a time: on the calibration split the
    cheapest threshold (every distinct confidence, and +inf: nothing exits) whose accuracy is >=
    base - drop; then what it does on the reported split with ``conf >= t``."""
    (c_conf, c_saver, c_base), (r_conf, r_saver, r_base) = calib, report
    saver_g, base_g = gmacs

    def system(conf, saver, base, t):
        exits = conf >= t
        return exits.mean(), np.where(exits, saver, base).sum(), saver_g + (1 - exits.mean()) * base_g

    best = None
    for t in [*np.unique(c_conf), np.inf]:
        ratio, correct, cost = system(c_conf, c_saver, c_base, t)
        if correct >= c_base.sum() - drop / 100 * len(c_conf) - 1e-6 and (best is None or cost < best[3]):
            best = (t, ratio, correct / len(c_conf), cost)
    if best is None:
        return None
    t, calib_ratio, calib_acc, _ = best
    ratio, correct, cost = system(r_conf, r_saver, r_base, t)
    return dict(threshold=t, exit_ratio=ratio, acc=correct / len(r_conf), gmacs=cost, calib_acc=calib_acc,
                calib_exit_ratio=calib_ratio,
                meets_target=bool(correct >= r_base.sum() - drop / 100 * len(r_conf) - 1e-6))


def test_calibrated_cells_equal_a_brute_force_of_the_definition():
    """Random small splits with tied confidences (so "inf", null and missed cells all occur): every
    calibrated cell is the brute force's, threshold, measured values and meets_target alike."""
    rng = np.random.default_rng(7)
    drops = [5.0, 1.0, 0.5, 0.0, -1.0, -10.0]
    seen = {"inf": 0, "null": 0, "missed": 0, "kept": 0}
    for _ in range(300):
        splits = []
        for m in rng.integers(3, 40, size=2):
            conf = rng.integers(0, 8, size=m) / 8.0  # few distinct values: ties
            saver = (rng.random(m) < 0.3 + 0.6 * conf).astype(float)
            splits.append((conf, saver, (rng.random(m) < 0.8).astype(float)))
        gmacs = (float(rng.uniform(0.1, 1.0)), float(rng.uniform(1.0, 5.0)))
        (cc, cs, cb), (rc, rs, rb) = splits
        row = tradeoff(exit_curve(rc, rs, rb, *gmacs), drops=drops, calibration=exit_curve(cc, cs, cb, *gmacs))
        for drop in drops:
            expected = _brute_force_calibrated_cell(splits[0], splits[1], drop, gmacs)
            cell = row.required[drop]
            if expected is None:
                assert cell is None
                seen["null"] += 1
                continue
            assert cell is not None
            assert cell.threshold == expected["threshold"]
            for key in ("exit_ratio", "acc", "gmacs", "calib_acc", "calib_exit_ratio"):
                assert getattr(cell, key) == pytest.approx(expected[key], abs=1e-12), key
            assert cell.meets_target is expected["meets_target"]
            seen["inf" if expected["threshold"] == np.inf else "missed" if not cell.meets_target else "kept"] += 1
    assert min(seen.values()) > 0, seen  # every kind of cell was compared


def test_calibrated_cell_reports_measured_values_and_missed_targets():
    rng = np.random.default_rng(0)
    m = 2000
    conf_c, conf_r = rng.random(m), rng.random(m)
    # The saver is always right on calibration, but wrong on 30 % of the reported split.
    calib = exit_curve(conf_c, np.ones(m), np.ones(m), 1.0, 10.0)
    sc_r = (rng.random(m) > 0.3).astype(float)
    report = exit_curve(conf_r, sc_r, np.ones(m), 1.0, 10.0)
    row = tradeoff(report, drops=[1.0, 0.0], calibration=calib, split="test", calib_split="holdout")
    for drop, cell in row.required.items():
        # chosen on calibration: everything exits there, with no loss
        assert cell.calib_exit_ratio == 1.0 and cell.calib_acc == 1.0
        # measured on the reported split
        exits = conf_r >= cell.threshold
        assert cell.exit_ratio == exits.mean()
        assert cell.acc == np.where(exits, sc_r, 1.0).mean()
        assert cell.gmacs == pytest.approx(1.0 + (1 - exits.mean()) * 10.0)
        assert cell.meets_target is False
    assert row.missed == [1.0, 0.0]
    md = tradeoff_markdown([row])
    assert md.count("✗ missed") == 2 and f"acc {row.required[0.0].acc:.2%}" in md
    assert "(test)" in md and "(holdout)" in md  # where each ΔC comes from
    out = row.to_json()
    assert out["required"]["0.0"]["meets_target"] is False and out["delta_c_split"] == "test"
    assert out["calib_split"] == "holdout"


def test_same_split_cells_meet_their_target_by_construction():
    rng = np.random.default_rng(1)
    conf = rng.random(500)
    row = tradeoff(exit_curve(conf, rng.random(500) < conf, rng.random(500) < 0.8, 1.0, 5.0))
    assert all(p.meets_target for p in row.required.values() if p is not None)
    assert row.missed == []


def test_tradeoff_cli_names_the_splits_and_marks_misses(make_record, tmp_path, capsys):
    rng = np.random.default_rng(2)
    m = 1000
    label = rng.integers(0, 5, m)
    base = make_record("base", rng.random(m), label, label, gmacs=4.0, filename="b.npz")
    saver = make_record("saver", rng.random(m), np.where(rng.random(m) < 0.7, label, (label + 1) % 5), label,
                        gmacs=0.5, filename="s.npz")
    cbase = make_record("base", rng.random(m), label, label, gmacs=4.0, filename="cb.npz")
    csaver = make_record("saver", rng.random(m), label, label, gmacs=0.5, filename="cs.npz")
    out = tmp_path / "row.json"
    assert main(["tradeoff", "--base", str(base), "--saver", str(saver), "--calib-base", str(cbase),
                 "--calib-saver", str(csaver), "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["mode"] == "calibrated"
    assert all(cell["meets_target"] is False for cell in row["required"].values())
    assert {"calib_acc", "calib_exit_ratio", "acc", "exit_ratio", "gmacs", "threshold"} <= set(row["required"]["0.5"])
    # bootstrap intervals of the measured numbers
    assert main(["tradeoff", "--base", str(base), "--saver", str(saver), "--calib-base", str(cbase),
                 "--calib-saver", str(csaver), "--json", str(out), "--ci", "0.9", "--ci-draws", "50"]) == 0
    for cell in json.loads(out.read_text())["required"].values():
        (acc_lo, acc_hi), (g_lo, g_hi) = cell["ci"]["acc"], cell["ci"]["gmacs"]
        assert 0 <= acc_lo <= acc_hi <= 1 and 0.5 <= g_lo <= g_hi <= 4.5
    out.unlink()
    assert main(["tradeoff", "--base", str(base), "--saver", str(saver), "--json", str(out), "--ci", "0.9"]) == 2
    assert "--ci needs the calibrated mode" in capsys.readouterr().err and not out.exists()


# --- live cascade = records, under every numeric setting -------------------------------------------

N = 384


@pytest.fixture(scope="module")
def pool():
    saver = create_classifier("fmnist_cnn_xs", weights("fmnist_cnn_xs"))
    base = create_classifier("fmnist_cnn_s", weights("fmnist_cnn_s"))
    return saver, base


def _records(saver, base, tmp_path, **numerics):
    ds = fmnist_dataset("test", N, eval_transform(saver))
    rs = record_predictions(saver, ds, tmp_path / "s.npz", name="s", gmacs=1, batch_size=128, progress=False, **numerics)
    rb = record_predictions(base, ds, tmp_path / "b.npz", name="b", gmacs=2, batch_size=128, progress=False, **numerics)
    return rs, rb, stack_inputs(ds)[0]


def _live(cascade, x, dtype=None, amp=False):
    outs = []
    with torch.no_grad(), torch.autocast("cpu", enabled=amp):
        for i in range(0, len(x), 128):
            xb = x[i:i + 128]
            outs.append(cascade(xb.to(dtype) if dtype is not None else xb))
    return torch.cat([o.stage for o in outs]).numpy(), torch.cat([o.logits for o in outs]).argmax(1).numpy()


def _check_equal(stage, pred, rs, rb, t):
    sim_exit = rs.conf >= t
    assert 0 < sim_exit.mean() < 1
    np.testing.assert_array_equal(stage == 0, sim_exit)
    np.testing.assert_array_equal(pred, np.where(sim_exit, rs.pred, rb.pred))


def test_half_precision_cascade_routes_like_its_records(pool, tmp_path):
    saver, base = (m.half() for m in (create_classifier(n, weights(n)) for n in ("fmnist_cnn_xs", "fmnist_cnn_s")))
    rs, rb, x = _records(saver, base, tmp_path, dtype="float16")
    # A threshold fp16 cannot represent, just above a recorded confidence c, that fp16 rounds down
    # to c or below: routing against the fp16-rounded threshold would send c's sample to the saver,
    # the records keep it at the base (so this test fails if the threshold is rounded anywhere).
    middle = np.sort(rs.conf)[N // 4:3 * N // 4]
    c = next(c for c in middle if float(np.float16(np.nextafter(c, np.inf))) <= c)
    t = float(np.nextafter(c, np.inf))
    assert float(torch.tensor(t, dtype=torch.float16)) != t
    assert not np.array_equal(rs.conf >= t, rs.conf >= float(np.float16(t)))
    cascade = Cascade(saver, base, threshold=t).half()
    assert cascade.threshold == t  # .half() does not round the threshold
    _check_equal(*_live(cascade, x, dtype=torch.float16), rs, rb, t)


def test_bf16_autocast_cascade_routes_like_autocast_records(pool, tmp_path):
    saver, base = pool
    rs, rb, x = _records(saver, base, tmp_path, amp=True)
    assert not np.array_equal(rs.conf, _records(saver, base, tmp_path / "fp32")[0].conf)  # autocast changed numbers
    t = float(np.quantile(rs.conf, 0.4))
    _check_equal(*_live(Cascade(saver, base, threshold=t), x, amp=True), rs, rb, t)


def test_hand_typed_threshold_routes_like_the_analysis(pool, tmp_path):
    saver, base = pool
    rs, rb, x = _records(saver, base, tmp_path / "r")
    # Just above a recorded confidence in float64, equal to it once rounded to float32: the
    # analysis keeps that sample at the base, so must the live cascade.
    c = float(np.sort(rs.conf)[N // 2])
    t = float(np.nextafter(c, np.inf))
    assert np.float32(t) == np.float32(c)
    stage, pred = _live(Cascade(saver, base, threshold=t), x)
    _check_equal(stage, pred, rs, rb, t)
    assert (rs.conf >= t).sum() == (stage == 0).sum()


# --- reproducible recording ------------------------------------------------------------------------

def test_numpy_drawing_augmentation_is_seeded_per_sample(pool, tmp_path):
    from tinysaver.models.recording import SeededItems

    saver, _ = pool
    base_t = eval_transform(saver)

    def numpy_jitter(img):  # like timm's RandAugment: draws from numpy's global generator
        return base_t(img) + float(np.random.uniform(-0.5, 0.5))

    ds = SeededItems(fmnist_dataset("test", 300, numpy_jitter), seed=3)
    forward = [float(ds[i][0].sum()) for i in range(10)]
    backward = [float(ds[i][0].sum()) for i in reversed(range(10))][::-1]
    assert forward == backward  # sample i's draw does not depend on what ran before

    def rec(out, stop=None):
        return record_predictions(saver, ds, out, name="s", gmacs=1, batch_size=64, progress=False,
                                  stop_after_batches=stop)

    plain = rec(tmp_path / "plain.npz")
    assert rec(tmp_path / "resumed.npz", stop=2) is None
    np.random.seed(12345)  # whatever state the resumed run starts from
    resumed = rec(tmp_path / "resumed.npz")
    np.testing.assert_array_equal(plain.conf, resumed.conf)


def test_distributed_cuda_device_is_the_local_rank(monkeypatch):
    from tinysaver.models import recording

    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")  # second node, second GPU
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(recording, "dist_info", lambda: (3, 4))
    assert recording.init_distributed_from_env("cuda") == (3, 4)
    assert chosen == [1]


def test_min_box_score_boundary_counts():
    from tinysaver.confidence import MIN_BOX_SCORE, build_confidence

    assert MIN_BOX_SCORE == 0.05
    for name, expected in (("mean_box_score", (0.05 + 0.9) / 2), ("max_box_score", 0.9), ("box_count", 2.0)):
        fn = build_confidence(name)
        assert fn([np.array([0.05, np.nextafter(0.05, 0), 0.9])])[0] == pytest.approx(expected)
        assert fn([np.array([np.nextafter(0.05, 0)])])[0] == 0.0


def test_pipeline_live_check_under_autocast_and_record_reuse_key(tmp_path):
    from tinysaver.pipeline import ModelSpec, PipelineConfig, Split, run_pipeline
    from tinysaver.plugins.datasets import ArrayImageDataset
    from tinysaver.records import load_record

    from .helpers import fmnist_subset

    def split(name, n, source="fashion_mnist"):
        images, labels = fmnist_subset(name, n)
        return Split(name, lambda t: ArrayImageDataset(images, labels, t), source=source)

    spec = lambda n: ModelSpec(n, weights(n))  # noqa: E731
    cfg = PipelineConfig(base=spec("fmnist_cnn_s"), savers=[spec("fmnist_cnn_xs")], select_split=split("holdout", 300),
                         report_split=split("test", 300), out_dir=tmp_path, batch_size=100, amp=True,
                         speed_batch_sizes=(), live_check=True)
    summary = run_pipeline(cfg)
    lc = summary["live_check"]
    assert lc["routing_mismatches"] == 0 and lc["prediction_mismatches"] == 0
    rec_path = tmp_path / "records" / "fmnist_cnn_s_test.npz"
    assert load_record(rec_path).settings["numerics"]["amp"] is True

    def mtimes():
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "records").iterdir()}

    cfg.live_check = False
    before = mtimes()
    run_pipeline(cfg)
    assert mtimes() == before  # same settings: reused
    cfg.amp = False
    run_pipeline(cfg)
    after = mtimes()
    assert all(after[k] != before[k] for k in before)  # other numerics: redone
    assert load_record(rec_path).settings["numerics"]["amp"] is False
    cfg.report_split = split("test", 300, source="another/root")
    run_pipeline(cfg)
    assert mtimes()["fmnist_cnn_s_test.npz"] != after["fmnist_cnn_s_test.npz"]  # other data: redone
    assert mtimes()["fmnist_cnn_s_holdout.npz"] == after["fmnist_cnn_s_holdout.npz"]


def test_thresholds_chosen_on_another_models_records_are_refused(make_record, tmp_path, capsys):
    # --calib-saver of another saver (other confidences, other cost): its thresholds say nothing
    # about this saver, and its ΔC would be printed as this pair's.
    from tinysaver import load_record
    from tinysaver.analysis import tradeoff_from_records
    from tinysaver.errors import TinySaverError

    rng = np.random.default_rng(3)
    label = rng.integers(0, 5, 400)
    paths = {}
    for split in ("test", "holdout"):
        for name, gmacs in (("base", 4.0), ("saver", 0.5), ("other", 0.1)):
            paths[name, split] = make_record(name, rng.random(400), label, label, gmacs=gmacs,
                                             filename=f"{name}_{split}.npz")
    out = tmp_path / "row.json"
    argv = ["tradeoff", "--base", str(paths["base", "test"]), "--saver", str(paths["saver", "test"]),
            "--calib-base", str(paths["base", "holdout"]), "--json", str(out)]
    assert main(argv + ["--calib-saver", str(paths["other", "holdout"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibration saver costs 0.1 GMACs but the reported saver 0.5" in err[0]
    assert not out.exists()
    assert main(argv + ["--calib-saver", str(paths["saver", "holdout"])]) == 0 and out.exists()
    # From records, the names are checked too (same cost, another model).
    rec = {k: load_record(p) for k, p in paths.items()}
    renamed = load_record(paths["saver", "holdout"])
    renamed.name = "saver_v2"
    with pytest.raises(TinySaverError, match="'saver_v2'"):
        tradeoff_from_records(rec["saver", "test"], rec["base", "test"], calib_saver=renamed,
                              calib_base=rec["base", "holdout"])
    row = tradeoff_from_records(rec["saver", "test"], rec["base", "test"], calib_saver=rec["saver", "holdout"],
                                calib_base=rec["base", "holdout"])
    assert row.mode == "calibrated" and row.calib_split == "calibration"
