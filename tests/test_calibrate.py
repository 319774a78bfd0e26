"""`tinysaver calibrate`: the 1 − δ guarantee holds empirically, thresholds stay useful, the fixed
sequence stops where it must, the bounds are computed right; bootstrap intervals; the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tinysaver import Record
from tinysaver.analysis import (ChainStage, calibrate_chain, calibrate_pair, fixed_sequence, ltt_pair_threshold,
                                simulate_chain, tradeoff_ci)
from tinysaver.analysis.bounds import _binom_cdf
from tinysaver.cli import main

from .helpers import wsr_ucb_reference

DELTA = 0.1


@pytest.fixture(scope="module")
def population():
    """200k samples; the saver is right more often the more confident it is, the base 92 % of the
    time. The true drop is negative over the top ~30 % and grows below: thresholds matter."""
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.beta(3, 1, n)
    saver = (rng.random(n) < 0.3 + 0.7 * conf ** 2).astype(float)
    base = (rng.random(n) < 0.92).astype(float)
    order = np.argsort(-conf)
    conf_desc = conf[order]
    cum_loss = np.concatenate(([0.0], np.cumsum((base - saver)[order])))

    def true_drop(t):
        """Population accuracy drop (fraction) and exit ratio at thresholds ``t``."""
        exited = np.searchsorted(-conf_desc, -np.asarray(t), side="right")  # count of conf >= t
        return cum_loss[exited] / n, exited / n

    return conf, saver, base, true_drop


def _violations(population, method, drop, n, draws, naive=False):
    conf, saver, base, true_drop = population
    rng = np.random.default_rng(1)
    thresholds = []
    for d in range(draws):
        idx = rng.integers(0, len(conf), n)
        c, s, b = conf[idx], saver[idx], base[idx]
        if naive:  # the lowest threshold whose *empirical* drop is within the target: no guarantee
            order = np.argsort(-c)
            ok = np.flatnonzero(np.cumsum((b - s)[order]) / n <= drop / 100)
            thresholds.append(c[order][ok[-1]] if ok.size else np.inf)
        else:
            thresholds.append(ltt_pair_threshold(c, s, b, drop, DELTA, method, seed=d)[0])
    drops, exits = true_drop(np.array(thresholds))
    return float(np.mean(drops > drop / 100)), float(np.median(exits))


@pytest.mark.parametrize("method, drop, draws", [("wsr", 0.5, 200), ("bernstein", 2.0, 300),
                                                 ("hoeffding-bentkus", 5.0, 300)])
def test_guarantee_holds_and_thresholds_stay_useful(population, method, drop, draws):
    n = 2000
    violation, median_exit = _violations(population, method, drop, n, draws)
    mc_error = math.sqrt(DELTA * (1 - DELTA) / draws)
    assert violation <= DELTA + 3 * mc_error
    assert median_exit > 0.2  # not "never exit"
    # the same draws, choosing on the empirical drop alone, break the target about half the time:
    # the test above can fail
    naive_violation, _ = _violations(population, method, drop, n, draws, naive=True)
    assert naive_violation > 0.3


def test_chain_guarantee_by_data_splitting():
    rng = np.random.default_rng(2)
    big = 200_000
    c1, c2 = rng.beta(3, 1, big), rng.beta(4, 1, big)
    pop = [ChainStage("a", 0.1, c1, (rng.random(big) < 0.3 + 0.7 * c1 ** 2).astype(float)),
           ChainStage("m", 0.4, c2, (rng.random(big) < 0.4 + 0.6 * c2 ** 2).astype(float)),
           ChainStage("B", 2.0, np.ones(big), (rng.random(big) < 0.92).astype(float))]
    draws, n, drop = 50, 1500, 0.5
    chosen = []
    for d in range(draws):
        idx = rng.integers(0, big, n)
        cal = calibrate_chain([ChainStage(s.name, s.gmacs, s.conf[idx], s.correct[idx]) for s in pop], drop, DELTA,
                              seed=d)
        assert cal.extra["split"] == {"search": n // 2, "test": n - n // 2, "seed": d, "search_mode": "exact"}
        chosen.append(cal.thresholds)
    ev = simulate_chain(pop, np.array(chosen))
    violation = np.mean(pop[-1].correct.mean() - ev.acc > drop / 100)
    assert violation <= DELTA + 3 * math.sqrt(DELTA * (1 - DELTA) / draws)
    assert np.median(1 - ev.answered[:, -1]) > 0.2


def test_fixed_sequence_stops_at_the_first_failure():
    # by confidence: 300 agreeing samples, 300 where only the base is right, then 3000 where only
    # the saver is right. The empirical drop over everything is very negative (a bound computed
    # for the lowest threshold alone would pass), but the sequence must stop inside the block of
    # saver errors, after at most drop·n of them.
    conf = np.concatenate([np.linspace(1.0, 0.9, 300), np.linspace(0.89, 0.8, 300), np.linspace(0.79, 0.0, 3000)])
    saver = np.concatenate([np.ones(300), np.zeros(300), np.ones(3000)])
    base = np.concatenate([np.ones(300), np.ones(300), np.zeros(3000)])
    assert (base - saver).mean() < -0.5
    # (Hoeffding-Bentkus is too loose for a 1-point drop on 3,600 samples: it gets 5 points)
    for method, drop in (("wsr", 1.0), ("bernstein", 1.0), ("hoeffding-bentkus", 5.0)):
        t, tested, rejected = ltt_pair_threshold(conf, saver, base, drop, DELTA, method)
        assert 0.8 <= t <= 0.9
        assert ((conf >= t) & (saver < base)).sum() <= drop / 100 * len(conf)
        assert tested == 1 + 300 + 3000 and rejected < 1 + 300
    # a hypothesis that is not rejected ends the sequence even if later ones would be
    rejected = fixed_sequence(lambda sl: np.array([[0.0] * 10, [1.0] * 10, [-1.0] * 10])[sl], 3, 10, 0.0, 0.5,
                              "bernstein")
    assert rejected == 0


def test_nothing_exits_without_evidence():
    # zero allowed drop and a saver that only ever agrees with the base: no evidence of a gain
    conf = np.linspace(0, 1, 500)
    right = np.ones(500)
    cal = calibrate_pair(conf, right, right, 0.0, DELTA)
    assert cal.thresholds == [np.inf] and cal.calib_exit_ratio == 0.0
    assert cal.to_json()["threshold"] == "inf"
    # at drop 0 even a saver better than the base everywhere cannot be certified: the first
    # hypotheses (only agreeing samples exit) carry no evidence of a gain, and the sequence stops
    base = (np.arange(5000) % 4 != 0).astype(float)
    assert calibrate_pair(np.linspace(0, 1, 5000), np.ones(5000), base, 0.0, DELTA).thresholds == [np.inf]
    # with any positive drop it takes everything
    cal = calibrate_pair(np.linspace(0, 1, 5000), np.ones(5000), base, 0.1, DELTA)
    assert cal.thresholds == [0.0] and cal.calib_exit_ratio == 1.0


def test_binomial_cdf():
    n, p = 37, 0.42
    exact = np.cumsum([math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)])
    np.testing.assert_allclose(_binom_cdf(n, p), exact, rtol=1e-10)


def test_tradeoff_ci_brackets_the_measured_point():
    rng = np.random.default_rng(3)

    def records(m):
        label = rng.integers(0, 10, m)
        conf = rng.beta(3, 1, m)
        saver = Record("s", 0.1, conf, np.where(rng.random(m) < 0.3 + 0.7 * conf ** 2, label, label + 1), label)
        base = Record("b", 1.0, rng.random(m), np.where(rng.random(m) < 0.92, label, label + 1), label)
        return saver, base

    (cs, cb), (s, b) = records(3000), records(3000)
    ci = tradeoff_ci(cs, cb, s, b, [1.0, 0.0], level=0.9, draws=300)
    from tinysaver import ExitCurve, tradeoff
    row = tradeoff(ExitCurve.from_records(s, b), [1.0, 0.0], calibration=ExitCurve.from_records(cs, cb))
    for d in (1.0, 0.0):
        lo, hi = ci[d]["acc"]
        assert lo < row.required[d].acc < hi
        lo, hi = ci[d]["gmacs"]
        assert lo < row.required[d].gmacs < hi
        assert ci[d]["grid"] == "exact"


def _write(make_record, name, conf, right, gmacs):
    label = np.zeros(len(conf), dtype=np.int64)
    return str(make_record(name, conf, np.where(np.asarray(right) > 0, label, label + 1), label, gmacs=gmacs))


def test_calibrate_cli(make_record, tmp_path, capsys):
    rng = np.random.default_rng(4)
    m = 3000
    c1, c2 = rng.beta(3, 1, m), rng.beta(4, 1, m)
    a = _write(make_record, "a", c1, rng.random(m) < 0.3 + 0.7 * c1 ** 2, 0.1)
    mid = _write(make_record, "m", c2, rng.random(m) < 0.4 + 0.6 * c2 ** 2, 0.4)
    base = _write(make_record, "B", np.ones(m), rng.random(m) < 0.92, 2.0)
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--base", base, "--saver", a, "--drop", "1", "--delta", "0.1",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"threshold", "drop", "delta", "method", "calib_exit_ratio", "calib_acc", "samples"} <= set(data)
    assert data["method"] == "wsr" and data["samples"] == m and 0 < data["calib_exit_ratio"] < 1
    assert "With probability ≥ 0.9" in capsys.readouterr().out
    assert main(["calibrate", "--stages", a, mid, base, "--drop", "1", "--method", "bernstein",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["thresholds"]) == 2 and data["method"] == "bernstein"
    for argv, message in [(["--drop", "-1"], "--drop"), (["--drop", "1", "--delta", "1"], "--delta"),
                          (["--drop", "1", "--delta", "0"], "--delta")]:
        assert main(["calibrate", "--base", base, "--saver", a, *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["calibrate", "--stages", mid, a, base, "--drop", "1"]) == 2
    assert "increasing cost" in capsys.readouterr().err
    assert main(["calibrate", "--stages", a, base, "--saver", a, "--drop", "1"]) == 2
    assert "either" in capsys.readouterr().err


def test_certify_with_no_usable_saver_gives_the_base_alone(make_record, tmp_path, capsys):
    # every pool member costs more than the base: the plan is the base alone, and so is the
    # certified answer (this used to end in a numpy reshape traceback)
    m = 200
    label = np.zeros(m, dtype=np.int64)
    rng = np.random.default_rng(5)
    paths = {}
    for split in ("test", "cal"):
        right = rng.random(m) < 0.9
        paths[split] = (str(make_record("costly", rng.random(m), np.where(right, label, label + 1), label, gmacs=2.0,
                                        filename=f"costly_{split}.npz")),
                        str(make_record("B", np.ones(m), np.where(rng.random(m) < 0.9, label, label + 1), label,
                                        gmacs=1.0, filename=f"B_{split}.npz")))
    out = tmp_path / "plan.json"
    assert main(["plan", "--base", paths["test"][1], "--pool", paths["test"][0], "--calib-base", paths["cal"][1],
                 "--calib-pool", paths["cal"][0], "--certify", "0.1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["pool"] == [] and data["skipped"][0]["name"] == "costly"
    for drop in ("1.0", "0.0"):
        assert data["certified"][drop]["stages"] == ["B"] and data["certified"][drop]["thresholds"] == []
        assert data["certified"][drop]["gmacs"] == 1.0
    assert "the base alone" in capsys.readouterr().out


def test_bounds_equal_the_published_formulas():
    """Each test rejects ``E[L] > alpha`` exactly when the cited paper's bound says so, on losses in
    {-1, 0, 1} (computed independently here: scipy's binomial, the RCPS code's WSR bound)."""
    from scipy.stats import binom

    from tinysaver.analysis.bounds import _reject_bernstein, _reject_hoeffding_bentkus, _reject_wsr

    rng = np.random.default_rng(6)
    checked = {"wsr": [0, 0], "bernstein": [0, 0], "hoeffding-bentkus": [0, 0]}
    for trial in range(60):
        n = int(rng.integers(50, 3000))
        p_minus, p_plus = rng.uniform(0, 0.1), rng.uniform(0, 0.1)
        loss = rng.choice([-1.0, 0.0, 1.0], n, p=[p_minus, 1 - p_minus - p_plus, p_plus])
        alpha, delta = float(rng.uniform(0, 0.08)), float(rng.choice([0.05, 0.1, 0.2]))
        x, a = (loss + 1) / 2, (alpha + 1) / 2  # rescaled to [0, 1]
        # Maurer & Pontil (2009) Thm 4 on x in [0, 1], mapped back: E L = 2 E x - 1
        ucb_x = x.mean() + math.sqrt(2 * x.var(ddof=1) * math.log(2 / delta) / n) + 7 * math.log(2 / delta) / (
            3 * (n - 1))
        # Bates et al. (2021) RCPS: p = min(exp(-n h1(min(R, a), a)), e * P(Bin(n, a) <= ceil(n R)))
        r = min(x.mean(), a)
        h1 = (r * math.log(r / a) if r > 0 else 0.0) + ((1 - r) * math.log((1 - r) / (1 - a)) if r < 1 else 0.0)
        p_hb = min(math.exp(-n * h1), math.e * binom.cdf(math.ceil(n * x.mean() - 1e-9), n, a))
        expected = {"bernstein": 2 * ucb_x - 1 <= alpha, "hoeffding-bentkus": p_hb <= delta,
                    "wsr": wsr_ucb_reference(x, delta) < a}
        got = {"bernstein": _reject_bernstein(loss[None], alpha, delta)[0],
               "hoeffding-bentkus": _reject_hoeffding_bentkus(loss[None], alpha, delta)[0],
               "wsr": _reject_wsr(loss[None], alpha, delta)[0]}
        for method in expected:
            assert bool(got[method]) == bool(expected[method]), (method, trial)
            checked[method][bool(expected[method])] += 1
    # both outcomes occurred for every method: the comparison could fail either way
    assert all(min(counts) > 0 for counts in checked.values()), checked
