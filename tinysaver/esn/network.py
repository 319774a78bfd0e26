"""Exit Sequence Network (ESN, paper §3.4, §6.3, §6.4): exits on the base's backbone that also see
the saver.

The saver and the base are pre-trained and frozen. The base is cut into segments (its stages); after
some of them an *exit* answers. Each exit reads a sequence of tokens: token 0 embeds the saver's
pre-logits features, token ``n`` the globally pooled output of the ``n``-th tapped segment. ``L``
layers of multi-head self-attention with a causal mask (token ``n`` sees tokens ``0..n`` only, so
inference can stop at any exit) mix them, and one linear head per exit predicts a correction
``Δy_n`` of the saver's logits: exit ``n`` answers ``y_S + Δy_n``. The heads start at zero, so an
untrained ESN *is* the saver at every exit, and training starts from the saver's accuracy.

Live, the ESN is a cascade on the one routing routine (:func:`tinysaver.routing.route`): stage 0 is
the saver on the whole batch; stage ``n`` runs the base's next segment(s) on the samples still open
(their feature maps are carried from the previous stage), appends their token and answers the
confident ones; the last stage is the rest of the base and its own head. So an ESN's records are
one record per stage (saver, each exit, the base's final output) whose ``gmacs`` are the stage's
*incremental* cost, and the routing equals the simulation on those records sample by sample.

Loss (eq. 11): each exit's cross-entropy weighted per sample by ``2 (1 − max softmax(y_S))``: the
samples the saver is sure about mostly exit at the saver and never reach an exit, so they weigh little.

Examples:
    >>> esn = ExitSequenceNetwork(saver, base, input_size=(1, 28, 28), dim=32, layers=1)  # doctest: +SKIP
    >>> feats = esn.features(images)                       # frozen models, pooled features
    >>> logits = esn.sequence(feats.saver_logits, feats.saver_feat, feats.exit_feats)  # [B, exits, C]
    >>> loss = esn_loss(logits, labels, feats.saver_logits)                 # eq. (11)
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

from .confidence import build_confidence
from .errors import TinySaverError
from .models.cascade import CascadeOutput
from .routing import Stage, merge_outputs, route, take
from .thresholds import check_thresholds

#: How the exits are trained: eq. (11) (per-sample weights from the saver's confidence) or plain CE.
LOSSES = ("eq11", "ce")


# --- the frozen base cut into segments -------------------------------------------------------------

def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a feature map ``[B, C, H, W]`` or token sequence ``[B, N, C]`` to
    ``[B, C]`` (the pooling half of an embedding unit; it has no parameters, so pooled features can
    be cached and the embedding's linear layer trained on them)."""
    if x.ndim == 4:
        return x.mean((2, 3))
    if x.ndim == 3:
        return x.mean(1)
    if x.ndim == 2:
        return x
    raise TinySaverError(f"cannot pool a feature of shape {tuple(x.shape)} (expected [B, C, H, W], [B, N, C] or [B, C])")


class _Head(nn.Module):
    """The base after its last segment: ``forward_head`` (timm) of what the segments produced."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x)


class BaseSegments(nn.Module):
    """A classifier as ``segments[0] → … → segments[N-1] → head``: what the ESN taps and what the live
    ESN runs one segment at a time on the samples still open.

    Args:
        segments: Modules whose composition is the model's ``forward_features``.
        head: Module from the last segment's output to the logits.
    """

    def __init__(self, segments: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.head = head

    def __len__(self) -> int:
        return len(self.segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments:
            x = segment(x)
        return self.head(x)


def split_base(model: nn.Module, input_size: Sequence[int], modules: Optional[Sequence[Sequence[str]]] = None,
               atol: float = 1e-5) -> BaseSegments:
    """Cuts a classifier into segments (its stages) for the ESN.

    Where the segments come from, in order:

    1. ``modules``: the submodule names of each segment (``[["conv1", "bn1", "act1", "maxpool",
       "layer1"], ["layer2"], ...]``), for any model whose ``forward_features`` chains them;
    2. a ``features`` ``nn.Sequential`` (the demo pool's ``SmallConvNet``, torchvision's VGG or
       MobileNet): cut before every layer that lowers the spatial resolution;
    3. timm's ``feature_info`` (the taps ``features_only``/``forward_intermediates`` use): a segment
       ends at each listed module, the top-level modules being chained in registration order.

    timm's ``forward_intermediates`` returns the same taps but cannot resume from one of them on a
    subset of the batch, which is what a progressive run needs: hence segments. Whatever the source,
    the composition is checked against ``forward_features`` on a random input.

    Args:
        model: A classifier with ``forward_features`` and ``forward_head`` (timm's interface).
        input_size: ``(C, H, W)`` of one input.
        modules: Explicit segments as lists of submodule names.
        atol: Tolerance of the check.

    Returns:
        :class:`BaseSegments`.

    Raises:
        TinySaverError: No way to cut the model, or the cut does not reproduce ``forward_features``.
    """
    for attr in ("forward_features", "forward_head"):
        if not hasattr(model, attr):
            raise TinySaverError(f"{type(model).__name__}: the ESN needs a model with forward_features and "
                                 f"forward_head (timm's interface)")
    if modules:
        try:
            segments = [nn.Sequential(*[model.get_submodule(n) for n in names]) for names in modules]
        except AttributeError as exc:
            raise TinySaverError(f"{type(model).__name__}: unknown submodule in the given segments ({exc})") from None
    elif isinstance(getattr(model, "features", None), nn.Sequential):
        segments = _split_at_downsampling(model.features, input_size)
    elif getattr(model, "feature_info", None):
        segments = _split_by_feature_info(model)
    else:
        raise TinySaverError(f"{type(model).__name__}: no `features` Sequential and no timm feature_info to cut "
                             f"into segments; give the segments' submodule names")
    split = BaseSegments(segments, _Head(model))
    _check_split(model, split, input_size, atol)
    return split


def _split_at_downsampling(features: nn.Sequential, input_size: Sequence[int]) -> List[nn.Module]:
    """Cuts a Sequential before each child that lowers the resolution (a pooling or strided layer)."""
    x = torch.zeros(1, *input_size)
    groups: List[List[nn.Module]] = [[]]
    with torch.no_grad():
        for child in features:
            y = child(x)
            if groups[-1] and y.ndim == 4 and x.ndim == 4 and y.shape[-1] < x.shape[-1]:
                groups.append([])
            groups[-1].append(child)
            x = y
    return [nn.Sequential(*g) for g in groups]


def _split_by_feature_info(model: nn.Module) -> List[nn.Module]:
    """Segments ending at each of timm's ``feature_info`` modules (``layer1``, ``stages.2``...)."""
    ends = [info["module"] for info in model.feature_info]
    units: List[tuple] = []
    for name, child in model.named_children():
        nested = any(e.startswith(name + ".") for e in ends)
        if nested and isinstance(child, (nn.Sequential, nn.ModuleList)):
            units += [(f"{name}.{sub}", m) for sub, m in child.named_children()]
        else:
            units.append((name, child))
    names = [n for n, _ in units]
    missing = [e for e in ends if e not in names]
    if missing:
        raise TinySaverError(f"{type(model).__name__}: feature_info module(s) {missing} are not top-level "
                             f"stages; give the segments' submodule names")
    segments, current = [], []
    for name, module in units:
        current.append(module)
        if name in ends:
            segments.append(nn.Sequential(*current))
            current = []
            if name == ends[-1]:
                break
    return segments


def _check_split(model: nn.Module, split: BaseSegments, input_size: Sequence[int], atol: float) -> None:
    was_training = model.training
    model.eval()
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.forward_features(x)
        got = x
        for segment in split.segments:
            got = segment(got)
    model.train(was_training)
    if got.shape != want.shape or not torch.allclose(got, want, atol=atol, rtol=1e-4):
        raise TinySaverError(f"{type(model).__name__}: the segments do not reproduce forward_features "
                             f"(shapes {tuple(got.shape)} vs {tuple(want.shape)}); give the segments' submodule names")


# --- the trainable part ----------------------------------------------------------------------------

class CausalBlock(nn.Module):
    """One pre-norm transformer layer with a causal mask: multi-head self-attention, then an MLP.

    Args:
        dim: Token width.
        heads: Attention heads (``dim`` must be divisible by it).
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
    """

    def __init__(self, dim: int, heads: int = 8, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if dim % heads:
            raise TinySaverError(f"ESN width {dim} is not divisible by {heads} attention heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        # Explicit attention (not SDPA): the same kernels whatever the sequence length, so an exit
        # computed on a prefix equals the same exit computed in the full sequence.
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attn = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class ExitSequence(nn.Module):
    """The trainable part of an ESN: embedding units, the causal feature bus and the exit heads.

    It works on *pooled* features (the parameter-free half of each embedding unit is done by
    :func:`global_pool` beforehand), so it trains as well on cached features as on live ones.

    Args:
        token_dims: Width of each token's pooled feature: the saver's pre-logits first, then one per
            exit (the tapped segments, in order).
        num_classes: Classes of the saver's (and every exit's) logits.
        dim: Token width.
        heads: Attention heads.
        layers: Causal attention layers ``L`` (0: each exit sees its own token only).
        mlp_ratio: MLP width of each layer relative to ``dim``.
    """

    def __init__(self, token_dims: Sequence[int], num_classes: int, dim: int = 128, heads: int = 8,
                 layers: int = 1, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if len(token_dims) < 2:
            raise TinySaverError("an exit sequence needs the saver's token and at least one exit")
        if layers < 0 or dim < 1:
            raise TinySaverError(f"ESN layers must be >= 0 and dim >= 1, got layers={layers}, dim={dim}")
        if layers and dim % heads:
            raise TinySaverError(f"ESN width {dim} is not divisible by {heads} attention heads")
        self.config = dict(token_dims=[int(d) for d in token_dims], num_classes=int(num_classes), dim=int(dim),
                           heads=int(heads), layers=int(layers), mlp_ratio=float(mlp_ratio))
        self.embed = nn.ModuleList(nn.Linear(d, dim) for d in token_dims)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in token_dims[1:])
        for head in self.heads:  # Δy = 0: an untrained ESN answers like the saver at every exit
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def tokens(self, saver_feat: torch.Tensor, exit_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[B, 1 + exits, dim]``: the embedded tokens (saver first)."""
        feats = [saver_feat, *exit_feats]
        if len(feats) != len(self.embed):
            raise TinySaverError(f"the exit sequence has {len(self.embed) - 1} exits but got {len(exit_feats)} features")
        return torch.stack([embed(f) for embed, f in zip(self.embed, feats)], dim=1)

    def bus(self, tokens: torch.Tensor) -> torch.Tensor:
        """The causal feature bus over ``[B, T, dim]`` tokens, normalised for the heads."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, saver_logits: torch.Tensor, saver_feat: torch.Tensor,
                exit_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """All exits at once (training): ``[B, exits, C]`` logits ``y_S + Δy_n``."""
        z = self.bus(self.tokens(saver_feat, exit_feats))
        deltas = torch.stack([head(z[:, n + 1]) for n, head in enumerate(self.heads)], dim=1)
        return saver_logits.unsqueeze(1) + deltas

    def exit_logits(self, n: int, saver_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Exit ``n`` (1-based) from the tokens known so far (``[B, n + 1, dim]``, saver first): what
        a progressive run computes when the samples reach exit ``n``; the causal mask makes it equal
        exit ``n`` of :meth:`forward`."""
        if tokens.shape[1] != n + 1:
            raise ValueError(f"exit {n} needs {n + 1} tokens, got {tokens.shape[1]}")
        return saver_logits + self.heads[n - 1](self.bus(tokens)[:, -1])

    def progressive(self, saver_logits: torch.Tensor, saver_feat: torch.Tensor,
                    exit_feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Every exit computed as a progressive run computes it (one prefix at a time): the records
        are made with this, so that they equal the live ESN sample by sample."""
        tokens = self.embed[0](saver_feat).unsqueeze(1)
        out = []
        for n, feat in enumerate(exit_feats, start=1):
            tokens = torch.cat([tokens, self.embed[n](feat).unsqueeze(1)], dim=1)
            out.append(self.exit_logits(n, saver_logits, tokens))
        return out


def saver_weights(saver_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (11)'s per-sample weight ``2 (1 − max_i softmax(y_S)_i)`` (in [0, 2))."""
    return 2.0 * (1.0 - saver_logits.float().softmax(dim=-1).max(dim=-1).values)


def esn_loss(exit_logits: torch.Tensor, target: torch.Tensor, saver_logits: torch.Tensor,
             loss: str = "eq11") -> torch.Tensor:
    """Eq. (11), summed over the exits and averaged over the batch.

    Args:
        exit_logits: ``[B, exits, C]``.
        target: ``[B]`` class indices or ``[B, C]`` soft targets (Mixup/CutMix, label smoothing).
        saver_logits: ``[B, C]`` the saver's logits on the same (mixed) inputs.
        loss: ``eq11`` (weights ``2 (1 − max softmax(y_S))``) or ``ce`` (every sample weighs 1).

    Returns:
        ``Σ_n mean_m w_m · CE(y_n^(m), target_m)``.
    """
    if loss not in LOSSES:
        raise TinySaverError(f"unknown ESN loss {loss!r} (known: {', '.join(LOSSES)})")
    logp = exit_logits.float().log_softmax(dim=-1)
    if target.ndim == 1:
        per_sample = -logp.gather(-1, target.view(-1, 1, 1).expand(-1, logp.shape[1], 1)).squeeze(-1)
    else:
        per_sample = -(target.float().unsqueeze(1) * logp).sum(dim=-1)  # [B, exits]
    if loss == "eq11":
        per_sample = per_sample * saver_weights(saver_logits).detach().unsqueeze(1)
    return per_sample.sum(dim=1).mean()


# --- the whole network: frozen models + exit sequence, progressive on the routing core ------------

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


class _Carry:
    """The hand-over between stages: each stage leaves its state here, the next one gathers the rows
    the routing sends it (a subset of the previous rows, in order)."""

    def __init__(self) -> None:
        self.state: Optional[_State] = None

    def take(self, rows: torch.Tensor) -> _State:
        state = self.state
        rows = rows.to(state.rows.device)
        return state.take(torch.searchsorted(state.rows, rows))


def _gather(batch: Any, indices: Any) -> Any:
    return batch.take(indices) if isinstance(batch, _Carry) else take(batch, indices)


class ExitSequenceNetwork(nn.Module):
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

    @property
    def thresholds(self) -> List[float]:
        """One per stage but the last: the saver's, then each exit's."""
        return [float(t) for t in self._thresholds]

    @thresholds.setter
    def thresholds(self, values: Sequence[float]) -> None:
        for t, v in zip(self._thresholds, check_thresholds(values, self.num_stages)):  # saver, then each exit
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

    def _stage_saver(self, x: torch.Tensor, carry: _Carry) -> torch.Tensor:
        saver_logits, saver_feat = self._saver(x)
        rows = torch.arange(len(x), device=x.device)
        carry.state = _State(rows, x, saver_logits, saver_feat)
        return saver_logits

    def _stage_exit(self, n: int, state: _State, carry: _Carry) -> torch.Tensor:
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

    def stages(self, carry: Optional[_Carry] = None, gmacs: Optional[Sequence[float]] = None) -> List[Stage]:
        """The ESN as routing-core stages (current thresholds; the last stage answers the rest)."""
        carry = _Carry() if carry is None else carry
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
        carry = _Carry()
        stages = self.stages(carry)
        routed = route(stages, [x] + [carry] * (len(stages) - 1),
                       thresholds=[*self._thresholds, math.inf], gather=_gather)
        return CascadeOutput(merge_outputs(routed, lambda y: y.float()), routed.stage, routed.confidence)

    @torch.no_grad()
    def stage_logits(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Every stage's logits on every sample (nothing exits), by the same stage code as the live
        run: what the records hold."""
        carry = _Carry()
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

        carry = _Carry()
        stages = self.stages(carry)
        from .models.complexity import inference_trace

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


__all__ = ["ExitSequenceNetwork", "ExitSequence", "CausalBlock", "BaseSegments", "ESNFeatures", "split_base",
           "global_pool", "esn_loss", "saver_weights", "esn_config", "exit_records_arrays", "LOSSES"]
