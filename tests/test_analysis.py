"""The exact analysis: hand-computed cases and property tests against a brute-force reference."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinysaver import (Record, exit_curve, match_point, rank_savers, tradeoff,
                       tradeoff_from_records)
from tinysaver.errors import TinySaverError

from .brute_force import brute_force


def test_ties_exit_together():
    curve = exit_curve([0.9, 0.8, 0.8, 0.3], [1, 1, 0, 0], [1, 0, 1, 1], 1.0, 10.0)
    assert curve.n_exit.tolist() == [0, 1, 3, 4]
    assert curve.threshold[1:].tolist() == [0.9, 0.8, 0.3]
    assert curve.threshold[0] > 0.9
    # at t = 0.8 both tied samples exit: saver 2 of 3 right, base 2 of 3 right
    assert curve.saver_correct[2] == 2 and curve.base_correct[2] == 2
    m = match_point(curve)
    assert m.r_match == 0.75 and m.threshold == 0.8
    assert m.delta_c == pytest.approx(0.1 - 0.75)


def test_all_exit_when_saver_better_everywhere():
    curve = exit_curve([0.6, 0.5, 0.4], [1, 1, 1], [0, 1, 0], 1.0, 4.0)
    m = match_point(curve)
    assert m.r_match == 1.0 and m.threshold == 0.4
    row = tradeoff(curve)
    # every drop (even 0) is met with all samples exiting: cost C_S only
    for point in row.required.values():
        assert point.exit_ratio == 1.0 and point.gmacs == 1.0
    assert row.max_performance.acc == 1.0 and row.max_performance.gmacs == 1.0


def test_none_exit_and_r_match_zero():
    # the most confident sample is wrong for the saver and right for the base
    curve = exit_curve([0.99, 0.5], [0, 0], [1, 1], 2.0, 4.0)
    m = match_point(curve)
    assert m.r_match == 0.0 and m.index == 0 and m.threshold > 0.99
    assert m.delta_c == pytest.approx(0.5)
    row = tradeoff(curve)
    zero = row.required[0.0]
    assert zero.exit_ratio == 0.0 and zero.gmacs == 6.0  # C_S + C_B: nothing exits
    assert zero.acc == 1.0


def test_drop_allows_exactly_the_right_number_of_errors():
    # 1000 samples, base all right; saver wrong on its 2 least confident: a 0.1-pt drop allows
    # exactly one error, so the cheapest point lets 999 samples exit.
    m = 1000
    conf = np.linspace(1.0, 0.001, m)
    sc = np.ones(m)
    sc[-2:] = 0
    curve = exit_curve(conf, sc, np.ones(m), 1.0, 10.0)
    row = tradeoff(curve, drops=[0.1, 0.2, 0.0])
    assert row.required[0.1].exit_ratio == 0.999
    assert row.required[0.2].exit_ratio == 1.0
    assert row.required[0.0].exit_ratio == 0.998


def test_negative_drop_unreachable_is_none():
    curve = exit_curve([0.9, 0.1], [0, 0], [1, 1], 1.0, 2.0)
    row = tradeoff(curve, drops=[-5.0])
    assert row.required[-5.0] is None
    assert row.to_json()["required"]["-5.0"] is None


def test_index_at_matches_direct_count():
    rng = np.random.default_rng(0)
    conf = rng.integers(0, 20, 200) / 20
    curve = exit_curve(conf, rng.integers(0, 2, 200), rng.integers(0, 2, 200), 1, 2)
    ts = np.array([-1, 0, 0.05, 0.33, 0.5, 0.95, 1.0, 2.0])
    assert curve.n_exit[curve.index_at(ts)].tolist() == [int((conf >= t).sum()) for t in ts]


def test_calibrated_mode_measures_on_test_split():
    calib = exit_curve([0.9, 0.8, 0.7, 0.6], [1, 1, 1, 0], [1, 1, 1, 1], 1.0, 10.0)
    test = exit_curve([0.95, 0.75, 0.65, 0.5], [0, 1, 1, 1], [1, 1, 1, 1], 1.0, 10.0)
    row = tradeoff(test, drops=[0.0], calibration=calib)
    p = row.required[0.0]
    assert p.threshold == 0.7  # chosen on calib: the first three exit there at no loss
    assert p.calib_acc == 1.0
    # on test, 0.95 (saver wrong) and 0.75 (right) exit: half the samples, accuracy 3/4
    assert p.exit_ratio == 0.5 and p.acc == 0.75 and p.gmacs == pytest.approx(1 + 0.5 * 10)
    assert row.mode == "calibrated"


def test_rank_savers_sorted_by_delta_c():
    label = np.array([0, 1, 0, 1])
    base = Record("base", 10.0, np.full(4, 0.9), label.copy(), label)
    good = Record("good", 1.0, np.array([0.9, 0.8, 0.7, 0.6]), label.copy(), label)
    bad = Record("bad", 5.0, np.array([0.9, 0.8, 0.7, 0.6]), 1 - label, label)
    ranking = rank_savers(base, [bad, good])
    assert [s.saver for s in ranking] == ["good", "bad"]
    assert ranking[0].delta_c == pytest.approx(0.1 - 1.0) and ranking[0].compresses
    assert ranking[1].r_match == 0.0 and not ranking[1].compresses


def test_bad_arrays_rejected():
    with pytest.raises(TinySaverError):
        exit_curve([0.1, np.nan], [1, 1], [1, 1], 1, 1)
    with pytest.raises(TinySaverError):
        exit_curve([0.1], [1, 1], [1, 1], 1, 1)
    with pytest.raises(TinySaverError):
        tradeoff_from_records(Record("s", 1, np.ones(1), np.ones(1, int), np.ones(1, int)),
                              Record("b", 1, np.ones(1), np.ones(1, int), np.ones(1, int)),
                              calib_saver=Record("s", 1, np.ones(1), np.ones(1, int), np.ones(1, int)))


samples = st.integers(min_value=1, max_value=60).flatmap(lambda m: st.tuples(
    st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0]) | st.floats(0, 1), min_size=m, max_size=m),
    st.lists(st.booleans(), min_size=m, max_size=m),
    st.lists(st.booleans(), min_size=m, max_size=m),
    st.floats(0.01, 5.0), st.floats(0.5, 50.0)))


@settings(max_examples=300, deadline=None)
@given(samples)
def test_matches_brute_force_on_every_threshold(case):
    conf, sc, bc, cs, cb = case
    drops = [1.0, 0.5, 0.1, 0.0, 3.0]
    ref = brute_force(conf, sc, bc, cs, cb, drops)
    curve = exit_curve(conf, sc, bc, cs, cb)
    # every distinct threshold, each with the same exit ratio, accuracy and cost
    ref_points = sorted(ref["points"], key=lambda p: p["r"])
    assert len(ref_points) == len(curve.n_exit)
    np.testing.assert_allclose(curve.exit_ratio, [p["r"] for p in ref_points])
    np.testing.assert_allclose(curve.system_acc, [p["acc"] for p in ref_points])
    np.testing.assert_allclose(curve.expected_gmacs, [p["cost"] for p in ref_points])
    m = match_point(curve)
    assert m.r_match == pytest.approx(ref["r_match"])
    assert m.delta_c == pytest.approx(ref["delta_c"])
    row = tradeoff(curve, drops)
    for d in drops:
        assert row.required[d].gmacs == pytest.approx(ref["required"][d]["cost"])
        assert row.required[d].acc == pytest.approx(ref["required"][d]["acc"])
    assert row.max_performance.acc == pytest.approx(ref["max_perf"]["acc"])
    assert row.max_performance.gmacs == pytest.approx(ref["max_perf"]["cost"])
    # the reported threshold really produces the reported point
    for p in list(row.required.values()) + [row.max_performance]:
        exited = np.asarray(conf) >= p.threshold
        assert exited.mean() == pytest.approx(p.exit_ratio)
