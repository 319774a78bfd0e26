"""mmdet checkpoints and configs: load a detector with no code from its checkpoint running.

Checkpoints saved by mmengine's Runner pickle numpy arrays and message-hub objects next to the
weights; :func:`tinysaver.models.checkpoint.load_checkpoint` reads them with torch's ``weights_only``
unpickler and an allow-list (numpy reconstructors, inert stand-ins for mmengine objects), so no
function named by the file runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch
from mmengine.config import Config

from tinysaver.errors import TinySaverError
from tinysaver.models.checkpoint import load_checkpoint


def load_checkpoint_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The state dict of an mmdet/mmengine checkpoint, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise TinySaverError(f"{path}: checkpoint not found")
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise TinySaverError(f"{path}: no state_dict inside")
    return state


def resolve_mmdet_config(name: str) -> str:
    """``mmdet::dino/x.py`` → the config file the installed mmdet package ships (``.mim/configs``)."""
    import mmdet

    path = Path(mmdet.__file__).parent / ".mim" / "configs" / name.split("::", 1)[1]
    if not path.is_file():
        raise TinySaverError(f"{name}: not among the configs the installed mmdet ships ({path.parent})")
    return str(path)


def build_mmdet_model(config: Union[str, dict, Config], checkpoint: Optional[str] = None) -> torch.nn.Module:
    """Builds the ``model`` of an mmdet config (its ``custom_imports`` imported) and loads
    ``checkpoint`` strictly: a checkpoint that does not fit is an error, not a warning."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    if isinstance(config, str) and config.startswith("mmdet::"):
        config = resolve_mmdet_config(config)
    if isinstance(config, (str, Path)):
        if not Path(config).is_file():
            raise TinySaverError(f"{config}: detector config not found (for Co-DINO, point MMDET_ROOT at an "
                                 f"mmdetection source checkout; see README)")
        config = Config.fromfile(str(config))
    model_cfg = config["model"] if "model" in config else config
    # mmdet's scope while building, also outside a Runner: parts built through mmcv/mmengine's root
    # registry (Co-DETR's transformer layers) are registered in mmdet's only.
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(model_cfg)
    if checkpoint:
        state = load_checkpoint_state_dict(checkpoint)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise TinySaverError(f"{checkpoint}: does not fit the detector (missing {list(missing)[:3]}, "
                                 f"unexpected {list(unexpected)[:3]})")
    return model.eval()


__all__ = ["load_checkpoint_state_dict", "resolve_mmdet_config", "build_mmdet_model"]
