"""The live classification cascade: each stage answers the samples it is sure about, the rest go on.

Built on the one routing routine (:func:`tinysaver.routing.route`): stage 1 runs on the whole batch,
each later stage on exactly the samples still open, gathered into one batch; the answers are merged
back in the original order.

Examples:
    >>> cascade = Cascade(saver, base, threshold=0.8)              # the paper's two-model form
    >>> out = cascade(images)                                      # one tensor for every stage
    >>> out = cascade(saver_images, base_images)                   # each stage its own preprocessing
    >>> out.logits, out.stage, out.confidence                      # stage: 0 saver, 1 base
    >>> chain = Cascade(xxs, s, base, thresholds=[0.95, 0.8])      # three stages
    >>> cascade.threshold = 0.9                                    # at run time, no recompile
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from ..confidence import ConfidenceFn, build_confidence
from ..routing import Stage, mark_eager, merge_outputs, route
from ..thresholds import ThresholdsMixin, check_thresholds

SAVER, BASE = 0, 1

mark_eager()  # routing may have been imported before torch (tinysaver.runtime)


class CascadeOutput(NamedTuple):
    """Merged outputs in the original sample order.

    Attributes:
        logits: ``[B, C]`` float32: each sample's logits from the stage that answered it.
        stage: ``[B]`` int64: index of the answering stage (0: the first stage, the saver).
        confidence: ``[B]`` float64: the answering stage's confidence.
    """

    logits: torch.Tensor
    stage: torch.Tensor
    confidence: torch.Tensor

    @property
    def exited(self) -> torch.Tensor:
        """Samples answered by the first stage (the saver)."""
        return self.stage == SAVER


class Cascade(ThresholdsMixin, nn.Module):
    """Classifiers in order of cost with per-sample routing inside a batch (TinySaver).

    Args:
        *models: Two or more classifiers returning logits ``[B, C]`` over the same classes,
            cheapest first; the last is the base.
        confidence: Registered confidence name (see :data:`tinysaver.confidence.CONFIDENCES`) or a
            callable ``logits -> [B]``; one for every stage, or a sequence with one per stage.
        threshold: The first stage's threshold (the two-model form).
        thresholds: One threshold per stage but the last (N-stage form). A sample is answered by
            stage k when its confidence is ``>= thresholds[k]``, compared in float64 whatever the
            module's dtype (so routing equals the records analysis); +inf: stage k never answers.
        base_preprocess: Callable applied to the gathered inputs of the last stage (e.g. a resize
            on the device); ``preprocess`` gives one per stage (None entries: none).
        preprocess: Per-stage callables on the gathered inputs.

    A sample's answer never depends on the other samples in its batch: routing is per sample and
    each stage sees exactly the samples that reach it.
    """

    def __init__(self, *models: nn.Module, confidence: Union[str, Callable, Sequence[Any]] = "max_softmax",
                 threshold: Optional[float] = None, thresholds: Optional[Sequence[float]] = None,
                 base_preprocess: Optional[Callable] = None,
                 preprocess: Optional[Sequence[Optional[Callable]]] = None) -> None:
        super().__init__()
        if len(models) < 2:
            raise ValueError("a cascade needs at least two models (saver and base)")
        thresholds = _resolve_thresholds(len(models), threshold, thresholds)
        confidences = list(confidence) if isinstance(confidence, (list, tuple)) else [confidence] * len(models)
        if len(confidences) != len(models):
            raise ValueError(f"{len(confidences)} confidence functions for {len(models)} stages")
        preprocess = list(preprocess) if preprocess is not None else [None] * len(models)
        if base_preprocess is not None:
            preprocess[-1] = base_preprocess
        self.models = nn.ModuleList(models)
        self.confidence_fns: List[Callable] = [build_confidence(c) if isinstance(c, str) else c for c in confidences]
        self.preprocess = preprocess
        # Plain 0-dim float64 tensors, not buffers: `.half()`/`.to(dtype)` leave them alone (a
        # float16 threshold would route differently from the records), and `torch.compile` sees
        # tensors whose value can change without a recompile.
        self._thresholds = [torch.tensor(float(t), dtype=torch.float64) for t in thresholds]

    # --- the common two-model vocabulary ---------------------------------------------------------
    @property
    def saver(self) -> nn.Module:
        return self.models[0]

    @property
    def base(self) -> nn.Module:
        return self.models[-1]

    @property
    def confidence_fn(self) -> Callable:
        return self.confidence_fns[0]

    @property
    def num_stages(self) -> int:
        return len(self.models)

    # ``thresholds``/``threshold`` (ThresholdsMixin), kept in the 0-dim float64 tensors the routing reads.
    def _threshold_values(self) -> List[float]:
        return [float(t) for t in self._thresholds]

    def _store_thresholds(self, values: List[float]) -> None:
        for t, v in zip(self._thresholds, values):
            t.fill_(v)

    def stages(self) -> List[Stage]:
        """The cascade as routing-core stages (with the current thresholds)."""
        return self._stages([*self.thresholds, math.inf])

    def _stages(self, thresholds: Sequence[Any]) -> List[Stage]:
        return [Stage(model=m, confidence=c, threshold=t, preprocess=p)
                for m, c, t, p in zip(self.models, self.confidence_fns, thresholds, self.preprocess)]

    def forward(self, *inputs: torch.Tensor) -> CascadeOutput:
        """Args:
            *inputs: One batch ``[B, ...]`` for every stage, or one batch per stage (each stage its
                own preprocessing of the same samples).
        """
        if len(inputs) == 1:
            inputs = inputs * len(self.models)
        if len(inputs) != len(self.models):
            raise ValueError(f"give one input batch, or one per stage ({len(self.models)}); got {len(inputs)}")
        return self._route(inputs)

    # Under torch.compile the routing itself (how many stages ran, which rows) is data, not graph:
    # this frame runs eagerly while the models it calls are still compiled, so neither a new
    # threshold nor a batch where everything exits early triggers a recompilation.
    @torch.compiler.disable(recursive=False)
    def _route(self, inputs: Sequence[torch.Tensor]) -> CascadeOutput:
        # The stages are routed with the threshold tensors themselves (no float() of a tensor in
        # forward: under torch.compile that would bake the value into the graph).
        thresholds = [*self._thresholds, math.inf]
        routed = route(self._stages([math.inf] * len(self.models)), inputs, thresholds=thresholds)
        return CascadeOutput(merge_outputs(routed, _as_float32), routed.stage, routed.confidence)

    def extra_repr(self) -> str:
        return f"thresholds={self.thresholds}, confidence={self.confidence_fns[0]!r}"


def _as_float32(logits: torch.Tensor) -> torch.Tensor:
    return logits.float()


def _resolve_thresholds(n_models: int, threshold: Optional[float], thresholds: Optional[Sequence[float]]) -> List[float]:
    if threshold is not None and thresholds is not None:
        raise ValueError("give threshold (two models) or thresholds (one per stage but the last), not both")
    if thresholds is None:
        if n_models > 2:  # a silent default would leave the middle stages never answering
            raise ValueError(f"{n_models} stages need thresholds=[...] with {n_models - 1} values")
        thresholds = [0.5 if threshold is None else threshold]
    return check_thresholds(thresholds, n_models)


__all__ = ["Cascade", "CascadeOutput", "SAVER", "BASE", "ConfidenceFn"]
