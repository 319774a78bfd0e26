"""The live cascade: the saver answers the whole batch, only its uncertain samples go to the base.

Examples:
    >>> cascade = Cascade(saver, base, confidence="max_softmax", threshold=0.8)
    >>> out = cascade(images)                       # one tensor for both stages
    >>> out = cascade(saver_images, base_images)    # each stage its own preprocessing
    >>> out.logits, out.stage, out.confidence      # stage: 0 saver answered, 1 base answered
    >>> cascade.threshold = 0.9                     # change at run time, no rebuild or recompile
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import nn

from .confidence import ConfidenceFn, build_confidence

SAVER, BASE = 0, 1


class CascadeOutput(NamedTuple):
    """Merged outputs in the original sample order.

    Attributes:
        logits: ``[B, C]``: the saver's logits where it answered, the base's elsewhere.
        stage: ``[B]`` int64: 0 where the saver answered, 1 where the base did.
        confidence: ``[B]`` the saver's confidence.
    """

    logits: torch.Tensor
    stage: torch.Tensor
    confidence: torch.Tensor

    @property
    def exited(self) -> torch.Tensor:
        return self.stage == SAVER


class Cascade(nn.Module):
    """Saver in front of base with per-sample routing inside a batch (TinySaver).

    Args:
        saver: The tiny model; returns logits ``[B, C]``.
        base: The large model; same classes.
        confidence: Registered confidence name (see :data:`tinysaver.confidence.CONFIDENCES`) or a
            callable ``logits -> [B]`` tensor.
        threshold: A sample exits at the saver when ``confidence >= threshold``. 0 sends nothing
            to the base (for max-softmax); above 1, everything.
        base_preprocess: Optional callable applied to the gathered base inputs (e.g. a resize on
            the device), when the base needs something other than what it is given.

    A sample's answer never depends on the other samples in its batch: routing is per sample and
    the base sees exactly the escalated samples, gathered into one batch.
    """

    def __init__(self, saver: nn.Module, base: nn.Module, confidence: Union[str, Callable] = "max_softmax",
                 threshold: float = 0.5, base_preprocess: Optional[Callable] = None) -> None:
        super().__init__()
        self.saver = saver
        self.base = base
        self.confidence_fn: Callable = build_confidence(confidence) if isinstance(confidence, str) else confidence
        self.base_preprocess = base_preprocess
        # A buffer, not a Python float: changing it needs no torch.compile recompilation.
        self.register_buffer("_threshold", torch.tensor(float(threshold), dtype=torch.float32), persistent=False)

    @property
    def threshold(self) -> float:
        return float(self._threshold)

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold.fill_(float(value))

    def forward(self, x: torch.Tensor, x_base: Optional[torch.Tensor] = None) -> CascadeOutput:
        """Args:
            x: Saver input ``[B, ...]`` (also the base input when ``x_base`` is None).
            x_base: Base input ``[B, ...]`` when the base has its own preprocessing.
        """
        saver_logits = self.saver(x)
        conf = self.confidence_fn(saver_logits)
        exits = conf >= self._threshold.to(conf.dtype)
        escalated = torch.nonzero(~exits).squeeze(1)
        logits = saver_logits.float().clone()
        stage = torch.zeros(exits.shape, dtype=torch.long, device=exits.device)
        if escalated.numel() > 0:
            base_in = (x if x_base is None else x_base).index_select(0, escalated)
            if self.base_preprocess is not None:
                base_in = self.base_preprocess(base_in)
            base_logits = self.base(base_in)
            logits = logits.index_copy(0, escalated, base_logits.float())
            stage = stage.index_fill(0, escalated, BASE)
        return CascadeOutput(logits, stage, conf)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:g}, confidence={self.confidence_fn!r}"


__all__ = ["Cascade", "CascadeOutput", "SAVER", "BASE", "ConfidenceFn"]
