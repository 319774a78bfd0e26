"""Small classifiers registered in timm's model registry, trained on Fashion-MNIST by
``tools/train_fashion_mnist.py`` (the demo's pool: ~0.13 to ~29 MMACs, one family scaled in width and
depth, like the paper's pools of scaled architectures).

Importing this module registers ``fmnist_cnn_{xxs,xs,s,m,l}`` with their committed weights
(``weights/fashion_mnist/``, installed as the package data ``tinysaver.weights``) under timm's
pretrained tag ``fashion_mnist``, so the ordinary timm call loads them by name::

    import timm, tinysaver.plugins.timm.zoo  # noqa: F401
    model = timm.create_model("fmnist_cnn_s", pretrained=True)

Each file is checked against the sha256 in its ``manifest.json`` and unpickled with
``weights_only=True`` (:mod:`tinysaver.models.checkpoint`) before timm gets its state dict: a file that was
changed, or that would run code, is refused with one line.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from tinysaver.errors import TinySaverError
from tinysaver.models.checkpoint import load_state_dict

#: timm pretrained tag of the committed weights (``fmnist_cnn_s.fashion_mnist``).
PRETRAINED_TAG = "fashion_mnist"

# Fashion-MNIST statistics over the 60k training images (grayscale, in [0, 1]).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

# name -> (stage widths, convs per stage)
ARCHS: Dict[str, tuple] = {
    "fmnist_cnn_xxs": ((4, 8, 16), 1),
    "fmnist_cnn_xs": ((8, 16, 32), 1),
    "fmnist_cnn_s": ((16, 32, 64), 1),
    "fmnist_cnn_m": ((24, 48, 96), 2),
    "fmnist_cnn_l": ((32, 64, 128), 2),
}


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallConvNet(nn.Module):
    """Three stages of 3×3 conv-BN-ReLU at 28, 14 and 7 pixels, global pooling, linear head.

    Args:
        widths: Channels of the three stages.
        depth: Convolutions per stage.
        in_chans: Input channels.
        num_classes: Output classes.
    """

    def __init__(self, widths: Sequence[int], depth: int, in_chans: int = 1, num_classes: int = 10,
                 **_: Any) -> None:
        super().__init__()
        layers, cin = [], in_chans
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers.append(_conv_bn_relu(cin, width))
                cin = width
        self.features = nn.Sequential(*layers)
        self.num_features = cin
        self.num_classes = num_classes
        self.head = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


def weights_dir() -> Path:
    """Folder of the committed weights and their ``manifest.json``.

    Installed, this module is ``tinysaver/plugins/timm/zoo.py`` and the weights are the package data
    ``tinysaver/weights/`` (setup.cfg); in the source tree they are ``weights/`` next to
    ``plugins/``: the same place relative to this file either way.
    """
    return Path(__file__).resolve().parents[2] / "weights" / PRETRAINED_TAG


@functools.lru_cache(maxsize=None)
def manifest() -> Dict[str, Dict[str, Any]]:
    """``manifest.json``: per model its file, sha256 and how it was trained."""
    path = weights_dir() / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TinySaverError(f"{path}: unreadable weights manifest ({exc})") from None


def pretrained_file(name: str) -> Path:
    """Path of the committed weights of pool model ``name``."""
    return weights_dir() / f"{name}.pth"


def load_pretrained_state_dict(name: str) -> Dict[str, torch.Tensor]:
    """The committed state dict of pool model ``name``, its sha256 checked against the manifest."""
    entry = manifest().get(name) or {}
    if "sha256" not in entry:
        raise TinySaverError(f"{weights_dir() / 'manifest.json'}: no sha256 for {name}")
    return load_state_dict(pretrained_file(name), sha256=entry["sha256"])


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return dict(num_classes=10, input_size=(1, 28, 28), pool_size=(7, 7), crop_pct=1.0,
                interpolation="bilinear", mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
                first_conv="features.0.0", classifier="head",
                description="Fashion-MNIST, first 50k training images (tools/train_fashion_mnist.py)",
                **kwargs)


default_cfgs = generate_default_cfgs({f"{name}.{PRETRAINED_TAG}": _cfg(file=str(pretrained_file(name)))
                                      for name in ARCHS})


def _safe_overlay(variant: str, pretrained_cfg: Any, overlay: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A ``pretrained_cfg_overlay`` that hands timm a safely loaded state dict instead of a path.

    The registered file is checked against the manifest; a file the caller names
    (``pretrained_cfg_overlay=dict(file=...)``) goes through the same safe loader, unchecked.
    """
    overlay = dict(overlay or {})
    resolved = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=dict(overlay))
    if resolved.state_dict is not None or not resolved.file:
        return overlay  # a state dict already, or no file: timm says what is missing
    if Path(resolved.file) == pretrained_file(variant):
        overlay["state_dict"] = load_pretrained_state_dict(variant)
    else:
        overlay["state_dict"] = load_state_dict(resolved.file)
    return overlay


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> SmallConvNet:
    widths, depth = ARCHS[variant]
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = _safe_overlay(variant, kwargs.get("pretrained_cfg"),
                                                         kwargs.get("pretrained_cfg_overlay"))
    model = build_model_with_cfg(SmallConvNet, variant, pretrained, widths=widths, depth=depth,
                                 in_chans=kwargs.pop("in_chans", 1), **kwargs)
    # The state dict only carried the weights into timm; the model's config keeps their source.
    model.pretrained_cfg.pop("state_dict", None)
    return model


@register_model
def fmnist_cnn_xxs(pretrained: bool = False, **kwargs: Any) -> SmallConvNet:
    return _create("fmnist_cnn_xxs", pretrained, **kwargs)


@register_model
def fmnist_cnn_xs(pretrained: bool = False, **kwargs: Any) -> SmallConvNet:
    return _create("fmnist_cnn_xs", pretrained, **kwargs)


@register_model
def fmnist_cnn_s(pretrained: bool = False, **kwargs: Any) -> SmallConvNet:
    return _create("fmnist_cnn_s", pretrained, **kwargs)


@register_model
def fmnist_cnn_m(pretrained: bool = False, **kwargs: Any) -> SmallConvNet:
    return _create("fmnist_cnn_m", pretrained, **kwargs)


@register_model
def fmnist_cnn_l(pretrained: bool = False, **kwargs: Any) -> SmallConvNet:
    return _create("fmnist_cnn_l", pretrained, **kwargs)
