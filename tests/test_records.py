"""Record format: round trip, atomic writes, validation."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tinysaver import Record, RecordError, load_record, save_record
from tinysaver.confidence import build_confidence


def test_round_trip_keeps_extras(tmp_path):
    logits = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    conf = build_confidence("max_softmax")(logits)
    rec = Record("m", 0.25, conf, logits.argmax(1), np.arange(6) % 4, num_classes=4, extras={"logits": logits})
    path = save_record(tmp_path / "m.npz", rec)
    back = load_record(path)
    assert back.name == "m" and back.gmacs == 0.25 and back.num_classes == 4
    np.testing.assert_array_equal(back.extras["logits"], logits)
    np.testing.assert_array_equal(back.conf, conf)
    assert back.confidence == "max_softmax"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    rec = Record("m", 1.0, np.ones(2) * 0.5, np.zeros(2, int), np.zeros(2, int))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        save_record(tmp_path / "m.npz", rec)
    assert os.listdir(tmp_path) == []


def test_other_confidence_ranges():
    Record("m", 1.0, np.array([-0.3, 0.0]), np.zeros(2, int), np.zeros(2, int), confidence="neg_entropy")
    with pytest.raises(RecordError, match="neg_entropy confidence must lie in"):
        Record("m", 1.0, np.array([0.3]), np.zeros(1, int), np.zeros(1, int), confidence="neg_entropy")
    # a user's own convention is not range-checked
    Record("m", 1.0, np.array([7.0]), np.zeros(1, int), np.zeros(1, int), confidence="my_score")


def test_negative_gmacs_rejected():
    with pytest.raises(RecordError, match="gmacs"):
        Record("m", -1.0, np.ones(1) * 0.5, np.zeros(1, int), np.zeros(1, int))


def test_written_files_get_normal_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    path = save_record(tmp_path / "m.npz", Record("m", 1.0, np.ones(1) * 0.5, np.zeros(1, int), np.zeros(1, int)))
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_unlabelled_records_load_but_analysis_refuses_them(tmp_path):
    """-1 is the label of unlabelled data (a pipeline compares with the base's top-1 instead): such
    a record loads, but an analysis asks for labels; any other negative class id is refused."""
    path = save_record(tmp_path / "u.npz", Record("u", 1.0, np.full(4, 0.9), np.arange(4), np.full(4, -1)))
    assert (load_record(path).label == -1).all()
    with pytest.raises(RecordError, match="unlabelled samples"):
        load_record(path, labelled=True)
    with pytest.raises(RecordError, match="negative class id -2"):
        Record("x", 1.0, np.full(2, 0.9), np.array([0, 1]), np.array([0, -2]))
    with pytest.raises(RecordError, match="'pred' holds a negative class id -1"):
        Record("x", 1.0, np.full(2, 0.9), np.array([0, -1]), np.array([0, 1]))
