"""Conformal risk control (tinysaver.crc): the expected-drop guarantee holds on populations with a
known truth over many calibration draws, a variant without the finite-sample correction is caught
by the same check, it still lets samples exit, and it agrees with MAPIE (and a hand reference);
our Learn-then-Test bounds agree with MAPIE's on shared cases too."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from tinysaver.analysis import crc
from tinysaver.errors import TinySaverError

from .helpers import wsr_ucb_reference

DRAWS = 1000


# --- populations with a known truth -----------------------------------------------------------------

def _pair_population(gain: bool, size: int = 100_000, seed: int = 0):
    """A finite population (the truth is exact on it; draws with replacement are i.i.d. from it).

    Without ``gain`` the saver is right only where the base is, so the population drop equals the
    population loss and CRC is nearly tight; with it the saver is sometimes right where the base is
    wrong, and the drop is below the loss."""
    rng = np.random.default_rng(seed)
    conf = rng.random(size)
    base = rng.random(size) < 0.92
    saver = base & (rng.random(size) < 0.5 + 0.5 * conf)
    if gain:
        saver |= ~base & (rng.random(size) < 0.5 * conf)
    order = np.argsort(-conf)
    conf_desc = conf[order]
    cum = np.concatenate(([0.0], np.cumsum((base.astype(float) - saver)[order])))

    def truth(t):
        """Population drop (fraction) and exit ratio at thresholds ``t``."""
        exited = np.searchsorted(-conf_desc, -np.asarray(t), side="right")
        return cum[exited] / size, exited / size

    def best_exit(alpha):
        """The largest exit ratio of a threshold whose population drop is within ``alpha``."""
        return np.flatnonzero(cum <= alpha * size).max() / size

    truth.best_exit = best_exit
    return conf, saver.astype(float), base.astype(float), truth


def _pair_draws(population, n, drop, draws=DRAWS, seed=1):
    conf, saver, base, truth = population
    rng = np.random.default_rng(seed)
    thresholds = []
    for _ in range(draws):
        idx = rng.integers(0, len(conf), n)
        thresholds.append(crc.crc_pair_threshold(conf[idx], saver[idx], base[idx], drop).threshold)
    return truth(np.array(thresholds))


def _within_target(drops, alpha):
    """The check: the mean population drop over the draws is within the target up to Monte-Carlo
    error (3 standard errors of the mean)."""
    se = drops.std(ddof=1) / math.sqrt(len(drops))
    return drops.mean() <= alpha + 3 * se, drops.mean(), se


def _no_correction(monkeypatch):
    """The deliberately broken variant: the empirical risk alone, no finite-sample correction."""
    monkeypatch.setattr(crc, "crc_admissible",
                        lambda sums, n, alpha, bound=1.0: np.asarray(sums, dtype=float) / n <= alpha * (1 + 1e-9))


@pytest.mark.parametrize("n, drop", [(100, 10.0), (1000, 1.0)])
def test_pair_expected_drop_within_target_and_broken_variant_caught(monkeypatch, n, drop):
    population = _pair_population(gain=False)
    alpha = drop / 100
    drops, exits = _pair_draws(population, n, drop)
    ok, mean, se = _within_target(drops, alpha)
    assert ok, (mean, se)
    # it still saves: CRC's lower bound E >= α − 2B/(n+1) (continuous confidences), and the typical
    # draw lets most of what the population allows exit
    assert mean >= alpha - 2 / (n + 1) - 3 * se
    assert np.median(exits) > 0.7 * population[3].best_exit(alpha)
    _no_correction(monkeypatch)
    broken, _ = _pair_draws(population, n, drop)
    ok_broken, mean_broken, se_broken = _within_target(broken, alpha)
    assert not ok_broken, (mean_broken, se_broken)


def test_pair_with_gains_keeps_the_drop():
    """The saver sometimes right where the base is wrong: the loss over-counts, the drop stays within."""
    population = _pair_population(gain=True)
    drops, exits = _pair_draws(population, 300, 3.0)
    ok, mean, se = _within_target(drops, 0.03)
    assert ok and mean < 0.03
    assert np.median(exits) > 0.1


def _chain_population(nested: bool, size: int = 50_000, configs: int = 200, seed: int = 2):
    """Two savers and a base; a fixed path of threshold vectors, every threshold going down along it.
    ``nested``: a weaker stage is right only where the stronger ones are (one uniform draw decides),
    so the monotonised loss is exactly the per-sample drop (CRC nearly tight); otherwise independent."""
    rng = np.random.default_rng(seed)
    c1, c2 = rng.random(size), rng.random(size)
    u = rng.random(size)
    draw = (lambda: u) if nested else (lambda: rng.random(size))
    base = draw() < 0.92
    s2 = draw() < 0.92 * (0.6 + 0.4 * c2)
    s1 = draw() < 0.92 * (0.4 + 0.6 * c1) * (0.6 + 0.4 * c2) if nested else draw() < 0.4 + 0.6 * c1
    steps = np.arange(1, configs + 1) / configs
    path = np.stack([1 - 0.8 * steps, 1 - steps], axis=1)       # [K, 2], most conservative first
    stage = np.full((configs, size), 2)
    for k in (1, 0):
        stage[np.array([c1, c2][k])[None, :] >= path[:, k, None]] = k
    correct = np.stack([s1, s2, base]).astype(float)
    answer = correct[stage, np.arange(size)]                      # [K, size]
    drop = base.mean() - answer.mean(axis=1)                      # population drop per configuration
    return answer, base.astype(float), np.concatenate(([0.0], drop)), path


def _chain_draws(population, n, drop, draws=DRAWS, seed=3):
    answer, base, truth, _ = population
    rng = np.random.default_rng(seed)
    chosen = np.empty(draws, dtype=int)
    for d in range(draws):
        idx = rng.integers(0, base.shape[0], n)
        chosen[d] = crc.crc_path(answer[:, idx], base[idx], answer.shape[0], drop).admissible
    return truth[chosen], chosen


def test_chain_expected_drop_within_target_and_broken_variant_caught(monkeypatch):
    population = _chain_population(nested=True)
    n, drop = 200, 5.0
    drops, chosen = _chain_draws(population, n, drop)
    ok, mean, se = _within_target(drops, drop / 100)
    assert ok, (mean, se)
    assert np.median(chosen) >= 20           # configurations well past the base alone are kept
    _no_correction(monkeypatch)
    broken, _ = _chain_draws(population, n, drop)
    assert not _within_target(broken, drop / 100)[0]


def test_chain_non_monotone_loss_is_monotonised_and_keeps_the_drop():
    population = _chain_population(nested=False)
    answer, base = population[0], population[1]
    raw = (base[None, :] > 0) & (answer <= 0)
    # the raw loss is not monotone along the path for some samples: the running max is needed
    assert (np.diff(raw.astype(int), axis=0) < 0).any()
    drops, chosen = _chain_draws(population, 300, 4.0)
    ok, mean, se = _within_target(drops, 0.04)
    assert ok, (mean, se)
    assert np.median(chosen) >= 1


# --- the rule, exactly ------------------------------------------------------------------------------

def _hand_pair(conf, saver, base, alpha):
    """CRC for a pair from its definition, one candidate at a time (independent of the module)."""
    n = len(conf)
    best = math.inf
    for t in sorted(set(conf.tolist()), reverse=True):
        loss = sum(1.0 for c, s, b in zip(conf, saver, base) if c >= t and b == 1 and s == 0)
        if (n / (n + 1)) * (loss / n) + 1 / (n + 1) <= alpha:
            best = t
        else:
            break
    return best


def _random_pair(rng, n):
    conf = np.round(rng.random(n), 2)               # ties included
    base = (rng.random(n) < 0.85).astype(float)
    saver = ((rng.random(n) < 0.4 + 0.6 * conf) & ((base > 0) | (rng.random(n) < 0.3))).astype(float)
    return conf, saver, base


def test_pair_matches_hand_reference_and_path_form():
    rng = np.random.default_rng(4)
    for case in range(40):
        n = int(rng.integers(20, 300))
        alpha = float(rng.uniform(0.01, 0.25))
        conf, saver, base = _random_pair(rng, n)
        got = crc.crc_pair_threshold(conf, saver, base, alpha * 100)
        assert got.threshold == _hand_pair(conf, saver, base, alpha), case
        # the pair is the path of its distinct confidences, highest first
        cands = np.unique(conf)[::-1]
        answer = np.where(conf[None, :] >= cands[:, None], saver[None, :], base[None, :])
        path = crc.crc_path(answer, base, len(cands), alpha * 100)
        assert path.admissible == got.admissible, case
        assert (math.inf if path.admissible == 0 else cands[path.admissible - 1]) == got.threshold


def test_path_in_chunks_equals_whole():
    rng = np.random.default_rng(5)
    answer = (rng.random((300, 50)) < 0.97).astype(float)
    base = np.ones(50)
    whole = crc.crc_path(answer, base, 300, 30.0)
    chunked = crc.crc_path(lambda sl: answer[sl], base, 300, 30.0)
    assert whole == chunked and 0 < whole.admissible < 300
    mono = crc.monotone_loss(answer, base)
    assert (np.diff(mono, axis=0) >= 0).all()
    assert mono[whole.admissible - 1].sum() == pytest.approx(whole.calib_loss * 50)


def test_drop_zero_too_few_samples_and_bad_input():
    rng = np.random.default_rng(6)
    conf, saver, base = _random_pair(rng, 500)
    assert crc.crc_pair_threshold(conf, saver, base, 0.0).threshold == math.inf    # honest: the base alone
    assert crc.min_samples(0.0) is None
    assert crc.min_samples(0.1) == 999 and crc.min_samples(1.0) == 99
    crc.check_samples(999, 0.1)
    crc.check_samples(10, 0.0)
    with pytest.raises(TinySaverError, match="too few .* at least 999"):
        crc.check_samples(998, 0.1)
    for bad in (-0.1, 100.0, 250.0):
        with pytest.raises(TinySaverError, match=r"\[0, 100\)"):
            crc.check_drop(bad)
    # 998 samples at 0.1 pt: the rule cannot admit anything even with zero loss
    assert crc.crc_pair_threshold(np.ones(998), np.ones(998), np.ones(998), 0.1).threshold == math.inf
    assert crc.crc_pair_threshold(np.ones(999), np.ones(999), np.ones(999), 0.1).threshold == 1.0


# --- MAPIE as an independent reference --------------------------------------------------------------

def _mapie_methods():
    pytest.importorskip("mapie")
    from mapie.risk_control import methods
    return methods


def test_pair_agrees_with_mapie_crc():
    m = _mapie_methods()
    rng = np.random.default_rng(7)
    compared = 0
    for case in range(60):
        n = int(rng.integers(30, 2000))
        alpha = float(rng.uniform(0.005, 0.2))
        conf, saver, base = _random_pair(rng, n)
        lambdas = np.append(np.unique(conf), np.inf)            # thresholds, ascending; inf: nothing exits
        risks = crc.pair_loss(saver, base)[:, None] * (conf[:, None] >= lambdas[None, :])
        _, plus = m.get_r_hat_plus(risks, lambdas, "crc", None, None, None)
        if np.isclose(plus, alpha, rtol=0, atol=1e-12).any():
            continue                                            # MAPIE uses <, the paper (and we) <=
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = float(m.find_best_predict_param(lambdas, plus, np.array([alpha]))[0])
        assert crc.crc_pair_threshold(conf, saver, base, alpha * 100).threshold == theirs, case
        compared += 1
    assert compared >= 55


def test_path_agrees_with_mapie_crc():
    m = _mapie_methods()
    answer, base, _, _ = _chain_population(nested=False, size=20_000)
    rng = np.random.default_rng(8)
    for case in range(30):
        idx = rng.integers(0, base.shape[0], int(rng.integers(100, 2000)))
        alpha = float(rng.uniform(0.02, 0.1))
        # configuration 0 is the base alone (loss 0), then the path; MAPIE picks along the index
        risks = np.concatenate([np.zeros((1, len(idx))), crc.monotone_loss(answer[:, idx], base[idx])]).T
        lambdas = np.arange(risks.shape[1], dtype=float)
        _, plus = m.get_r_hat_plus(risks, lambdas, "crc", None, None, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = int(m.find_best_predict_param(lambdas, plus, np.array([alpha]))[0])
        assert crc.crc_path(answer[:, idx], base[idx], answer.shape[0], alpha * 100).admissible == theirs, case


def _ltt_fixed_sequence():
    from tinysaver.analysis.bounds import fixed_sequence
    return fixed_sequence


@pytest.mark.parametrize("method", ["hoeffding-bentkus", "bernstein"])
def test_ltt_bounds_agree_with_mapie(method):
    """One hypothesis H: E[L] > α, L in {-1, 0, 1}; MAPIE's bounds are for [0, 1] losses: x = (L + 1) / 2."""
    m = _mapie_methods()
    fixed_sequence = _ltt_fixed_sequence()
    rng = np.random.default_rng(9)
    compared = rejected = 0
    for case in range(80):
        n = int(rng.integers(200, 5000))
        loss = rng.choice([-1.0, 0.0, 1.0], n, p=rng.dirichlet([1, 8, 1]))
        alpha, delta = float(rng.uniform(0.0, 0.1)), float(rng.choice([0.05, 0.1, 0.2]))
        x, a = (loss + 1) / 2, (alpha + 1) / 2
        if method == "hoeffding-bentkus":
            p = float(m.compute_hoeffding_bentkus_p_value(np.array([x.mean()]), n, a)[0, 0])
            if abs(p - delta) < 1e-9:
                continue
            theirs = p <= delta
        else:
            _, plus = m.get_r_hat_plus(x[:, None], np.array([0.5]), "rcps", "bernstein", delta, None)
            if abs(plus[0] - a) < 1e-9:
                continue
            theirs = bool(plus[0] <= a)
        ours = fixed_sequence(lambda sl: loss[None, :], 1, n, alpha, delta, method) == 1
        assert ours == theirs, (case, n, alpha, delta)
        compared += 1
        rejected += ours
    assert compared >= 75 and 5 <= rejected <= compared - 5     # both answers occur


def test_ltt_wsr_agrees_with_rcps_reference():
    """Our betting test against a port of the RCPS reference code (Bates et al., ``WSR_mu_plus``, an
    upper confidence bound found with brentq). MAPIE's ``wsr`` is not used: it adds the capital
    maxima of two halves of the samples, a different statistic."""
    fixed_sequence = _ltt_fixed_sequence()

    rng = np.random.default_rng(10)
    compared = rejected = 0
    for case in range(60):
        n = int(rng.integers(200, 4000))
        loss = rng.choice([-1.0, 0.0, 1.0], n, p=rng.dirichlet([1, 8, 1]))
        alpha, delta = float(rng.uniform(0.0, 0.1)), 0.1
        mu_plus = wsr_ucb_reference((loss + 1) / 2, delta)
        if abs(mu_plus - (alpha + 1) / 2) < 1e-7:
            continue
        ours = fixed_sequence(lambda sl: loss[None, :], 1, n, alpha, delta, "wsr") == 1
        assert ours == (mu_plus <= (alpha + 1) / 2), (case, n, alpha)
        compared += 1
        rejected += ours
    assert compared >= 55 and 5 <= rejected <= compared - 5


def test_exit_share_family_goes_from_the_base_alone_to_the_end():
    rng = np.random.default_rng(11)
    confs = [rng.random(1000), np.round(rng.random(1000), 1), rng.random(1000)]
    end = np.array([0.8, 0.5, np.inf])
    fam = crc.exit_share_family(confs, end, 16)
    assert fam.shape == (16, 3)
    assert (np.diff(fam[:, :2], axis=0) <= 0).all()           # thresholds only go down
    assert np.isinf(fam[:, 2]).all() and (fam[-1] == end)[:2].all()
    shares = (confs[0][None, :] >= fam[:, :1]).mean(axis=1)
    assert shares[0] == pytest.approx((confs[0] >= 0.8).mean() / 16, abs=2e-3)
    assert crc.exit_share_family(confs, np.full(3, np.inf), 4).shape == (4, 3)


# --- on records: the pair, a chain by data splitting, the planner, the CLI ---------------------------

def _stage_population(size=60_000, seed=12):
    """Two savers and a base as ChainStages over a finite population (nested correctness)."""
    from tinysaver.analysis import ChainStage

    rng = np.random.default_rng(seed)
    c1, c2, u = rng.random(size), rng.random(size), rng.random(size)
    base = u < 0.92
    s2 = u < 0.92 * (0.6 + 0.4 * c2)
    s1 = u < 0.92 * (0.4 + 0.6 * c1) * (0.6 + 0.4 * c2)
    return [ChainStage("a", 0.1, c1, s1.astype(float)), ChainStage("m", 0.4, c2, s2.astype(float)),
            ChainStage("B", 2.0, np.ones(size), base.astype(float))]


def test_chain_by_data_splitting_keeps_the_expected_drop():
    from tinysaver.analysis import ChainStage, crc_calibrate_chain, simulate_chain

    pop = _stage_population()
    rng = np.random.default_rng(13)
    n, drop, draws = 600, 4.0, 200
    chosen = []
    for d in range(draws):
        idx = rng.integers(0, pop[0].num_samples, n)
        cal = crc_calibrate_chain([ChainStage(s.name, s.gmacs, s.conf[idx], s.correct[idx]) for s in pop], drop,
                                  seed=d, family=32)
        assert cal.guarantee == "expected" and cal.extra["split"]["test"] == n - n // 2
        chosen.append(cal.thresholds)
    ev = simulate_chain(pop, np.array(chosen))
    drops = pop[-1].correct.mean() - ev.acc
    ok, mean, se = _within_target(drops, drop / 100)
    assert ok, (mean, se)
    assert np.median(1 - ev.answered[:, -1]) > 0.3        # most draws let many samples exit


def test_pair_and_chain_json_and_the_ltt_json_say_which_guarantee():
    from tinysaver.analysis import calibrate_pair, crc_calibrate_pair

    pop = _stage_population(5000)
    a, b = pop[0], pop[-1]
    cal = crc_calibrate_pair(a.conf, a.correct, b.correct, 2.0, names=("a", "B"))
    data = cal.to_json()
    assert data["guarantee"] == "expected" and data["method"] == "crc" and "delta" not in data
    assert data["configurations_admitted"] > 0 and "averaged over" in data["promise"]
    assert 0 < data["calib_exit_ratio"] < 1 and data["calib_loss"] <= 0.02
    ltt = calibrate_pair(a.conf, a.correct, b.correct, 2.0, 0.1).to_json()
    assert ltt["guarantee"] == "high-probability" and ltt["delta"] == 0.1 and "hypotheses_rejected" in ltt
    assert ltt["promise"].startswith("with probability >= 0.9")
    with pytest.raises(TinySaverError, match="too few"):
        crc_calibrate_pair(a.conf[:50], a.correct[:50], b.correct[:50], 1.0)
    assert math.isinf(crc_calibrate_pair(a.conf, a.correct, b.correct, 0.0).thresholds[0])


def test_plan_certifies_both_kinds(make_record, tmp_path, capsys):
    import json

    from tinysaver.analysis import plan_chains
    from tinysaver.cli import main
    from tinysaver.report.plan import plan_markdown
    from tests.test_descent import _ladder_pool

    pool, base = _ladder_pool(1200, 5, savers=3)
    cpool, cbase = _ladder_pool(1200, 6, savers=3)
    plan = plan_chains(base, pool, calib_base=cbase, calib_pool=cpool, max_stages=4, drops=[2.0, 0.1, 0.0],
                       certify=0.1, certify_expected=True, pair_grid=32, progress=False)
    expected = plan.extra["certified_expected"]
    assert set(expected) == {"2.0", "0.1", "0.0"} and set(plan.extra["certified"]) == set(expected)
    assert expected["2.0"]["guarantee"] == "expected" and len(expected["2.0"]["stages"]) > 1
    for drop in ("0.1", "0.0"):            # 600 test-half samples cannot certify 0.1 pt (needs 999); 0 never
        assert expected[drop]["stages"] == ["base"] and "why" in expected[drop]
    md = plan_markdown(plan)
    assert "Certified (Learn then Test" in md and "Certified on average (conformal risk control" in md

    def write(rec, filename):
        return str(make_record(rec.name, rec.conf, rec.pred, rec.label, gmacs=rec.gmacs, filename=filename))

    args = ["plan", "--base", write(base, "base_test.npz"), "--pool", *[write(r, f"{r.name}_t.npz") for r in pool],
            "--calib-base", write(cbase, "base_cal.npz"), "--calib-pool",
            *[write(r, f"{r.name}_c.npz") for r in cpool], "--max-stages", "3", "--pair-grid", "32"]
    out = tmp_path / "plan.json"
    assert main(args + ["--drops", "2", "--certify-method", "crc", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "certified" not in data and data["certified_expected"]["2.0"]["method"] == "crc"
    assert main(args + ["--drops", "2", "--certify", "0.1", "--certify-method", "wsr", "crc", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["certified"]["2.0"]["guarantee"] == "high-probability" and "certified_expected" in data
    capsys.readouterr()
    for extra, message in [(["--drops", "2", "--certify", "0.1", "--certify-method", "crc"], "takes none"),
                           (["--drops", "2", "--certify", "0.1", "--certify-method", "wsr", "bernstein"], "one"),
                           (["--drops", "0.05", "--certify-method", "crc"], "too few")]:
        assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_calibrate_cli_expected(make_record, tmp_path, capsys):
    import json

    from tinysaver.cli import main

    pop = _stage_population(3000)
    label = np.zeros(3000, dtype=np.int64)
    paths = [str(make_record(s.name, s.conf, np.where(s.correct > 0, label, label + 1), label, gmacs=s.gmacs))
             for s in pop]
    a, m, b = paths
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--saver", a, "--base", b, "--drop", "2", "--guarantee", "expected",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conformal risk control" in text and "Averaged over the draw" in text
    data = json.loads(out.read_text())
    assert data["guarantee"] == "expected" and 0 < data["calib_exit_ratio"] < 1
    assert main(["calibrate", "--stages", a, m, b, "--drop", "2", "--guarantee", "expected",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["thresholds"]) == 2 and data["split"]["test"] == 1500
    assert main(["calibrate", "--saver", a, "--base", b, "--drop", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["guarantee"] == "high-probability"
    capsys.readouterr()
    for argv, message in [(["--drop", "100"], "[0, 100)"), (["--drop", "-1"], "[0, 100)"),
                          (["--drop", "1", "--delta", "0.1"], "--delta"), (["--drop", "1", "--method", "wsr"], "--method"),
                          (["--drop", "0.01"], "too few")]:
        assert main(["calibrate", "--saver", a, "--base", b, "--guarantee", "expected", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["calibrate", "--saver", a, "--base", b, "--guarantee", "expected", "--drop", "0"]) == 0
    assert "nothing exits" in capsys.readouterr().out
