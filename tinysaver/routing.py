"""The one routing routine every TinySaver cascade runs (classifier, detector, exit network, server).

A cascade is a sequence of :class:`Stage` s ordered by cost. Stage 1 answers every sample; each
later stage runs on exactly the samples that are still open, gathered into one batch. A sample is
answered by stage k (k < N) when its confidence there is ``>= t_k``; the last stage answers whatever
reaches it. Each framework adds only what it needs around this routine: how to gather a sub-batch
(``take``) and how to merge the answers (tensors, ``DetDataSample`` s, ultralytics ``Results``).

Thresholds are compared with float64 semantics whatever the dtype of the models (a float16 model's
threshold 0.970924 is not silently rounded to 0.970703): the confidence is widened to float64 and
compared with the float64 threshold, exactly as the records analysis compares a record's float64
``conf`` with a threshold. A threshold of +inf lets nothing exit at that stage.

Examples:
    >>> import numpy as np
    >>> small = Stage(model=lambda x: x * 0.5, confidence=lambda y: y, threshold=0.3, name="small")
    >>> large = Stage(model=lambda x: x, confidence=lambda y: y, name="large")
    >>> routed = route([small, large], [np.array([0.9, 0.2, 0.7])] * 2)
    >>> routed.stage.tolist()          # 0.45 and 0.35 exit at "small", 0.1 goes on
    [0, 1, 0]
    >>> [run.indices.tolist() for run in routed.runs]
    [[0, 1, 2], [1]]
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from .confidence import build_confidence
from .errors import ThresholdError

#: gathers the samples ``indices`` of a batch (a tensor, an array, a list)
Take = Callable[[Any, Any], Any]


#: code objects of the routing frames ``torch.compile`` must not trace (see :func:`mark_eager`)
_EAGER_CODE: List[Any] = []


def _skip_code() -> Optional[Callable[[Any], None]]:
    """torch's "never trace this code object" marker, if torch is loaded and has it."""
    torch = sys.modules.get("torch")
    return getattr(getattr(getattr(torch, "_dynamo", None), "eval_frame", None), "skip_code", None)


def _eager(fn: Callable) -> Callable:
    """Keeps ``torch.compile`` out of a routing frame, not out of the models it calls.

    Which stages ran and on which rows is data, not graph: compiled, every batch where all samples
    exit early, or a new threshold, would recompile. The frame's code is marked skipped, so it runs
    eagerly and the model calls inside it stay compiled; marking costs nothing per call, where
    ``torch.compiler.disable``'s wrapper adds a frame to each of the ~20 such calls a batch makes
    (a visible share of a batch-1 call). Without torch (the ONNX runtime) nothing is imported: the
    torch cascades call :func:`mark_eager` when they load.
    """
    _EAGER_CODE.append(fn.__code__)
    skip = _skip_code()
    if skip is not None:
        skip(fn.__code__)
    elif "torch" in sys.modules:  # a torch without the marker: the wrapper, as before
        return sys.modules["torch"].compiler.disable(fn, recursive=False)
    return fn


def mark_eager() -> None:
    """Marks the routing frames for ``torch.compile`` now that torch is loaded. Idempotent; the torch
    cascades call it on import, since this module may have been imported before torch (e.g. by
    :mod:`tinysaver.runtime`), when there was nothing to mark them with."""
    skip = _skip_code()
    if skip is not None:
        for code in _EAGER_CODE:
            skip(code)


def _is_torch(x: Any) -> bool:
    # Checked by module name so that the routing core imports torch only where torch is used.
    return type(x).__module__.startswith("torch")


@_eager
def take(batch: Any, indices: Any) -> Any:
    """The default gather: ``index_select`` for tensors, fancy indexing for arrays, a list for
    sequences."""
    if _is_torch(batch):
        import torch

        if not _is_torch(indices):
            indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return batch.index_select(0, indices.to(batch.device))
    if isinstance(batch, np.ndarray):
        return batch[np.asarray(indices.cpu() if _is_torch(indices) else indices)]
    return [batch[int(i)] for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]


@dataclass
class Stage:
    """One model of a cascade.

    Args:
        model: Callable from a (gathered) batch to its outputs, e.g. an ``nn.Module``.
        confidence: Registered confidence name (see :data:`tinysaver.confidence.CONFIDENCES`) or a
            callable ``outputs -> [B]`` confidences (tensor or array).
        threshold: A sample is answered here when its confidence is ``>= threshold`` (float64
            semantics; +inf: never). Ignored for the last stage, which answers what reaches it.
        preprocess: Applied to the gathered inputs of this stage before ``model`` (e.g. the
            stage's own normalisation, on the device).
        gmacs: Incremental cost of this stage per sample (its own cost).
        name: For reports.
    """

    model: Callable[[Any], Any]
    confidence: Any = "max_softmax"
    threshold: float = math.inf
    preprocess: Optional[Callable[[Any], Any]] = None
    gmacs: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.confidence, str):
            self.confidence = build_confidence(self.confidence)
        self.threshold = float(self.threshold)
        if math.isnan(self.threshold):
            # NaN >= anything is False: the stage would silently answer nothing
            raise ThresholdError(f"stage {self.name or '?'}: the threshold is NaN")


@dataclass
class StageRun:
    """What one stage did on one batch.

    Attributes:
        indices: Rows of the original batch this stage ran on (in order).
        outputs: Its outputs on those rows (same order).
        confidence: Its confidence on those rows.
        exits: Which of those rows it answered (all of them for the last stage).
        answers_all: True when the stage answered every row it ran on (the last stage).
    """

    indices: Any
    outputs: Any
    confidence: Any
    exits: Any
    answers_all: bool = False

    def __post_init__(self) -> None:
        self._positions: Any = None

    @property
    @_eager
    def positions(self) -> Any:
        """Positions, within this run, of the rows it answered (computed once: a boolean mask
        index costs a ``nonzero`` every time, which at batch 1 is a visible share of a call)."""
        if self._positions is None:
            self._positions = _arange_like(self.exits) if self.answers_all else _nonzero(self.exits)
        return self._positions

    @property
    @_eager
    def answered(self) -> Any:
        """Original rows this stage answered."""
        return self.indices if self.answers_all else take(self.indices, self.positions)

    @_eager
    def answers(self, values: Any) -> Any:
        """The rows of ``values`` (aligned with this run: its outputs, its confidence) that this
        stage answered."""
        return values if self.answers_all else take(values, self.positions)


@dataclass
class Routed:
    """The routing of one batch.

    Attributes:
        runs: One :class:`StageRun` per stage that received samples, in stage order.
        stage: ``[B]`` index of the stage that answered each sample.
        confidence: ``[B]`` the answering stage's confidence for each sample (float64).
    """

    runs: List[StageRun]
    stage: Any
    confidence: Any


def exit_mask(confidence: Any, threshold: Any) -> Any:
    """``confidence >= threshold`` compared in float64 (tensor in, tensor out; array in, array out).

    ``threshold`` is a float or a 0-dim float64 tensor (a tensor lets ``torch.compile`` change it
    without recompiling). A threshold of +inf lets nothing exit, not even a confidence that
    overflowed to +inf (a float16 logit can).
    """
    if _is_torch(confidence):
        import torch

        t = threshold if _is_torch(threshold) else torch.tensor(float(threshold), dtype=torch.float64)
        t = t.to(torch.float64)
        return (confidence.to(torch.float64) >= t) & (t < math.inf)
    t = float(threshold)
    return (np.asarray(confidence, dtype=np.float64) >= t) & (t < math.inf)


@_eager
def route(stages: Sequence[Stage], batches: Sequence[Any], *, thresholds: Optional[Sequence[Any]] = None,
          gather: Take = take) -> Routed:
    """Runs a batch through a cascade, each stage on exactly the samples that reach it.

    Args:
        stages: The cascade, cheapest first; the last one answers what reaches it.
        batches: One input batch per stage (the same object may repeat: each stage can have its
            own preprocessing of one decode). Row i of every batch is sample i.
        thresholds: Overrides ``stage.threshold`` (e.g. 0-dim tensors kept by an ``nn.Module``).
        gather: ``gather(batch, indices)`` returns the rows ``indices`` of a batch.

    Returns:
        The :class:`Routed` batch; merge ``runs`` into the framework's output type.
    """
    if len(batches) != len(stages):
        raise ValueError(f"route() needs one input batch per stage: {len(stages)} stages, {len(batches)} batches")
    thresholds = [s.threshold for s in stages] if thresholds is None else list(thresholds)
    runs: List[StageRun] = []
    open_rows: Any = None  # None: every row (no gather needed for the first stage)
    for k, stage in enumerate(stages):
        x = batches[k] if open_rows is None else gather(batches[k], open_rows)
        if stage.preprocess is not None:
            x = stage.preprocess(x)
        outputs = stage.model(x)
        conf = stage.confidence(outputs)
        if open_rows is None:
            open_rows = _arange_like(conf)
        if k == len(stages) - 1:
            runs.append(StageRun(open_rows, outputs, conf, _ones_like(conf), answers_all=True))
            break
        exits = exit_mask(conf, thresholds[k])
        runs.append(StageRun(open_rows, outputs, conf, exits))
        open_rows = take(open_rows, _nonzero(~exits))
        if len(open_rows) == 0:
            break
    stage_of, conf_of = _merge_stage_and_confidence(runs)
    return Routed(runs=runs, stage=stage_of, confidence=conf_of)


def _arange_like(conf: Any) -> Any:
    if _is_torch(conf):
        import torch

        return torch.arange(len(conf), device=conf.device)
    return np.arange(len(conf))


def _ones_like(conf: Any) -> Any:
    if _is_torch(conf):
        import torch

        return torch.ones(len(conf), dtype=torch.bool, device=conf.device)
    return np.ones(len(conf), dtype=bool)


@_eager
def _nonzero(mask: Any) -> Any:
    """Positions of the true entries of a 1-D mask (tensor or array)."""
    if _is_torch(mask):
        return mask.nonzero().squeeze(1)
    return np.flatnonzero(mask)


@_eager
def _merge_stage_and_confidence(runs: List[StageRun]) -> tuple:
    first = runs[0]
    if _is_torch(first.confidence):
        import torch

        if len(runs) == 1:  # the first stage answered everything
            return (torch.zeros(len(first.indices), dtype=torch.long, device=first.confidence.device),
                    first.confidence.to(torch.float64, copy=True))
        stage = torch.zeros(len(first.indices), dtype=torch.long, device=first.confidence.device)
        conf = torch.empty(len(first.indices), dtype=torch.float64, device=first.confidence.device)
        for k, run in enumerate(runs):
            rows = run.answered
            if k:
                stage = stage.index_fill(0, rows, k)
            conf = conf.index_copy(0, rows, run.answers(run.confidence).to(torch.float64))
        return stage, conf
    stage = np.zeros(len(first.indices), dtype=np.int64)
    conf = np.zeros(len(first.indices), dtype=np.float64)
    for k, run in enumerate(runs):
        rows = run.answered
        stage[rows] = k
        conf[rows] = run.answers(np.asarray(run.confidence, dtype=np.float64))
    return stage, conf


@_eager
def merge_outputs(routed: Routed, convert: Optional[Callable[[Any], Any]] = None) -> Any:
    """Each sample's output (a tensor or array, one row per sample) from the stage that answered it,
    in the original order: the first stage's outputs with the later stages' answers copied in.

    Args:
        routed: A routed batch whose stages answer with tensors or arrays of one row shape.
        convert: Applied to each stage's outputs first (e.g. ``lambda y: y.float()``); tensors stay
            tensors (``index_copy``, no in-place write into a model's output), arrays are copied.
    """
    convert = convert or (lambda y: y)
    first = routed.runs[0]
    merged = convert(first.outputs)
    if not _is_torch(merged):
        merged = np.array(merged, copy=True)
    for run in routed.runs[1:]:
        answers = run.answers(convert(run.outputs))
        if _is_torch(merged):
            merged = merged.index_copy(0, run.answered, answers)
        else:
            merged[run.answered] = answers
    return merged


def expected_cost(answered: Sequence[float], stage_costs: Sequence[float]) -> float:
    """Average cost per sample of a cascade: a sample answered at stage k paid stages 1..k, so the
    cost is ``Σ_k reach_k · cost_k`` with ``reach_k`` the share answered at stage k or later.

    Examples:
        >>> round(expected_cost([0.6, 0.4], [0.2, 1.0]), 6)  # all pay 0.2, 40 % also pay 1.0
        0.6
    """
    answered = np.asarray(answered, dtype=np.float64)
    reach = 1.0 - np.concatenate(([0.0], np.cumsum(answered)[:-1]))
    return float(np.dot(reach, np.asarray(stage_costs, dtype=np.float64)))


__all__ = ["Stage", "StageRun", "Routed", "route", "merge_outputs", "exit_mask", "take", "expected_cost"]
