"""Exit Sequence Network: zero-init = saver, causal mask, eq. (11) by hand, live = simulation on the
records, exact resume, costs, segments, and the exit search against a brute force."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tinysaver import Record
from tinysaver.analysis import ChainStage, simulate_chain
from tinysaver.errors import TinySaverError
from tinysaver.esn import ExitSequence, ExitSequenceNetwork, esn_loss, saver_weights, split_base
from tinysaver.esn.evaluation import live_vs_simulation, stage_names, stage_records
from tinysaver.esn.search import plan_exits
from tinysaver.esn.training import FeatureCache, TrainConfig, build_feature_cache, train_sequence
from tinysaver.models.complexity import count_gmacs
from tinysaver.plugins.timm import create_classifier, eval_transform

from .helpers import fmnist_dataset, stack_inputs

N = 256


@pytest.fixture(scope="module")
def models():
    saver = create_classifier("fmnist_cnn_xxs")
    base = create_classifier("fmnist_cnn_s")
    x, y = stack_inputs(fmnist_dataset("test", N, eval_transform(saver)))
    return saver, base, x, y


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@torch.no_grad()
def test_untrained_esn_is_the_saver_at_every_exit(models):
    saver, base, x, _ = models
    esn = ExitSequenceNetwork(saver, base, (1, 28, 28), dim=16, heads=4, layers=2).eval()
    stages = esn.stage_logits(x)
    assert len(stages) == 4  # saver, 2 exits (all segments but the last), the base's output
    for exit_logits in stages[1:-1]:
        assert torch.equal(exit_logits, saver(x))
    assert torch.equal(stages[-1], base(x))
    feats = esn.features(x)
    trained_form = esn.sequence(feats.saver_logits, feats.saver_feat, feats.exit_feats)
    assert torch.equal(trained_form, saver(x).unsqueeze(1).expand(-1, 2, -1))


@torch.no_grad()
def test_causal_mask_a_later_token_never_changes_an_earlier_exit():
    seq = ExitSequence([6, 5, 7, 3], num_classes=4, dim=16, heads=4, layers=3)
    _randomise(seq)
    g = torch.Generator().manual_seed(1)
    saver_logits, saver_feat = torch.randn(8, 4, generator=g), torch.randn(8, 6, generator=g)
    feats = [torch.randn(8, d, generator=g) for d in (5, 7, 3)]
    before = seq(saver_logits, saver_feat, feats)
    changed = feats[:2] + [feats[2] + 10.0]
    after = seq(saver_logits, saver_feat, changed)
    assert torch.equal(before[:, :2], after[:, :2])  # exits 1 and 2 never see token 3
    assert not torch.allclose(before[:, 2], after[:, 2])
    changed_first = [feats[0] + 10.0] + feats[1:]
    after_first = seq(saver_logits, saver_feat, changed_first)
    assert not torch.allclose(before[:, 0], after_first[:, 0])  # ... but every later exit sees token 1
    assert not torch.allclose(before[:, 2], after_first[:, 2])
    # progressively (one prefix at a time) each exit equals the full masked pass
    progressive = seq.progressive(saver_logits, saver_feat, feats)
    for n, out in enumerate(progressive):
        torch.testing.assert_close(out, before[:, n], rtol=1e-5, atol=1e-5)


def test_eq11_weights_and_loss_by_hand():
    # saver: uniform over 2 classes (max softmax 0.5 -> weight 1); 3:1 odds (max 0.75 -> weight 0.5)
    saver_logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert saver_weights(saver_logits).tolist() == pytest.approx([1.0, 0.5])
    # two exits; sample 0: CE = log 2 at both; sample 1 (label 1, p = 1/4): CE = log 4 at both
    exit_logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[math.log(3.0), 0.0], [math.log(3.0), 0.0]]])
    labels = torch.tensor([0, 1])
    eq11 = esn_loss(exit_logits, labels, saver_logits, "eq11")
    assert eq11.item() == pytest.approx((1.0 * 2 * math.log(2) + 0.5 * 2 * math.log(4)) / 2)
    ce = esn_loss(exit_logits, labels, saver_logits, "ce")
    assert ce.item() == pytest.approx((2 * math.log(2) + 2 * math.log(4)) / 2)
    soft = torch.nn.functional.one_hot(labels, 2).float()  # soft targets (Mixup) reduce to the same
    assert esn_loss(exit_logits, soft, saver_logits, "eq11").item() == pytest.approx(eq11.item())
    with pytest.raises(TinySaverError):
        esn_loss(exit_logits, labels, saver_logits, "focal")


@torch.no_grad()
def test_live_esn_equals_the_simulation_on_its_records(models, tmp_path):
    saver, base, x, y = models
    torch.manual_seed(0)
    esn = ExitSequenceNetwork(saver, base, (1, 28, 28), dim=16, heads=4, layers=1).eval()
    _randomise(esn.sequence, seed=3)
    items = list(zip(x, y.tolist()))
    cache = build_feature_cache(esn, lambda view: items, tmp_path / "cache", batch_size=64, progress=False)
    names = stage_names(esn, "xxs", "s")
    records = stage_records(esn, cache, names, esn.stage_gmacs())
    # the records hold exactly what the stage code gives on the images
    for rec, logits in zip(records, esn.stage_logits(x)):
        assert np.array_equal(rec.pred, logits.argmax(1).numpy())
    for q in (0.3, 0.6):
        # thresholds between two recorded confidences: no sample sits on one
        thresholds = []
        for rec in records[:-1]:
            c = np.unique(rec.conf)
            i = int(q * (len(c) - 1))
            thresholds.append(float((c[i] + c[i + 1]) / 2))
        check = live_vs_simulation(esn, x, records, thresholds, batch_size=100)
        assert check.stage_mismatches == 0 and check.prediction_mismatches == 0
        assert check.live_acc == check.simulated_acc
        assert all(a > 0 for a in check.live_answered)  # every stage answered some samples
        # thresholds *on* recorded confidences (what the grid search chooses): the samples sitting
        # exactly on one exit live as in the records (>=), so the live confidence must equal the
        # recorded one to the bit
        on = [float(np.unique(rec.conf)[int(q * (len(np.unique(rec.conf)) - 1))]) for rec in records[:-1]]
        assert all((rec.conf == t).any() for rec, t in zip(records, on))
        check = live_vs_simulation(esn, x, records, on, batch_size=100)
        assert check.stage_mismatches == 0 and check.prediction_mismatches == 0
    everything_at_base = live_vs_simulation(esn, x, records, [math.inf] * 3, batch_size=100)
    assert everything_at_base.live_answered == [0.0, 0.0, 0.0, 1.0]
    assert everything_at_base.live_acc == pytest.approx((base(x).argmax(1).numpy() == y).mean())


def _synthetic_cache(seed: int = 0, n: int = 96) -> FeatureCache:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (2 * n,), generator=g)
    return FeatureCache(saver_logits=torch.randn(2 * n, 3, generator=g), saver_feat=torch.randn(2 * n, 5, generator=g),
                        exit_feats=[torch.randn(2 * n, 4, generator=g), torch.randn(2 * n, 6, generator=g)],
                        base_logits=torch.randn(2 * n, 3, generator=g),
                        target=torch.nn.functional.one_hot(label, 3).float(), label=label, views=2)


def _sequence() -> ExitSequence:
    torch.manual_seed(0)
    return ExitSequence([5, 4, 6], num_classes=3, dim=8, heads=2, layers=1)


def test_resumed_training_gives_the_same_weights(tmp_path):
    cache = _synthetic_cache()
    cfg = TrainConfig(epochs=3, lr=1e-2, batch_size=32, warmup_epochs=1)
    straight = _sequence()
    log = train_sequence(straight, cache, cfg, tmp_path / "a.pth", progress=False)
    interrupted = _sequence()
    first = train_sequence(interrupted, cache, cfg, tmp_path / "b.pth", progress=False, stop_after_epochs=1)
    assert first["epochs_done"] == 1
    resumed = _sequence()  # a fresh process: everything comes from the checkpoint
    second = train_sequence(resumed, cache, cfg, tmp_path / "b.pth", progress=False)
    assert second["epochs_done"] == 3 and second["history"] == log["history"]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(straight.state_dict().values(), _sequence().state_dict().values()))
    with pytest.raises(TinySaverError):  # a checkpoint of another configuration is refused
        train_sequence(_sequence(), cache, TrainConfig(epochs=3, lr=2e-2, batch_size=32), tmp_path / "b.pth",
                       progress=False)


def test_stage_costs_add_up_to_the_saver_the_base_and_the_sequence(models):
    from torch.utils.flop_counter import FlopCounterMode

    saver, base, x, _ = models
    esn = ExitSequenceNetwork(saver, base, (1, 28, 28), dim=16, heads=4, layers=2)
    gmacs = esn.stage_gmacs()
    assert gmacs[0] == pytest.approx(count_gmacs(saver, (1, 28, 28)))
    feats = esn.features(x[:1])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        esn.sequence.progressive(feats.saver_logits, feats.saver_feat, feats.exit_feats)
    sequence_gmacs = counter.get_total_flops() / 2 / 1e9
    assert sequence_gmacs > 0
    assert sum(gmacs[1:]) == pytest.approx(count_gmacs(base, (1, 28, 28)) + sequence_gmacs, rel=1e-9)


def test_segments_of_the_demo_pool_and_of_a_timm_resnet():
    import timm

    base = create_classifier("fmnist_cnn_m")
    split = split_base(base, (1, 28, 28))
    assert len(split) == 3  # one per resolution: 28, 14, 7 pixels
    resnet = timm.create_model("resnet18", num_classes=10).eval()
    split = split_base(resnet, (3, 64, 64))
    assert len(split) == len(resnet.feature_info)  # stem, layer1..layer4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(split(x), resnet(x))
    with pytest.raises(TinySaverError):
        split_base(resnet, (3, 64, 64), modules=[["conv1", "bn1"], ["layer2"]])  # skips layers


def _brute_force(stages, base_correct, drop):
    grids = [np.append(np.unique(s.conf), np.inf) for s in stages[:-1]]
    best = None
    for t in itertools.product(*grids):
        ev = simulate_chain(stages, list(t))
        if ev.acc[0] * len(stages[0].conf) >= base_correct - drop / 100 * len(stages[0].conf) - 1e-9:
            if best is None or ev.gmacs[0] < best - 1e-12:
                best = float(ev.gmacs[0])
    return best


def test_exit_search_equals_a_brute_force_and_can_leave_an_exit_unused():
    rng = np.random.default_rng(0)
    m = 30
    label = rng.integers(0, 3, m)

    def record(name, gmacs, acc, seed):
        r = np.random.default_rng(seed)
        right = r.random(m) < acc
        pred = np.where(right, label, (label + 1) % 3)
        conf = np.round(np.clip(0.5 * right + 0.5 * r.random(m), 0, 1), 2)
        return Record(name, gmacs, conf, pred, label)

    records = [record("saver", 5.0, 0.7, 1), record("b:exit1", 1.0, 0.8, 2), record("b:exit2", 3.0, 0.85, 3),
               record("b:output", 2.0, 0.95, 4)]
    stages = [ChainStage.from_record(r) for r in records]
    for drop in (5.0, 1.0, 0.0):
        plan = plan_exits(records, records, base_gmacs=9.0, drops=[drop], max_exact_cells=10 ** 7)
        assert plan.mode == "exact"
        point = plan.required[drop]
        want = _brute_force(stages, float(stages[-1].correct.sum()), drop)
        assert point.gmacs == pytest.approx(want)
        assert point.meets_target
        assert point.stages == [r.name for r in records]  # the ESN's order, never re-sorted by cost
    # an exit no sample should use gets +inf
    useless = [records[0], Record("b:exit1", 1.0, np.ones(m), (label + 1) % 3, label), records[2], records[3]]
    plan = plan_exits(useless, useless, base_gmacs=9.0, drops=[0.0], max_exact_cells=10 ** 7)
    assert math.isinf(plan.required[0.0].thresholds[1])
