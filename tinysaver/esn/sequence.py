"""The trainable part of an ESN: embedding units, the causal feature bus, the exit heads, and
the loss of eq. (11).

Examples:
    >>> seq = ExitSequence([16, 32, 64], num_classes=10, dim=32, layers=1)  # doctest: +SKIP
    >>> loss = esn_loss(seq(saver_logits, saver_feat, exit_feats), labels, saver_logits)  # doctest: +SKIP
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from ..errors import TinySaverError

#: How the exits are trained: eq. (11) (per-sample weights from the saver's confidence) or plain CE.
LOSSES = ("eq11", "ce")


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


__all__ = ["CausalBlock", "ExitSequence", "saver_weights", "esn_loss", "LOSSES"]
