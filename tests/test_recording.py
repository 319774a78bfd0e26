"""Recording: resumed and 2-process (torchrun, gloo) recordings are identical to a plain one."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tinysaver import load_record
from tinysaver.cli import main
from tinysaver.errors import TinySaverError
from tinysaver.models.recording import SeededItems, record_predictions
from tinysaver.plugins.timm import create_classifier, train_transform

from .helpers import fmnist_dataset, weights

ARGS = ["record", "--model", "fmnist_cnn_xs", "--weights", weights("fmnist_cnn_xs"), "--data", "fashion_mnist",
        "--split", "test", "--limit", "600", "--batch-size", "64", "--augment"]


def _same(a, b):
    for key in ("conf", "pred", "label"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.name == b.name and a.gmacs == b.gmacs


def _record(out, stop=None, seed=0):
    model = create_classifier("fmnist_cnn_xs", weights("fmnist_cnn_xs"))
    ds = SeededItems(fmnist_dataset("test", 600, train_transform(model)), seed)
    return record_predictions(model, ds, out, name="xs", gmacs=0.1, batch_size=64, progress=False,
                              stop_after_batches=stop, extra_meta={"seed": seed})


def test_resumed_recording_equals_plain(tmp_path):
    plain = _record(tmp_path / "plain.npz")
    assert _record(tmp_path / "resumed.npz", stop=4) is None
    assert len(list((tmp_path / "resumed.npz.partial").glob("batch*.npz"))) == 4
    assert not (tmp_path / "resumed.npz").exists()
    resumed = _record(tmp_path / "resumed.npz")
    _same(plain, resumed)
    assert not (tmp_path / "resumed.npz.partial").exists()
    assert plain.accuracy > 0.5  # a real model on real data


def test_resume_with_other_settings_is_refused(tmp_path):
    _record(tmp_path / "r.npz", stop=2)
    with pytest.raises(TinySaverError, match="other settings \\(seed\\)"):
        _record(tmp_path / "r.npz", seed=1)


def test_augmentation_is_seeded_per_sample(tmp_path):
    a, b, c = _record(tmp_path / "a.npz"), _record(tmp_path / "b.npz"), _record(tmp_path / "c.npz", seed=1)
    _same(a, b)
    assert not np.array_equal(a.conf, c.conf)


def test_two_process_torchrun_equals_single_process(tmp_path):
    single = tmp_path / "single.npz"
    assert main(ARGS + ["--out", str(single)]) == 0
    multi = tmp_path / "multi.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "tinysaver.cli", *ARGS, "--out", str(multi)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same(load_record(single), load_record(multi))
