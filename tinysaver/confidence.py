"""Confidence functions: how sure the saver is about one input.

A sample exits at the saver when ``confidence >= threshold``. Each function is registered in
:data:`CONFIDENCES` with the range its values live in, so records can be checked (a "max-softmax"
confidence of 1.3 means the record holds logits or garbage, not probabilities).

Classification functions take **logits** ``[N, C]`` (what timm/torchvision models return) as a numpy
array or a torch tensor and return ``[N]`` of the same kind, so the same registered function serves
the numpy analysis and the live torch cascade. Detection functions take one array of box scores per
image.

Add your own::

    from tinysaver.confidence import CONFIDENCES, ConfidenceFn

    @CONFIDENCES.register("top5_mass")
    class Top5Mass(ConfidenceFn):
        value_range = (0.0, 1.0)
        def __call__(self, logits):
            ...

:data:`CONFIDENCES` is a plugin table like the stage types and datasets
(:mod:`tinysaver.registry`): a name it does not hold loads the plugins first, so a third-party
package adds a confidence function by name by listing the module that registers it under the
``tinysaver.plugins`` entry-point group; ``--confidence NAME`` of the commands then finds it.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np

from .registry import Registry

CONFIDENCES: Registry = Registry("confidence function", plugins=True)

#: Detection confidences ignore boxes scoring *below* this (paper 4.5: "we filter out boxes with
#: scores below 0.05"); a box scoring exactly 0.05 counts.
MIN_BOX_SCORE = 0.05


def _is_torch(x: Any) -> bool:
    # Checked by module name so that importing this file never imports torch.
    return type(x).__module__.startswith("torch")


def _softmax(logits: Any) -> Any:
    if _is_torch(logits):
        return logits.float().softmax(dim=-1)
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _top2(probs: Any) -> Tuple[Any, Any]:
    if _is_torch(probs):
        top = probs.topk(2, dim=-1).values
        return top[..., 0], top[..., 1]
    part = -np.partition(-probs, 1, axis=-1)
    return part[..., 0], part[..., 1]


class ConfidenceFn:
    """Base class: a callable with the closed range its values lie in (for record validation)."""

    #: (low, high) bounds every value must respect; ``None`` for an open side.
    value_range: Tuple[float | None, float | None] = (None, None)
    #: what it reads: ``classification`` (logits) or ``detection`` (box scores per image)
    kind = "classification"

    def __call__(self, outputs: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@CONFIDENCES.register("max_softmax")
class MaxSoftmax(ConfidenceFn):
    """Highest class probability, the paper's confidence (eq. 7)."""

    value_range = (0.0, 1.0)

    def __call__(self, logits: Any) -> Any:
        probs = _softmax(logits)
        return probs.max(dim=-1).values if _is_torch(probs) else probs.max(axis=-1)


@CONFIDENCES.register("margin")
class Margin(ConfidenceFn):
    """Top-1 minus top-2 probability: low when two classes compete."""

    value_range = (0.0, 1.0)

    def __call__(self, logits: Any) -> Any:
        first, second = _top2(_softmax(logits))
        return first - second


@CONFIDENCES.register("neg_entropy")
class NegEntropy(ConfidenceFn):
    """Negative entropy of the class distribution (nats): 0 for a one-hot prediction."""

    value_range = (None, 0.0)

    def __call__(self, logits: Any) -> Any:
        probs = _softmax(logits)
        if _is_torch(probs):
            return (probs * probs.clamp_min(1e-30).log()).sum(dim=-1)
        return (probs * np.log(np.maximum(probs, 1e-30))).sum(axis=-1)


@CONFIDENCES.register("mean_box_score")
class MeanBoxScore(ConfidenceFn):
    """Mean score of the boxes scoring at least ``min_score`` (paper 4.5); 0 when there is none.

    An image without a confident box gets confidence 0, so it exits only at threshold 0 and
    otherwise goes to the base model.

    Args:
        min_score: Boxes scoring below this are ignored (:data:`MIN_BOX_SCORE`, 0.05 as in the
            paper); a box scoring exactly ``min_score`` counts. Compared in float64.
    """

    value_range = (0.0, 1.0)
    kind = "detection"
    #: how the kept scores of one image become its confidence
    reduce = staticmethod(np.mean)

    def __init__(self, min_score: float = MIN_BOX_SCORE) -> None:
        self.min_score = float(min_score)

    def __call__(self, scores_per_image: Sequence[Any]) -> np.ndarray:
        out = np.zeros(len(scores_per_image), dtype=np.float64)
        for i, scores in enumerate(scores_per_image):  # one small array per image
            s = _as_numpy(scores)
            kept = s[s >= self.min_score]
            out[i] = self.reduce(kept) if kept.size else 0.0
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_score={self.min_score})"


@CONFIDENCES.register("max_box_score")
class MaxBoxScore(MeanBoxScore):
    """Highest box score of at least ``min_score``; 0 when there is none."""

    reduce = staticmethod(np.max)


@CONFIDENCES.register("box_count")
class BoxCount(MeanBoxScore):
    """Number of boxes scoring at least ``min_score``: for savers reliable on sparse scenes only."""

    value_range = (0.0, None)
    reduce = staticmethod(np.size)


@CONFIDENCES.register("topk_mean_box_score")
class TopKMeanBoxScore(MeanBoxScore):
    """Mean of the ``k`` highest box scores of at least ``min_score`` (all of them when fewer); 0
    when there is none. Between ``max_box_score`` (k = 1) and ``mean_box_score`` (k = all): a
    crowded image is judged by its surest boxes, not diluted by its many weak ones.

    Args:
        min_score: Boxes scoring below this are ignored (a box scoring exactly this counts).
        k: How many of the highest scores are averaged.
    """

    def __init__(self, min_score: float = MIN_BOX_SCORE, k: int = 3) -> None:
        super().__init__(min_score)
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)

    def reduce(self, kept: np.ndarray) -> float:
        return float(np.sort(kept)[-self.k:].mean())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_score={self.min_score}, k={self.k})"


@CONFIDENCES.register("box_score_certainty")
class BoxScoreCertainty(MeanBoxScore):
    """One minus the mean binary entropy (bits) of the box scores of at least ``min_score``: 1 when
    every kept box is scored 0 or 1, 0 when every one is scored 0.5; 0 when there is none (the
    score-entropy signal: sure either way, object or background)."""

    def reduce(self, kept: np.ndarray) -> float:
        p = np.clip(kept, 1e-12, 1 - 1e-12)
        entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        return float(1.0 - entropy.mean())


def detection_confidences() -> list:
    """Names of the registered detection confidences (they read one array of box scores per image)."""
    return [name for name in CONFIDENCES.names() if getattr(CONFIDENCES.get(name), "kind", "") == "detection"]


def _as_numpy(x: Any) -> np.ndarray:
    if _is_torch(x):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def build_confidence(name: str, **kwargs: Any) -> ConfidenceFn:
    """Creates the registered confidence function ``name`` with its options.

    Examples:
        >>> fn = build_confidence("max_softmax")
        >>> float(fn(np.array([[0.0, 0.0]]))[0])
        0.5
    """
    return CONFIDENCES.get(name)(**kwargs)


def check_range(name: str, conf: np.ndarray) -> str | None:
    """Returns a description of the first value of ``conf`` outside ``name``'s range, else None.

    Unregistered names (user conventions) are not checked.
    """
    if name not in CONFIDENCES:
        return None
    low, high = CONFIDENCES.get(name).value_range
    tol = 1e-6  # float32 softmax can overshoot 1 by an ulp or two
    for bound, bad in ((low, conf < (low or 0) - tol), (high, conf > (high or 0) + tol)):
        if bound is not None and bad.any():
            i = int(np.flatnonzero(bad)[0])
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            return f"{name} confidence must lie in [{lo}, {hi}], but conf[{i}] = {conf[i]!r}"
    return None


__all__ = ["CONFIDENCES", "MIN_BOX_SCORE", "ConfidenceFn", "build_confidence", "check_range", "detection_confidences"]
