"""Reading a TinySaver cascade config for ``tools/test.py`` and ``tools/get_flops.py``: one loader for
classification and detection configs, the task read from the config, input problems as one-line
:class:`~tinysaver.errors.TinySaverError` s.
"""
from __future__ import annotations

import argparse
import ast
import os.path as osp
import re
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
        _refuse_late_data_root(path, cfg_options)
        cfg.merge_from_dict(cfg_options)
    if "model" not in cfg:
        raise TinySaverError(f"{path}: no model in the config")
    model_type = str(cfg.model.get("type", "")).rpartition(".")[2]  # a scope prefix (mmdet.X) aside
    if model_type not in CASCADE_TYPES:
        raise TinySaverError(f"{path}: model type {model_type or '(none)'} is not in the TinySaver cascade types "
                             f"({', '.join(CASCADE_TYPES)}); see configs/tinysaver/")
    return cfg


def apply_random_init(cfg: Any) -> Any:
    """Every stage of the config's cascade built untrained, no weights or checkpoint read: the
    random-weights smoke path (``tools/test.py CONFIG none --random-init``, ``tools/get_flops.py
    CONFIG --random-init``) that checks a paper config's shapes, costs, time and memory on a CPU
    before the real run. Classifier stages drop their weights; YOLO stages build from their model
    yaml (``yolov8x.pt`` → ``yolov8x.yaml``); mmdet stages keep their initial weights."""
    for stage in cfg.model.stages:
        if task_of(cfg) == CLASSIFICATION:
            stage["weights"] = None
        stage["random_init"] = True
    return cfg


#: ``{{$VAR:default}}`` in a config: mmengine fills it from the environment when the file is read
_ENV_REFERENCE = re.compile(r"\{\{\s*\$(\w+)\s*:")


def data_root_variables(path: str) -> List[str]:
    """The environment variables a config (and its ``_base_`` files) reads its ``data_root`` from,
    e.g. ``['COCO_ROOT']`` (``data_root = '{{$COCO_ROOT:data/coco}}/'``)."""
    found: List[str] = []
    pending, seen = [osp.abspath(path)], set()
    while pending:
        file = pending.pop()
        if file in seen or not osp.isfile(file):
            continue
        seen.add(file)
        text = open(file, encoding="utf-8").read()
        for line in text.splitlines():
            if line.lstrip().startswith("data_root"):
                found += [v for v in _ENV_REFERENCE.findall(line) if v not in found]
        match = re.search(r"^_base_\s*=\s*(.+?)$", text, flags=re.M | re.S)
        if match:
            try:
                bases = ast.literal_eval(match.group(1).split("\n\n")[0].strip())
            except (SyntaxError, ValueError):
                bases = []
            for base in [bases] if isinstance(bases, str) else bases:
                if isinstance(base, str) and "::" not in base:
                    pending.append(osp.join(osp.dirname(file), base))
    return found


def data_root_hint(path: str) -> str:
    """What sets a config's data folder: ``COCO_ROOT=/path/to/data`` (the variable it reads)."""
    names = data_root_variables(path)
    if not names:
        return "point the config's paths at your data"
    return " or ".join(f"{name}=/path/to/data" for name in names) + " in the environment"


def _refuse_late_data_root(path: str, cfg_options: Dict[str, Any]) -> None:
    """``--cfg-options data_root=...`` would change nothing: every path built from ``data_root``
    (annotation files, image folders, the metrics' ann_file) was filled when the file was read."""
    if "data_root" in cfg_options:
        raise TinySaverError(f"--cfg-options data_root=...: {path} builds its paths from data_root when it is read, "
                             f"so overriding it afterwards changes none of them; set {data_root_hint(path)}")


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


__all__ = ["load_config", "task_of", "registry_miss", "apply_random_init", "data_root_hint", "data_root_variables", "CLASSIFICATION", "DETECTION",
           "CLASSIFIER_TYPES"]
