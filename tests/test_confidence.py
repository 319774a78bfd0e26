"""Confidence functions: numpy and torch give the same values; detection semantics."""
from __future__ import annotations

import numpy as np
import pytest

from tinysaver.confidence import CONFIDENCES, build_confidence

LOGITS = np.array([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0], [10.0, -3.0, 9.5]])


def test_max_softmax_margin_entropy_values():
    p = np.exp(LOGITS) / np.exp(LOGITS).sum(1, keepdims=True)
    np.testing.assert_allclose(build_confidence("max_softmax")(LOGITS), p.max(1))
    top = np.sort(p, 1)[:, ::-1]
    np.testing.assert_allclose(build_confidence("margin")(LOGITS), top[:, 0] - top[:, 1])
    np.testing.assert_allclose(build_confidence("neg_entropy")(LOGITS), (p * np.log(p)).sum(1))


@pytest.mark.parametrize("name", ["max_softmax", "margin", "neg_entropy"])
def test_torch_matches_numpy(name):
    torch = pytest.importorskip("torch")
    fn = build_confidence(name)
    np.testing.assert_allclose(fn(torch.tensor(LOGITS)).numpy(), fn(LOGITS), rtol=1e-5, atol=1e-6)


def test_mean_box_score_ignores_low_boxes_and_empty_images_get_zero():
    fn = build_confidence("mean_box_score")
    conf = fn([np.array([0.9, 0.7, 0.04]), np.array([0.05, 0.01]), np.array([])])
    np.testing.assert_allclose(conf, [0.8, 0.05, 0.0])  # a box scoring exactly 0.05 counts (paper: "below 0.05" dropped)
    assert build_confidence("max_box_score")([np.array([0.3, 0.6])])[0] == 0.6
    assert build_confidence("box_count", min_score=0.5)([np.array([0.3, 0.6, 0.9])])[0] == 2


def test_unknown_name_lists_known():
    with pytest.raises(Exception, match="known: .*max_softmax"):
        build_confidence("nope")
    assert "mean_box_score" in list(CONFIDENCES)
