"""The live cascade: per-sample routing, = saver at t=0, = base above 1, = simulation from records."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tinysaver import Cascade
from tinysaver.routing import Stage
from tinysaver.models.recording import record_predictions
from tinysaver.plugins.timm import create_classifier, eval_transform

from .helpers import fmnist_dataset, stack_inputs, weights

N = 512


@pytest.fixture(scope="module")
def pair():
    saver = create_classifier("fmnist_cnn_xs", weights("fmnist_cnn_xs"))
    base = create_classifier("fmnist_cnn_m", weights("fmnist_cnn_m"))
    x, y = stack_inputs(fmnist_dataset("test", N, eval_transform(saver)))
    return saver, base, x, y


def _run(cascade, x, batch=128):
    outs = [cascade(x[i:i + batch]) for i in range(0, len(x), batch)]
    return (torch.cat([o.logits for o in outs]), torch.cat([o.stage for o in outs]),
            torch.cat([o.confidence for o in outs]))


@torch.no_grad()
def test_threshold_zero_is_saver_and_above_one_is_base(pair):
    saver, base, x, _ = pair
    cascade = Cascade(saver, base, threshold=0.0)
    logits, stage, _ = _run(cascade, x)
    assert (stage == 0).all()
    assert torch.equal(logits, torch.cat([saver(x[i:i + 128]) for i in range(0, N, 128)]).float())
    cascade.threshold = 1.01  # changed at run time
    logits, stage, _ = _run(cascade, x)
    assert (stage == 1).all()
    assert torch.equal(logits.argmax(1), torch.cat([base(x[i:i + 128]) for i in range(0, N, 128)]).argmax(1))


@torch.no_grad()
def test_live_cascade_equals_simulation_from_records(pair, tmp_path):
    saver, base, x, y = pair
    ds_s = fmnist_dataset("test", N, eval_transform(saver))
    ds_b = fmnist_dataset("test", N, eval_transform(base))
    rs = record_predictions(saver, ds_s, tmp_path / "s.npz", name="s", gmacs=1, batch_size=128, progress=False)
    rb = record_predictions(base, ds_b, tmp_path / "b.npz", name="b", gmacs=2, batch_size=128, progress=False)
    for t in (np.quantile(rs.conf, 0.3), np.median(rs.conf), np.quantile(rs.conf, 0.8)):
        cascade = Cascade(saver, base, threshold=float(t))
        logits, stage, conf = _run(cascade, x)
        sim_exit = rs.conf >= t
        assert np.array_equal(stage.numpy() == 0, sim_exit)
        sim_pred = np.where(sim_exit, rs.pred, rb.pred)
        assert np.array_equal(logits.argmax(1).numpy(), sim_pred)
        assert (logits.argmax(1).numpy() == y).mean() == (sim_pred == y).mean()
        assert 0 < sim_exit.mean() < 1


@torch.no_grad()
def test_per_stage_inputs_and_base_preprocess(pair):
    saver, base, x, _ = pair
    seen = []
    cascade = Cascade(saver, base, threshold=0.9, base_preprocess=lambda t: seen.append(len(t)) or t)
    x_base = x.clone()
    out = cascade(x[:64], x_base[:64])
    assert seen == [int((out.stage == 1).sum())]  # the base saw exactly the escalated samples


def test_works_under_torch_compile_without_recompiling(pair):
    """A new threshold, and a batch where every sample exits at the first stage, must not recompile:
    the routing runs eagerly, the models compiled (dynamic batch)."""
    import torch._dynamo

    saver, base, x, _ = pair
    x = x[:128]
    with torch.no_grad():
        conf = torch.softmax(saver(x), 1).max(1).values.double()
    # Thresholds whose base sub-batches stay in one dynamic-shape range (16..127 samples): torch
    # may specialise on size ranges, which is not what this test is about.
    t_warm, *t_new = (float(torch.quantile(conf, q)) for q in (0.5, 0.3, 0.7))
    from torch._dynamo.testing import CompileCounterWithBackend

    cascade = Cascade(saver, base, threshold=t_warm)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(cascade, dynamic=True, backend=counter)
    torch._dynamo.reset()
    with torch.no_grad():
        # First call: saver and base share SmallConvNet.forward's code, so it is compiled twice
        # (once per model); that is the only compilation allowed.
        eager, fast = cascade(x), compiled(x)
        assert torch.equal(eager.stage, fast.stage)
        torch.testing.assert_close(eager.logits, fast.logits, rtol=1e-4, atol=1e-4)
    # The models themselves were compiled (the routing frames are kept out of torch.compile, the
    # frames they call are not): both models' convolutions are in the captured graphs.
    convs = sum("conv2d" in str(node.target) for g in counter.graphs for node in g.graph.nodes)
    assert convs >= sum(isinstance(m, torch.nn.Conv2d) for m in (*saver.modules(), *base.modules())), convs
    frames = counter.frame_count
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for t in t_new:  # no rebuild, no recompile
            cascade.threshold = t
            eager, fast = cascade(x), compiled(x)
            assert torch.equal(eager.stage, fast.stage)
            assert 16 <= int((eager.stage == 1).sum()) < 128  # the base ran on a real sub-batch
        cascade.threshold = 0.0  # everything exits at the saver: the base does not run at all
        fast = compiled(x)
        assert (fast.stage == 0).all()
    assert counter.frame_count == frames  # nothing new compiled either


@torch.no_grad()
def test_three_stage_cascade_routes_per_sample(pair):
    saver, base, x, _ = pair
    middle = create_classifier("fmnist_cnn_s", weights("fmnist_cnn_s"))
    t1, t2 = 0.95, 0.8
    out = Cascade(saver, middle, base, thresholds=[t1, t2])(x)
    c1 = torch.softmax(saver(x), 1).max(1).values.double()
    c2 = torch.softmax(middle(x), 1).max(1).values.double()
    expected = torch.where(c1 >= t1, 0, torch.where(c2 >= t2, 1, 2))
    assert torch.equal(out.stage, expected)
    assert set(out.stage.tolist()) == {0, 1, 2}
    for k, model in enumerate((saver, middle, base)):
        rows = out.stage == k
        assert torch.equal(out.logits[rows].argmax(1), model(x[rows]).argmax(1))
    # a sample's answer does not depend on its batch
    alone = Cascade(saver, middle, base, thresholds=[t1, t2])(x[7:8])
    assert int(alone.stage) == int(out.stage[7])


def test_bad_cascade_arguments_are_clear(pair):
    saver, base, _, _ = pair
    with pytest.raises(ValueError, match="at least two models"):
        Cascade(saver)
    with pytest.raises(ValueError, match="3 stages need 2 thresholds"):
        Cascade(saver, base, base, thresholds=[0.5])
    with pytest.raises(ValueError, match="NaN"):
        Cascade(saver, base, threshold=float("nan"))
    with pytest.raises(ValueError, match="3 stages need thresholds"):
        Cascade(saver, base, base)  # no silent default leaving the middle stage idle
    cascade = Cascade(saver, base, threshold=0.5)
    with pytest.raises(ValueError, match="NaN"):
        cascade.threshold = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cascade.thresholds = [float("nan")]
    assert cascade.threshold == 0.5
    with pytest.raises(ValueError, match="not a number"):
        cascade.thresholds = [True]  # float(True) == 1.0 would pass silently
    with pytest.raises(ValueError, match="NaN"):
        Stage(saver, threshold=float("nan"))  # the routing core's own stage, used by every runtime


def test_infinite_threshold_lets_nothing_exit_even_an_infinite_confidence():
    from tinysaver.routing import exit_mask

    conf = torch.tensor([float("inf"), 1.0, 0.2])
    assert not exit_mask(conf, float("inf")).any()
    assert not exit_mask(conf.numpy(), float("inf")).any()
    assert exit_mask(conf, torch.tensor(1.0, dtype=torch.float64)).tolist() == [True, True, False]


def test_routing_imported_before_torch_still_runs_eagerly_under_compile():
    """tinysaver.runtime imports the routing core without torch; a torch cascade loaded afterwards
    must still keep the routing frames out of torch.compile (no routing frame compiled, none
    recompiled when the threshold changes or everything exits)."""
    import subprocess
    import sys

    code = """
import tinysaver.runtime, sys
assert "torch" not in sys.modules
import torch
from torch._dynamo.testing import CompileCounter
from tinysaver import Cascade
from tinysaver.routing import Stage
torch.manual_seed(0)
c = Cascade(torch.nn.Linear(8, 10), torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)),
            threshold=0.3)
counter = CompileCounter()
g = torch.compile(c, backend=counter, dynamic=True)
x = torch.randn(64, 8)
with torch.no_grad():
    g(x)
    first = counter.frame_count
    for t in (0.25, 0.35, 0.0, 2.0):
        c.threshold = t
        assert torch.equal(c(x).stage, g(x).stage)
print(first, counter.frame_count)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, after = map(int, out.stdout.split())
    assert after == first  # nothing compiled again: no routing frame was traced
