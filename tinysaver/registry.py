"""Name → object registries that plugins fill, in the spirit of mmengine's ``Registry`` and timm's
``_registry``.

The core defines the tables and never imports a plugin: a lookup that misses loads the plugins
first. Plugins are found by the package entry-point group ``tinysaver.plugins`` (setup.cfg lists
the built-in ones; a third-party package adds its own module to the same group), and importing a
plugin module registers its objects.

Tables defined here:

- :data:`CLASSIFIER_SOURCES`: where classifiers come from (``timm``: timm and torchvision names)
  — an object with ``create(name, weights, random_init)``, ``data_config(model)``,
  ``eval_transform(model)``, ``train_transform(model)``, ``multi_transform(transforms)``.
- :data:`DATASETS`: datasets by name (``fashion_mnist``, ``imagefolder``, ``photos``): callables
  ``(root_or_name, split, transform, **options) -> dataset of (input, label)``.
- :data:`STAGES`: detection stages by type (``yolo``, ``mmdet``): callables building a stage from
  its config dict.

:data:`tinysaver.confidence.CONFIDENCES` (confidence functions by name) is a plugin table too.

Examples:
    >>> FUNCS = Registry("function")
    >>> @FUNCS.register("double")
    ... def double(x):
    ...     return 2 * x
    >>> FUNCS.get("double")(3)
    6
"""
from __future__ import annotations

import importlib
import os
from importlib import metadata
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, TypeVar

from .errors import TinySaverError

T = TypeVar("T")

#: entry-point group whose modules register plugins into the tables below
PLUGIN_GROUP = "tinysaver.plugins"
# Used only when the package metadata is not installed (running from a source tree on
# PYTHONPATH): the same modules setup.cfg declares as entry points.
_SOURCE_TREE_PLUGINS = ("tinysaver.plugins.timm", "tinysaver.plugins.datasets", "tinysaver.plugins.imagenet",
                        "tinysaver.plugins.stages")
_loaded = False
_failures: Dict[str, str] = {}


def load_plugins() -> Dict[str, str]:
    """Imports every plugin module once (entry points of :data:`PLUGIN_GROUP`).

    Returns:
        Plugins that failed to import (name → reason), e.g. a missing optional dependency; they
        are named in lookup errors instead of breaking the others.
    """
    global _loaded
    if _loaded:
        return _failures
    _loaded = True
    found = list(metadata.entry_points(group=PLUGIN_GROUP))
    targets = [(ep.name, ep.value) for ep in found] or [(m.rsplit(".", 1)[-1], m) for m in _SOURCE_TREE_PLUGINS]
    for name, module in targets:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a missing optional dependency or a broken plugin: the others still work
            _failures[name] = f"{type(exc).__name__}: {exc}"
    return _failures


class Registry(Generic[T]):
    """Maps names to objects.

    Args:
        kind: What the registry holds, used in error messages ("confidence function").
        plugins: Load the plugin modules when a name is not found (tables that plugins fill).
    """

    def __init__(self, kind: str, plugins: bool = False) -> None:
        self.kind = kind
        self.plugins = plugins
        self._items: Dict[str, T] = {}

    def register(self, name: Optional[str] = None, *, force: bool = False) -> Callable[[T], T]:
        """Decorator that registers an object under ``name`` (default: its ``__name__``)."""

        def add(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._items and not force and self._items[key] is not obj:
                raise KeyError(f"{self.kind} {key!r} is already registered (pass force=True to replace it)")
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Returns the object registered as ``name``; the error lists the known names."""
        if name not in self._items and self.plugins:
            load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            failed = "".join(f"; plugin {p} failed to load ({why})" for p, why in _failures.items())
            raise TinySaverError(f"unknown {self.kind} {name!r} (known: {known}){failed}") from None

    def names(self) -> List[str]:
        """Registered names (plugins loaded first)."""
        if self.plugins:
            load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items and self.plugins:
            load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"


CLASSIFIER_SOURCES: Registry = Registry("classifier source", plugins=True)
DATASETS: Registry = Registry("dataset", plugins=True)
STAGES: Registry = Registry("stage type", plugins=True)

#: the classifier source commands use unless told otherwise
DEFAULT_CLASSIFIER_SOURCE = "timm"


def classifier_source(name: str = DEFAULT_CLASSIFIER_SOURCE) -> Any:
    """The registered classifier source ``name``: ``create(name, weights, random_init)``,
    ``check_weights``, ``weights_label``, ``data_config``, ``eval_transform``, ``train_transform``,
    ``multi_transform``, ``num_classes(name)``, ``output_classes(model, input_size)``."""
    return CLASSIFIER_SOURCES.get(name)


def dataset_source(data: str) -> Any:
    """The dataset source behind a ``--data`` value: a registered name (``fashion_mnist``), else a
    folder root (``imagefolder``). A source has ``split(data, split, transform, class_map)`` and
    ``class_map(data, split, num_classes, class_map_file, mask_to_folders)``."""
    if not os.path.isdir(data) and data in DATASETS:
        return DATASETS.get(data)
    return DATASETS.get("imagefolder")


__all__ = ["Registry", "CLASSIFIER_SOURCES", "DATASETS", "STAGES", "PLUGIN_GROUP", "load_plugins",
           "classifier_source", "dataset_source"]
