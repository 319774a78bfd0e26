"""A live 3-stage classification cascade equals the chain simulated from its records, sample by sample
(routing and predictions), and the `tinysaver chain` command reports what the live run measured."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinysaver import Cascade
from tinysaver.analysis import ChainStage, answering_stage, chain_from_records
from tinysaver.cli import main
from tinysaver.models.recording import record_predictions
from tinysaver.plugins.timm import create_classifier, eval_transform

from .helpers import fmnist_dataset, stack_inputs

N = 1000
NAMES = ("fmnist_cnn_xs", "fmnist_cnn_s", "fmnist_cnn_l")  # the demo pool, loaded by name


@torch.no_grad()
def test_live_three_stage_cascade_equals_the_chain_simulation(tmp_path):
    models = [create_classifier(name) for name in NAMES]
    ds = fmnist_dataset("test", N, eval_transform(models[0]))
    paths = [tmp_path / f"{name}.npz" for name in NAMES]
    records = [record_predictions(m, ds, p, name=n, gmacs=g, batch_size=250, progress=False)
               for m, p, n, g in zip(models, paths, NAMES, (0.5, 2.0, 29.0))]
    thresholds = [float(np.quantile(records[0].conf, 0.4)), float(np.quantile(records[1].conf, 0.3))]

    x, y = stack_inputs(ds)
    cascade = Cascade(*models, thresholds=thresholds)
    outs = [cascade(x[i:i + 128]) for i in range(0, N, 128)]  # batches of mixed routing
    stage = torch.cat([o.stage for o in outs]).numpy()
    pred = torch.cat([o.logits for o in outs]).argmax(1).numpy()

    sim_stage = answering_stage([ChainStage.from_record(r) for r in records], np.array([thresholds]))[0]
    np.testing.assert_array_equal(stage, sim_stage)
    assert set(stage.tolist()) == {0, 1, 2}
    sim_pred = np.choose(sim_stage, [r.pred for r in records])
    np.testing.assert_array_equal(pred, sim_pred)

    point = chain_from_records(records, thresholds)
    assert point.answered == [float(np.mean(stage == k)) for k in range(3)]
    assert point.acc == float(np.mean(pred == y))

    out = tmp_path / "chain.json"
    assert main(["chain", "--stages", *map(str, paths), "--thresholds", *map(repr, thresholds),
                 "--json", str(out)]) == 0
    reported = json.loads(out.read_text())
    assert reported["stages"] == list(NAMES) and reported["acc"] == point.acc
    assert reported["gmacs"] == point.gmacs
    # each sample paid the stages it reached
    assert point.gmacs == pytest.approx(0.5 + (1 - point.answered[0]) * 2.0 + point.answered[2] * 29.0)
