"""Small classifiers registered in timm's model registry, trained on Fashion-MNIST by
``tools/train_fashion_mnist.py`` (the demo's pool: ~0.13 to ~29 MMACs, one family scaled in width and
depth, like the paper's pools of scaled architectures).

Importing this module registers ``fmnist_cnn_{xxs,xs,s,m,l}``; then the ordinary timm calls work,
pretrained data config included::

    import timm, tinysaver.plugins.timm_zoo  # noqa: F401
    model = timm.create_model("fmnist_cnn_s", pretrained=True,
                              pretrained_cfg_overlay=dict(file="weights/fashion_mnist/fmnist_cnn_s.pth"))
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

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


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return dict(num_classes=10, input_size=(1, 28, 28), pool_size=(7, 7), crop_pct=1.0,
                interpolation="bilinear", mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
                first_conv="features.0.0", classifier="head", **kwargs)


default_cfgs = generate_default_cfgs({f"{name}.fashion_mnist": _cfg() for name in ARCHS})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> SmallConvNet:
    widths, depth = ARCHS[variant]
    return build_model_with_cfg(SmallConvNet, variant, pretrained, widths=widths, depth=depth,
                                in_chans=kwargs.pop("in_chans", 1), **kwargs)


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

