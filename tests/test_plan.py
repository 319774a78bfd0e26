"""The planner: exact against a brute force over every chain and threshold combination; never worse
than the best pair; the oracle and headroom; the grid mode; the honest mode; the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinysaver.analysis import ChainStage, chain_table, grid_ranks, plan_chains, simulate_chain, threshold_grid
from tinysaver.cli import main
from tinysaver.errors import TinySaverError

from . import brute_force_chain as bf
from .helpers import chain_record, chain_tuple

DROPS = [1.0, 0.5, 0.1, 0.0, 5.0, 20.0, -10.0]


@st.composite
def pools(draw):
    m = draw(st.integers(1, 9))
    confs = st.sampled_from([0.1, 0.5, 0.5, 0.9, 1.0]) | st.floats(0, 1)
    label = np.zeros(m, dtype=np.int64)
    num = draw(st.integers(1, 3))
    # costs: some equal, sometimes one at least as costly as the base (skipped)
    costs = draw(st.lists(st.sampled_from([0.5, 1.0, 1.0, 2.5, 10.0, 12.0]), min_size=num, max_size=num))
    pool = [chain_record(f"s{i}", costs[i], draw(st.lists(confs, min_size=m, max_size=m)),
                    draw(st.lists(st.booleans(), min_size=m, max_size=m)), label) for i in range(num)]
    base = chain_record("base", 10.0, np.ones(m), draw(st.lists(st.booleans(), min_size=m, max_size=m)), label)
    return pool, base, draw(st.integers(1, 4))


@settings(max_examples=150, deadline=None)
@given(pools())
def test_plan_matches_brute_force(case):
    pool, base, max_stages = case
    m = len(base)
    plan = plan_chains(base, pool, max_stages=max_stages, drops=DROPS, progress=False)
    assert plan.mode == "exact"
    points = bf.all_points([chain_tuple(r) for r in pool], chain_tuple(base), max_stages)
    # the Pareto front: same (correct count, cost) pairs
    ref_front = bf.front(points)
    got = [(round(p.acc * m), p.gmacs) for p in plan.front]
    assert [c for c, _ in got] == [c for c, _ in ref_front]
    np.testing.assert_allclose([g for _, g in got], [g for _, g in ref_front], rtol=1e-12)
    base_correct = int(base.correct.sum())
    pairs = [p for p in points if len(p["stages"]) == 2]
    for d in DROPS:
        for mine, ref in ((plan.required[d], bf.required(points, base_correct, m, d)),
                          (plan.best_pair[d], bf.required(pairs, base_correct, m, d))):
            assert (mine is None) == (ref is None)
            if ref is not None:
                assert mine.gmacs == pytest.approx(ref["cost"], rel=1e-12)
                assert mine.acc * m >= base_correct - d / 100 * m - 1e-6
        if plan.best_pair[d] is not None:
            assert plan.required[d].gmacs <= plan.best_pair[d].gmacs
    # every reported configuration does what it says when run directly
    for p in plan.front + [p for p in plan.required.values() if p]:
        chain = [next(chain_tuple(r) for r in pool + [base] if r.name == n) for n in p.stages]
        correct, reach = bf.simulate(chain, p.thresholds)
        assert correct == round(p.acc * m)
        assert bf.cost_of(chain, reach, m) == pytest.approx(p.gmacs, rel=1e-12)
        answered = [(reach[k] - reach[k + 1]) / m for k in range(len(reach) - 1)] + [reach[-1] / m]
        np.testing.assert_allclose(p.answered, answered, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40).flatmap(lambda m: st.tuples(
    st.lists(st.sampled_from([0.2, 0.4, 0.6, 0.8]) | st.floats(0, 1), min_size=m, max_size=m),
    st.lists(st.sampled_from([0.2, 0.4, 0.6, 0.8]) | st.floats(0, 1), min_size=m, max_size=m),
    st.lists(st.integers(0, 1), min_size=m, max_size=m), st.lists(st.integers(0, 1), min_size=m, max_size=m),
    st.lists(st.integers(0, 1), min_size=m, max_size=m), st.lists(st.integers(0, 3), min_size=m, max_size=m),
    st.integers(2, 6))))
def test_table_equals_direct_simulation_at_every_cell(case):
    c1, c2, r1, r2, rb, w, grid_size = case
    stages = [ChainStage("a", 0.5, np.array(c1), np.array(r1, float)),
              ChainStage("b", 2.0, np.array(c2), np.array(r2, float)),
              ChainStage("B", 7.0, np.ones(len(c1)), np.array(rb, float))]
    w = np.array(w, float)
    if w.sum() == 0:
        w[0] = 1.0
    grids = [threshold_grid(s.conf, grid_size) for s in stages[:2]]
    ranks = [grid_ranks(s.conf, g) for s, g in zip(stages, grids)]
    correct, cost = chain_table(ranks, [len(g) for g in grids], [s.correct for s in stages],
                                [s.gmacs for s in stages], weights=w)
    t1 = np.append(grids[0], np.inf)
    t2 = np.append(grids[1], np.inf)
    tt = np.array([(a, b) for a in t1 for b in t2])
    ev = simulate_chain(stages, tt, weights=np.broadcast_to(w, (len(tt), len(w))))
    np.testing.assert_allclose(correct.ravel(), ev.acc * w.sum(), atol=1e-9)
    np.testing.assert_allclose(cost.ravel(), ev.gmacs, rtol=1e-12)


def _synthetic(m, num, seed, distinct=None):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 10, m)
    pool = []
    for i in range(num):
        conf = rng.beta(4, 1.5, m)
        if distinct:
            conf = np.round(conf * distinct) / distinct
        right = rng.random(m) < 0.35 + 0.6 * conf
        pool.append(chain_record(f"s{i}", 0.1 * (i + 1), conf, right, label))
    base = chain_record("base", 2.0, rng.random(m), rng.random(m) < 0.93, label)
    return pool, base


def test_grid_mode_never_worse_than_best_pair_and_says_so():
    pool, base = _synthetic(3000, 4, 0)
    plan = plan_chains(base, pool, max_stages=3, grid=64, progress=False)
    tables_only = plan_chains(base, pool, max_stages=3, grid=64, progress=False, descent=False)
    assert plan.mode == "grid-64+descent" and tables_only.mode == "grid-64"
    assert plan.search["exact_chains"] == 1 + 4  # base alone and the pairs stay exact
    assert plan.search["grid_chains"] == 6 and plan.search["descent_only_chains"] == 0
    for d, p in plan.required.items():
        assert p.gmacs <= plan.best_pair[d].gmacs
        assert p.gmacs <= tables_only.required[d].gmacs + 1e-12  # the descent only keeps cheaper answers
        assert p.acc * 3000 >= base.correct.sum() - d / 100 * 3000 - 1e-6
    # the grid thresholds are real confidences: re-running the chain reproduces the numbers
    for p in plan.front[:: max(1, len(plan.front) // 20)]:
        recs = [r for n in p.stages for r in pool + [base] if r.name == n]
        ev = simulate_chain([ChainStage.from_record(r) for r in recs], p.thresholds)
        assert ev.acc[0] == pytest.approx(p.acc) and ev.gmacs[0] == pytest.approx(p.gmacs)


def test_exact_when_few_distinct_confidences():
    pool, base = _synthetic(5000, 3, 1, distinct=500)
    plan = plan_chains(base, pool, max_stages=3, progress=False)
    assert plan.mode == "exact" and plan.search["grid_chains"] == 0


def test_oracle_and_headroom_by_hand():
    label = np.zeros(4, dtype=np.int64)
    a = chain_record("a", 1.0, [0.9, 0.3, 0.2, 0.1], [1, 0, 0, 0], label)
    b = chain_record("b", 2.0, [0.1, 0.9, 0.2, 0.3], [0, 1, 0, 0], label)
    base = chain_record("base", 10.0, np.ones(4), [1, 1, 1, 0], label)
    plan = plan_chains(base, [b, a], max_stages=3, drops=[0.0, 30.0], progress=False)
    # oracle: sample 0 -> a (1), sample 1 -> b (2), sample 2 -> base (10), sample 3 -> nobody: base (10)
    assert plan.oracle.acc == 0.75 and plan.oracle.gmacs == pytest.approx(23 / 4)
    assert plan.oracle.models == ["a", "b", "base"] and plan.oracle.answered == [0.25, 0.25, 0.5]
    zero = plan.required[0.0]
    # Samples 0-2 must be right, so sample 2 (only the base is right) pays every stage. a at 0.9
    # takes sample 0, b at 0.3 samples 1 and 3 (nobody is right on 3), the base sample 2:
    # (4·1 + 3·2 + 1·10) / 4 = 5. The best pair: b at 0.3, (4·2 + 2·10) / 4 = 7.
    assert zero.stages == ["a", "b", "base"] and zero.thresholds == [0.9, 0.3]
    assert zero.gmacs == pytest.approx(5.0) and zero.acc == 0.75 and zero.answered == [0.25, 0.5, 0.25]
    assert plan.best_pair[0.0].stages == ["b", "base"] and plan.best_pair[0.0].gmacs == pytest.approx(7.0)
    assert plan.headroom_captured[0.0] == pytest.approx((10 - 5.0) / (10 - 23 / 4))
    assert plan.to_json()["required"]["0.0"]["thresholds"] == [0.9, 0.3]


def test_costly_pool_member_is_skipped():
    label = np.zeros(3, dtype=np.int64)
    big = chain_record("big", 20.0, [0.9, 0.8, 0.7], [1, 1, 1], label)
    small = chain_record("small", 1.0, [0.9, 0.8, 0.7], [1, 0, 1], label)
    base = chain_record("base", 10.0, np.ones(3), [1, 1, 1], label)
    plan = plan_chains(base, [big, small], progress=False)
    assert plan.pool == ["small"] and plan.skipped[0]["name"] == "big"
    assert plan.search["chains"] == 2


def test_honest_mode_measures_on_the_report_split():
    pool, base = _synthetic(4000, 3, 2)
    cpool, cbase = _synthetic(4000, 3, 3)
    plan = plan_chains(base, pool, calib_base=cbase, calib_pool=cpool, progress=False)
    assert plan.selection == "calibrated"
    for d, p in plan.required.items():
        recs = [r for n in p.stages for r in pool + [base] if r.name == n]
        ev = simulate_chain([ChainStage.from_record(r) for r in recs], p.thresholds)
        assert p.acc == pytest.approx(ev.acc[0]) and p.gmacs == pytest.approx(ev.gmacs[0])
        np.testing.assert_allclose(p.answered, ev.answered[0], atol=1e-12)
        cal = [r for n in p.stages for r in cpool + [cbase] if r.name == n]
        assert p.calib_acc == pytest.approx(
            simulate_chain([ChainStage.from_record(r) for r in cal], p.thresholds).acc[0])
        assert p.meets_target == (p.acc * 4000 >= base.correct.sum() - d / 100 * 4000 - 1e-6)
        # chosen thresholds are calibration confidences (or +inf)
        for name, t in zip(p.stages, p.thresholds):
            rec = next(r for r in cpool if r.name == name)
            assert np.isinf(t) or t in rec.conf


def test_front_measured_on_another_split_equals_direct_simulation():
    pool, base = _synthetic(1500, 2, 9, distinct=50)
    cpool, cbase = _synthetic(1500, 2, 10)
    plan = plan_chains(base, pool, calib_base=cbase, calib_pool=cpool, progress=False, grid=40,
                       max_exact_cells=100)
    assert plan.mode == "grid-40+descent"
    stages = {r.name: ChainStage.from_record(r) for r in pool + [base]}
    for p in plan.front:
        ev = simulate_chain([stages[n] for n in p.stages], p.thresholds)
        assert p.acc == pytest.approx(ev.acc[0], abs=1e-12) and p.gmacs == pytest.approx(ev.gmacs[0], rel=1e-12)
        np.testing.assert_allclose(p.answered, ev.answered[0], atol=1e-12)


def test_ci_brackets_the_measured_values():
    pool, base = _synthetic(3000, 2, 4)
    cpool, cbase = _synthetic(3000, 2, 5)
    plan = plan_chains(base, pool, calib_base=cbase, calib_pool=cpool, ci=0.9, draws=200, drops=[1.0, 0.0],
                       progress=False)
    for p in plan.required.values():
        lo, hi = p.ci["acc"]
        assert lo < hi and lo - 0.01 <= p.acc <= hi + 0.01
        lo, hi = p.ci["gmacs"]
        assert lo <= hi and lo * 0.9 <= p.gmacs <= hi * 1.1
        assert p.ci["draws"] == 200 and p.ci["level"] == 0.9


def test_bad_input(tmp_path):
    pool, base = _synthetic(50, 2, 6)
    with pytest.raises(TinySaverError, match="go together"):
        plan_chains(base, pool, calib_base=base)
    with pytest.raises(TinySaverError, match="calibrated mode"):
        plan_chains(base, pool, ci=0.95)
    with pytest.raises(TinySaverError, match="max-stages"):
        plan_chains(base, pool, max_stages=0)
    with pytest.raises(TinySaverError, match="more than once"):
        plan_chains(base, [pool[0], pool[0]])
    short = chain_record("short", 0.1, np.ones(10), np.ones(10), np.zeros(10, dtype=np.int64))
    with pytest.raises(TinySaverError, match="samples"):
        plan_chains(base, [short])
    with pytest.raises(TinySaverError, match="same models"):
        plan_chains(base, pool, calib_base=base, calib_pool=pool[:1])


def _write(make_record, rec, filename):
    return str(make_record(rec.name, rec.conf, rec.pred, rec.label, gmacs=rec.gmacs, filename=filename))


def test_plan_cli_json_markdown_plot(make_record, tmp_path, capsys):
    pool, base = _synthetic(2000, 3, 7)
    cpool, cbase = _synthetic(2000, 3, 8)
    paths = [_write(make_record, r, f"{r.name}_test.npz") for r in pool]
    cpaths = [_write(make_record, r, f"{r.name}_cal.npz") for r in cpool]
    b, cb = _write(make_record, base, "base_test.npz"), _write(make_record, cbase, "base_cal.npz")
    out, md, png = tmp_path / "plan.json", tmp_path / "plan.md", tmp_path / "plan.png"
    assert main(["plan", "--base", b, "--pool", *paths, "--calib-base", cb, "--calib-pool", *cpaths,
                 "--ci", "0.95", "--draws", "100", "--json", str(out), "--markdown", str(md),
                 "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    assert set(data) >= {"base_acc", "base_gmacs", "front", "required", "best_pair", "oracle",
                         "headroom_captured", "mode"}
    assert set(data["required"]) == {"1.0", "0.5", "0.1", "0.0"}
    gm = [p["gmacs"] for p in data["front"]]
    assert gm == sorted(gm)
    assert {"stages", "thresholds", "answered", "acc", "gmacs", "calib_acc", "meets_target", "ci"} <= set(
        data["required"]["0.5"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Oracle" in md.read_text() and "best pair" in capsys.readouterr().out
    # bad input: one stderr line, exit 2, nothing written
    bad = tmp_path / "bad.json"
    assert main(["plan", "--base", b, "--pool", *paths, "--calib-base", cb, "--json", str(bad)]) == 2
    assert not bad.exists()


def test_headroom_above_one_and_uncertified_gains_are_explained():
    from tinysaver.report.plan import plan_markdown

    # nobody is right on samples 2-3: the oracle sends them to the base (10 GMACs), while a chain
    # allowed to lose 25 points answers everything at the saver: cheaper than the oracle
    label = np.zeros(4, dtype=np.int64)
    a = chain_record("a", 1.0, [0.9, 0.9, 0.9, 0.9], [1, 0, 0, 0], label)
    base = chain_record("base", 10.0, np.ones(4), [1, 1, 0, 0], label)
    plan = plan_chains(base, [a], drops=[25.0, 0.0], progress=False)
    assert plan.oracle.gmacs == pytest.approx((1 + 10 + 10 + 10) / 4)
    assert plan.required[25.0].gmacs == pytest.approx(1.0)
    assert plan.headroom_captured[25.0] == pytest.approx((10 - 1) / (10 - 7.75))
    text = plan_markdown(plan)
    assert "Headroom above 100 % (25 pt)" in text
    # a negative drop (a gain) is planned but not certified: the markdown says so
    pool, base = _synthetic(400, 2, 11)
    cpool, cbase = _synthetic(400, 2, 12)
    plan = plan_chains(base, pool, calib_base=cbase, calib_pool=cpool, drops=[-1.0, 1.0], certify=0.1,
                       progress=False)
    assert set(plan.extra["certified"]) == {"1.0"}
    assert "Not certified: -1 pt" in plan_markdown(plan)
