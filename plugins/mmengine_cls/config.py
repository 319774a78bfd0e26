"""Reading a TinySaver cascade config for ``tools/test.py`` and ``tools/get_flops.py``: one loader for
classification and detection configs, the task read from the config, input problems as one-line
:class:`~tinysaver.errors.TinySaverError` s.
"""
from __future__ import annotations

import argparse
import os.path as osp
from typing import Any, Dict, List, Optional

from tinysaver.errors import TinySaverError

CLASSIFICATION, DETECTION = "classification", "detection"
#: model types whose configs are classification cascades (a config may also say ``task = ...``)
CLASSIFIER_TYPES = ("TinySaverClassifier",)
#: the model types tools/test.py and tools/get_flops.py evaluate
CASCADE_TYPES = (*CLASSIFIER_TYPES, "TinySaverDetector")


def parse_tool_args(ap: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """``ap.parse_args(argv)`` for tools/test.py and tools/get_flops.py, whose ``--cfg-options`` is
    mmengine's ``DictAction``: a value without ``key=value`` raises ``ValueError`` inside argparse,
    which becomes the parser's own one-line usage error here instead of a traceback."""
    try:
        return ap.parse_args(argv)
    except ValueError as exc:
        ap.error(f"argument --cfg-options: {exc} (give key=value pairs)")


def load_config(path: str, cfg_options: Optional[Dict[str, Any]] = None, checkpoint: Optional[str] = None):
    """The mmengine config at ``path`` with ``cfg_options`` merged.

    Args:
        path: The config file.
        cfg_options: ``--cfg-options`` key/values.
        checkpoint: A checkpoint that must exist (``none``/None: no checkpoint).

    Raises:
        TinySaverError: A missing config or checkpoint, or a config that does not load.
    """
    from mmengine.config import Config

    if not osp.isfile(path):
        raise TinySaverError(f"{path}: config not found")
    if checkpoint and checkpoint.lower() != "none" and not osp.isfile(checkpoint):
        raise TinySaverError(f"{checkpoint}: checkpoint not found (give a cascade checkpoint, or 'none')")
    try:
        cfg = Config.fromfile(path)
    except (SyntaxError, ImportError, OSError, KeyError, ValueError) as exc:
        raise TinySaverError(f"{path}: cannot load the config ({type(exc).__name__}: {exc})") from None
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if "model" not in cfg:
        raise TinySaverError(f"{path}: no model in the config")
    model_type = str(cfg.model.get("type", "")).rpartition(".")[2]  # a scope prefix (mmdet.X) aside
    if model_type not in CASCADE_TYPES:
        raise TinySaverError(f"{path}: model type {model_type or '(none)'} is not in the TinySaver cascade types "
                             f"({', '.join(CASCADE_TYPES)}); see configs/tinysaver/")
    return cfg


def task_of(cfg: Any) -> str:
    """``classification`` or ``detection``: the config's ``task``, else its model type."""
    task = cfg.get("task") or (CLASSIFICATION if cfg.model.get("type") in CLASSIFIER_TYPES else DETECTION)
    if task not in (CLASSIFICATION, DETECTION):
        raise TinySaverError(f"unknown task {task!r} in the config (known: {CLASSIFICATION}, {DETECTION})")
    return task


def registry_miss(exc: KeyError) -> Optional[str]:
    """The one-line message of mmengine's registry ``KeyError`` ("X is not in the mmengine::model
    registry"), or None for any other ``KeyError`` (a bug, not an input problem)."""
    message = str(exc.args[0]) if exc.args else ""
    return message.split(" Please check")[0] if "registry" in message else None


__all__ = ["load_config", "task_of", "registry_miss", "CLASSIFICATION", "DETECTION", "CLASSIFIER_TYPES"]
