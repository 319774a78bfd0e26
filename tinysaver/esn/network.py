"""The whole ESN: the frozen saver and base plus the exit sequence, progressive on the routing core
(:func:`tinysaver.routing.route`), and what its records are made from.

Examples:
    >>> esn = ExitSequenceNetwork(saver, base, input_size=(1, 28, 28), dim=32, layers=1)  # doctest: +SKIP
    >>> esn.thresholds = [0.9, 0.8, 0.8]                   # saver, exit 1, exit 2 (+inf: never)
    >>> out = esn(images)                                  # progressive: out.logits, out.stage
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..confidence import build_confidence
from ..errors import TinySaverError
from ..models.cascade import CascadeOutput
from ..models.complexity import inference_trace
from ..routing import Stage, merge_outputs, route, take
from ..thresholds import ThresholdsMixin
from .segments import global_pool, split_base
from .sequence import ExitSequence


class ESNFeatures(NamedTuple):
    """What the frozen models give the exit sequence for a batch.

    Attributes:
        saver_logits: ``[B, C]``.
        saver_feat: ``[B, D_S]`` the saver's pre-logits features.
        exit_feats: Per exit ``[B, C_n]`` the pooled output of its segment.
        base_logits: ``[B, C]`` the base's own output.
    """

    saver_logits: torch.Tensor
    saver_feat: torch.Tensor
    exit_feats: List[torch.Tensor]
    base_logits: torch.Tensor


@dataclass
class _State:
    """What a progressive ESN carries for the samples still open (row i of every tensor is
    sample ``rows[i]`` of the batch)."""

    rows: torch.Tensor
    fmap: torch.Tensor
    saver_logits: torch.Tensor
    saver_feat: torch.Tensor
    tokens: Optional[torch.Tensor] = None

    def take(self, positions: torch.Tensor) -> "_State":
        pick = lambda t: None if t is None else t.index_select(0, positions)  # noqa: E731
        return _State(pick(self.rows), pick(self.fmap), pick(self.saver_logits), pick(self.saver_feat),
                      pick(self.tokens))


class Carry:
    """The hand-over between stages: each stage leaves its state here, the next one gathers the rows
    the routing sends it (a subset of the previous rows, in order)."""

    def __init__(self) -> None:
        self.state: Optional[_State] = None

    def take(self, rows: torch.Tensor) -> _State:
        state = self.state
        rows = rows.to(state.rows.device)
        return state.take(torch.searchsorted(state.rows, rows))


def _gather(batch: Any, indices: Any) -> Any:
    return batch.take(indices) if isinstance(batch, Carry) else take(batch, indices)


class ExitSequenceNetwork(ThresholdsMixin, nn.Module):
    """Frozen saver and base with an exit sequence on the base's segments (TinySaver with ESN).

    Args:
        saver: The saver (timm interface: ``forward_features``, ``forward_head(pre_logits=True)``).
        base: The base, cut into segments by :func:`split_base`.
        input_size: ``(C, H, W)`` of one input (the same input feeds both).
        exits: Which segments (0-based) get an exit; default every segment but the last (after the
            last one the base's own head answers).
        dim: Token width. heads: Attention heads. layers: Causal attention layers.
        mlp_ratio: MLP width relative to ``dim``.
        segments: Explicit segments as submodule names (see :func:`split_base`).
        confidence: Confidence of every stage (registered name or callable on logits).

    Stages of the live ESN: ``0`` the saver, ``1..E`` the exits, ``E + 1`` the base's final output.
    ``thresholds`` holds one value per stage but the last (+inf: nothing exits there).
    """

    def __init__(self, saver: nn.Module, base: nn.Module, input_size: Sequence[int], *,
                 exits: Optional[Sequence[int]] = None, dim: int = 128, heads: int = 8, layers: int = 1,
                 mlp_ratio: float = 2.0, segments: Optional[Sequence[Sequence[str]]] = None,
                 confidence: Any = "max_softmax") -> None:
        super().__init__()
        for model in (saver, base):
            model.eval().requires_grad_(False)
        self.saver, self.base = saver, base
        self.input_size = tuple(int(s) for s in input_size)
        self.split = split_base(base, self.input_size, segments)
        n_seg = len(self.split)
        exits = list(range(n_seg - 1)) if exits is None else sorted({int(e) for e in exits})
        if not exits or exits[0] < 0 or exits[-1] >= n_seg:
            raise TinySaverError(f"ESN exits must be segment indices in 0..{n_seg - 1} (the base has {n_seg} "
                                 f"segments), got {exits}")
        self.exits = exits
        feats = self._dry_run()
        self.num_classes = int(feats.saver_logits.shape[1])
        if feats.base_logits.shape[1] != self.num_classes:
            raise TinySaverError(f"saver and base disagree on the classes ({self.num_classes} vs "
                                 f"{feats.base_logits.shape[1]})")
        self.sequence = ExitSequence([feats.saver_feat.shape[1]] + [f.shape[1] for f in feats.exit_feats],
                                     self.num_classes, dim=dim, heads=heads, layers=layers, mlp_ratio=mlp_ratio)
        self.confidence_fn: Callable = build_confidence(confidence) if isinstance(confidence, str) else confidence
        self._thresholds = [torch.tensor(math.inf, dtype=torch.float64) for _ in range(len(exits) + 1)]

    # --- frozen models stay frozen --------------------------------------------------------------
    def train(self, mode: bool = True) -> "ExitSequenceNetwork":
        super().train(mode)
        self.saver.eval()
        self.base.eval()
        self.split.eval()
        return self

    @property
    def num_stages(self) -> int:
        return len(self.exits) + 2

    @property
    def stage_names(self) -> List[str]:
        return ["saver"] + [f"exit{n}" for n in range(1, len(self.exits) + 1)] + ["base"]

    # ``thresholds`` (ThresholdsMixin): one per stage but the last, the saver's then each exit's,
    # kept in 0-dim float64 tensors that the routing reads.
    def _threshold_values(self) -> List[float]:
        return [float(t) for t in self._thresholds]

    def _store_thresholds(self, values: List[float]) -> None:
        for t, v in zip(self._thresholds, values):  # saver, then each exit
            t.fill_(v)

    # --- the frozen models' outputs -------------------------------------------------------------
    def _saver(self, x: torch.Tensor) -> tuple:
        feat = self.saver.forward_features(x)
        return self.saver.forward_head(feat), global_pool(self.saver.forward_head(feat, pre_logits=True))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> ESNFeatures:
        """The frozen models on a batch: the saver's logits and features, each exit's pooled segment
        output, the base's logits (what training caches and the records are computed from)."""
        saver_logits, saver_feat = self._saver(x)
        exit_feats, h = [], x
        for i, segment in enumerate(self.split.segments):
            h = segment(h)
            if i in self.exits:
                exit_feats.append(global_pool(h))
        return ESNFeatures(saver_logits, saver_feat, exit_feats, self.split.head(h))

    def _dry_run(self) -> ESNFeatures:
        return self.features(torch.zeros(1, *self.input_size))

    # --- progressive stages ----------------------------------------------------------------------
    def _segments_between(self, stage: int) -> range:
        """Segments stage ``stage`` (1..E+1) runs: those after the previous exit, up to its own."""
        start = 0 if stage == 1 else self.exits[stage - 2] + 1
        stop = self.exits[stage - 1] + 1 if stage <= len(self.exits) else len(self.split)
        return range(start, stop)

    def _stage_saver(self, x: torch.Tensor, carry: Carry) -> torch.Tensor:
        saver_logits, saver_feat = self._saver(x)
        rows = torch.arange(len(x), device=x.device)
        carry.state = _State(rows, x, saver_logits, saver_feat)
        return saver_logits

    def _stage_exit(self, n: int, state: _State, carry: Carry) -> torch.Tensor:
        h = state.fmap
        for i in self._segments_between(n):
            h = self.split.segments[i](h)
        seq = self.sequence
        tokens = state.tokens if state.tokens is not None else seq.embed[0](state.saver_feat).unsqueeze(1)
        tokens = torch.cat([tokens, seq.embed[n](global_pool(h)).unsqueeze(1)], dim=1)
        carry.state = _State(state.rows, h, state.saver_logits, state.saver_feat, tokens)
        return seq.exit_logits(n, state.saver_logits, tokens)

    def _stage_base(self, state: _State) -> torch.Tensor:
        h = state.fmap
        for i in self._segments_between(len(self.exits) + 1):
            h = self.split.segments[i](h)
        return self.split.head(h)

    def stages(self, carry: Optional[Carry] = None, gmacs: Optional[Sequence[float]] = None) -> List[Stage]:
        """The ESN as routing-core stages (current thresholds; the last stage answers the rest)."""
        carry = Carry() if carry is None else carry
        gmacs = [0.0] * self.num_stages if gmacs is None else list(gmacs)
        calls: List[Callable] = [lambda x: self._stage_saver(x, carry)]
        calls += [lambda s, n=n: self._stage_exit(n, s, carry) for n in range(1, len(self.exits) + 1)]
        calls.append(self._stage_base)
        thresholds = [*self.thresholds, math.inf]
        return [Stage(model=c, confidence=self.confidence_fn, threshold=t, gmacs=g, name=name)
                for c, t, g, name in zip(calls, thresholds, gmacs, self.stage_names)]

    @torch.compiler.disable(recursive=False)
    def forward(self, x: torch.Tensor) -> CascadeOutput:
        """Progressive inference: the saver on the whole batch, then each segment and exit on the
        samples still open; ``stage`` 0 is the saver, ``1..E`` the exits, ``E + 1`` the base."""
        carry = Carry()
        stages = self.stages(carry)
        routed = route(stages, [x] + [carry] * (len(stages) - 1),
                       thresholds=[*self._thresholds, math.inf], gather=_gather)
        return CascadeOutput(merge_outputs(routed, lambda y: y.float()), routed.stage, routed.confidence)

    @torch.no_grad()
    def stage_logits(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Every stage's logits on every sample (nothing exits), by the same stage code as the live
        run: what the records hold."""
        carry = Carry()
        stages = self.stages(carry)
        routed = route(stages, [x] + [carry] * (len(stages) - 1),
                       thresholds=[math.inf] * len(stages), gather=_gather)
        return [run.outputs.float() for run in routed.runs]

    def stage_gmacs(self) -> List[float]:
        """Incremental GMACs of each stage for one sample (1 multiply-add = 1 MAC, counted by torch's
        ``FlopCounterMode`` like :func:`tinysaver.models.complexity.count_gmacs`): the saver; each exit's
        base segments, token embeddings, causal layers over the tokens so far and head; the base's
        remaining segments and head."""
        from torch.utils.flop_counter import FlopCounterMode

        carry = Carry()
        stages = self.stages(carry)
        x = torch.zeros(1, *self.input_size, device=next(self.sequence.parameters()).device)
        out, state_in = [], x
        with inference_trace(self):
            for k, stage in enumerate(stages):
                with FlopCounterMode(display=False) as counter:
                    stage.model(state_in)
                out.append(counter.get_total_flops() / 2 / 1e9)
                state_in = carry.state
        return out

    def extra_repr(self) -> str:
        return f"exits={self.exits}, segments={len(self.split)}, thresholds={self.thresholds}"


def esn_config(esn: ExitSequenceNetwork) -> Dict[str, Any]:
    """What an ESN checkpoint stores next to the state dict (enough to rebuild the exit sequence)."""
    return dict(esn.sequence.config, exits=list(esn.exits))


def exit_records_arrays(stage_logits: Sequence[np.ndarray], labels: np.ndarray,
                        confidence: Any = "max_softmax") -> List[Dict[str, np.ndarray]]:
    """``conf``/``pred``/``label`` arrays per stage from logits (float64 confidences, as records hold)."""
    conf_fn = build_confidence(confidence) if isinstance(confidence, str) else confidence
    out = []
    for logits in stage_logits:
        t = torch.as_tensor(logits)
        out.append({"conf": conf_fn(t).double().numpy(), "pred": t.argmax(1).numpy().astype(np.int64),
                    "label": np.asarray(labels, dtype=np.int64)})
    return out


__all__ = ["ExitSequenceNetwork", "ESNFeatures", "Carry", "esn_config", "exit_records_arrays"]
