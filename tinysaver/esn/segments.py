"""The frozen base cut into segments (its stages): what the ESN taps and what the live ESN runs one
segment at a time on the samples still open.

Examples:
    >>> split = split_base(base, (1, 28, 28))            # doctest: +SKIP
    >>> split.segments[0](images)                        # doctest: +SKIP
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from ..errors import TinySaverError


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


__all__ = ["BaseSegments", "split_base", "global_pool"]
