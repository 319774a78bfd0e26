from __future__ import annotations

import os

# Offline by construction: ultralytics must never probe the network or write to ~/.config.
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
_CONFIG = tempfile.mkdtemp(prefix="tinysaver-test-config-")
os.environ.setdefault("YOLO_CONFIG_DIR", _CONFIG)
os.environ.setdefault("MPLCONFIGDIR", _CONFIG)

import numpy as np
import pytest

from tinysaver import Record, save_record


@pytest.fixture
def make_record(tmp_path):
    """Writes a record file from arrays and returns its path."""

    def make(name, conf, pred, label, gmacs=1.0, filename=None, **extra):
        rec = Record(name=name, gmacs=gmacs, conf=np.asarray(conf, dtype=np.float64),
                     pred=np.asarray(pred, dtype=np.int64), label=np.asarray(label, dtype=np.int64),
                     **extra)
        return save_record(tmp_path / (filename or f"{name}.npz"), rec)

    return make
