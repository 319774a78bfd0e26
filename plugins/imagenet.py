"""ImageNet-style folders: which of the model's outputs each class folder is.

torchvision's ``ImageFolder`` numbers the classes by the sorted folder names. That equals the
model's ImageNet-1k index only for exactly the 1000 synset folders; for a subset of ImageNet,
ImageNet-V2 (numeric folders sorted as strings: "0", "1", "10", "100", ...) or ImageNet-R/-A (200
synsets) it silently gives wrong labels. Here the mapping is chosen explicitly, by these rules in
this order, and reported:

1. ``--class-map FILE`` (kind ``file``): a JSON object ``{"folder": index}`` or text lines
   ``folder index``; every folder must be in it.
2. all folders are synset ids (``n01440764``, kind ``synset``): the index in timm's
   :class:`~timm.data.ImageNetInfo` for the model's number of classes (ImageNet-1k for 1000).
3. all folders are integers (``22``, kind ``numeric``): that integer, which must be < num_classes.
4. otherwise (kind ``folder-order``): the sorted folder order, only when the folder count equals
   the model's number of classes (a custom dataset with its own fine-tuned head).

Anything else is a :class:`~tinysaver.errors.TinySaverError` naming the folder that does not map.
Labels are then the model's class indices, so ``pred == label`` means correct.

ImageNet-R/-A are evaluated over the classes they contain: with ``mask_to_folders`` the logits of
every other class are set to -inf (:class:`MaskedClassifier`) before the confidence and the argmax.

Examples:
    >>> cmap = folder_class_map("/data/imagenet-r/val", num_classes=1000, mask_to_folders=True)
    >>> cmap.describe()
    '200 synset folders → ImageNet-1k indices; logits masked to these 200 classes'
    >>> dataset = ImageNetFolder("/data/imagenet-r/val", cmap, transform)  # labels: model indices
    >>> model = cmap.apply(model)                                           # masked logits
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from tinysaver.errors import DataNotFoundError, TinySaverError
from tinysaver.registry import classifier_source

SYNSET = re.compile(r"n\d{8}")
NUMERIC = re.compile(r"\d+")
KINDS = ("synset", "numeric", "folder-order", "file")


@dataclass(frozen=True)
class ClassMap:
    """Class folders of a split and the model output index each one is.

    Args:
        folders: Folder names, sorted (the order ``ImageFolder`` lists them in).
        indices: The model's class index of each folder (distinct).
        kind: How the mapping was chosen: ``synset``, ``numeric``, ``folder-order`` or ``file``.
        num_classes: The model's number of outputs.
        mask_to_folders: Restrict the logits to the classes in ``indices``.
        source: The timm ImageNet subset (``synset``) or the class-map file (``file``).
    """

    folders: Tuple[str, ...]
    indices: Tuple[int, ...]
    kind: str
    num_classes: int
    mask_to_folders: bool = False
    source: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown class-map kind {self.kind!r} (known: {', '.join(KINDS)})")
        if len(self.folders) != len(self.indices) or not self.folders:
            raise ValueError("a class map needs one index per folder and at least one folder")

    @property
    def class_to_idx(self) -> Dict[str, int]:
        return dict(zip(self.folders, self.indices))

    def with_mask(self, mask_to_folders: bool) -> "ClassMap":
        return replace(self, mask_to_folders=bool(mask_to_folders))

    def describe(self) -> str:
        """One line for the terminal, e.g. ``20 synset folders → ImageNet-1k indices``."""
        n = len(self.folders)
        text = {
            "synset": f"{n} synset folders → {_subset_title(self.source)} indices",
            "numeric": f"{n} numeric folders → class index = folder name",
            "folder-order": f"{n} folders → class index = sorted folder order (custom dataset, "
                            f"{self.num_classes} classes)",
            "file": f"{n} folders → class indices from {self.source}",
        }[self.kind]
        return text + (f"; logits masked to these {n} classes" if self.mask_to_folders else "")

    def signature(self) -> Dict[str, Any]:
        """A small JSON-able summary that changes whenever the mapping does (resume/reuse keys)."""
        digest = hashlib.sha256(json.dumps([self.folders, self.indices]).encode()).hexdigest()[:16]
        return {"kind": self.kind, "folders": len(self.folders), "num_classes": self.num_classes,
                "mask_to_folders": self.mask_to_folders, "sha256": digest}

    def apply(self, model: nn.Module) -> nn.Module:
        """``model`` itself, or wrapped in :class:`MaskedClassifier` when ``mask_to_folders``."""
        if not self.mask_to_folders or isinstance(model, MaskedClassifier):
            return model
        return MaskedClassifier(model, self.indices, self.num_classes)


class MaskedClassifier(nn.Module):
    """Sets the logits of every class outside ``keep`` to -inf, so softmax confidences and the
    argmax are over the kept classes only (the ImageNet-R/-A protocol).

    Args:
        model: Classifier returning logits ``[B, num_classes]``.
        keep: Class indices to keep.
        num_classes: The model's number of outputs.
    """

    def __init__(self, model: nn.Module, keep: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.num_classes = int(num_classes)
        dropped = torch.ones(self.num_classes, dtype=torch.bool)
        dropped[torch.as_tensor(list(keep), dtype=torch.long)] = False
        self.register_buffer("dropped", dropped, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).masked_fill(self.dropped, float("-inf"))

    def extra_repr(self) -> str:
        return f"keep={int((~self.dropped).sum())} of {self.num_classes} classes"


def class_folders(root: os.PathLike | str) -> List[str]:
    """The class folders of ``root`` (sorted, as ``ImageFolder`` lists them)."""
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: no such dataset folder (expected ROOT/<class>/<image>)")
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not folders:
        raise TinySaverError(f"{root}: no class folders (expected ROOT/<class>/<image>)")
    empty = next((f for f in folders if not _has_image(root / f)), None)
    if empty is not None:  # ImageFolder would refuse it later, after other splits were recorded
        raise TinySaverError(f"{root / empty}: class folder {empty!r} has no image "
                             f"({', '.join(IMG_EXTENSIONS)}); remove it or add its images")
    return folders


def _has_image(folder: Path) -> bool:
    """Whether ``folder`` holds at least one file ImageFolder loads (searched as ImageFolder does:
    the whole tree, following links; stops at the first)."""
    with os.scandir(folder) as entries:  # the usual layout: images right there, found at once
        if any(e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file() for e in entries):
            return True
    for _, _, files in os.walk(folder, followlinks=True):
        if any(name.lower().endswith(IMG_EXTENSIONS) for name in files):
            return True
    return False


def resolve_class_map(folders: Sequence[str], num_classes: int, *, root: os.PathLike | str = ".",
                      class_map_file: Optional[os.PathLike | str] = None,
                      mask_to_folders: bool = False) -> ClassMap:
    """Chooses the model index of each class folder (rules in the module docstring).

    Args:
        folders: Class folder names.
        num_classes: The model's number of outputs.
        root: The split folder, for error messages.
        class_map_file: Optional JSON/text file ``folder → index`` that decides instead.
        mask_to_folders: Stored in the map: restrict the logits to these classes.

    Returns:
        The :class:`ClassMap`.

    Examples:
        >>> resolve_class_map(["n01440764", "n01443537"], 1000).indices
        (0, 1)
        >>> resolve_class_map(["0", "10", "2"], 1000).indices
        (0, 10, 2)
    """
    folders = tuple(sorted(folders))
    root = Path(root)
    if class_map_file is not None:
        table = read_class_map_file(class_map_file)
        missing = [f for f in folders if f not in table]
        if missing:
            raise TinySaverError(f"{root / missing[0]}: folder {missing[0]!r} is not in the class map "
                                 f"{class_map_file} ({len(missing)} folder(s) missing)")
        indices, kind, source = [table[f] for f in folders], "file", str(class_map_file)
    elif all(SYNSET.fullmatch(f) for f in folders):
        indices, source = _synset_indices(folders, num_classes, root)
        kind = "synset"
    elif all(NUMERIC.fullmatch(f) for f in folders):
        indices, kind, source = [int(f) for f in folders], "numeric", None
    elif len(folders) == num_classes:
        indices, kind, source = list(range(len(folders))), "folder-order", None
    else:
        raise TinySaverError(_unmappable(folders, num_classes, root))
    _check_indices(folders, indices, num_classes, root, kind, source)
    return ClassMap(folders, tuple(int(i) for i in indices), kind, int(num_classes), bool(mask_to_folders), source)


def folder_class_map(root: os.PathLike | str, num_classes: int, class_map_file: Optional[os.PathLike | str] = None,
                     mask_to_folders: bool = False) -> ClassMap:
    """:func:`resolve_class_map` over the class folders of ``root``."""
    return resolve_class_map(class_folders(root), num_classes, root=root, class_map_file=class_map_file,
                             mask_to_folders=mask_to_folders)


def read_class_map_file(path: os.PathLike | str) -> Dict[str, int]:
    """Reads ``folder → index`` from a JSON object or from text lines ``folder index`` (blank
    lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise TinySaverError(f"{path}: class map file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:  # a binary file, a folder, no permission
        raise TinySaverError(f"{path}: unreadable class map ({type(exc).__name__}); expected a JSON object "
                             f"or UTF-8 text lines 'folder index'") from None
    if text.lstrip().startswith("{"):
        try:
            table = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TinySaverError(f"{path}: invalid JSON ({exc})") from None
        for folder, index in table.items():
            if not isinstance(index, int) or isinstance(index, bool):
                raise TinySaverError(f"{path}: folder {folder!r} maps to {index!r}; expected an integer class index")
        return dict(table)
    table: Dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise TinySaverError(f"{path}:{lineno}: expected 'folder index', got {line!r}")
        if parts[0] in table:
            raise TinySaverError(f"{path}:{lineno}: folder {parts[0]!r} is listed twice")
        table[parts[0]] = int(parts[1])
    if not table:
        raise TinySaverError(f"{path}: empty class map (expected a JSON object or lines 'folder index')")
    return table


def _synset_indices(folders: Sequence[str], num_classes: int, root: Path) -> Tuple[List[int], str]:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": int(num_classes)})
    if subset is None:
        raise TinySaverError(f"{root}: synset folders name ImageNet classes, but the model's {num_classes} outputs "
                             f"are no ImageNet class set timm knows (1000 for ImageNet-1k); pass --class-map FILE")
    lookup = {name: i for i, name in enumerate(ImageNetInfo(subset).label_names())}
    unknown = [f for f in folders if f not in lookup]
    if unknown:
        raise TinySaverError(f"{root / unknown[0]}: synset {unknown[0]!r} is not a class of {_subset_title(subset)} "
                             f"({len(unknown)} such folder(s)); pass --class-map FILE")
    return [lookup[f] for f in folders], subset


def _check_indices(folders: Sequence[str], indices: Sequence[int], num_classes: int, root: Path, kind: str,
                   source: Optional[str]) -> None:
    seen: Dict[int, str] = {}
    for folder, index in zip(folders, indices):
        if not 0 <= index < num_classes:
            where = f" in {source}" if kind == "file" else ""
            raise TinySaverError(f"{root / folder}: folder {folder!r} is class index {index}{where}, outside "
                                 f"0..{num_classes - 1} for the model's {num_classes} classes; pass --class-map FILE")
        if index in seen:
            raise TinySaverError(f"{root / folder}: folders {seen[index]!r} and {folder!r} both map to class {index}")
        seen[index] = folder


def _unmappable(folders: Sequence[str], num_classes: int, root: Path) -> str:
    synsets = sum(bool(SYNSET.fullmatch(f)) for f in folders)
    numerics = sum(bool(NUMERIC.fullmatch(f)) for f in folders)
    if synsets and synsets >= numerics:
        bad = next(f for f in folders if not SYNSET.fullmatch(f))
        why = f"is not an ImageNet synset id like the other {synsets} folder(s)"
    elif numerics:
        bad = next(f for f in folders if not NUMERIC.fullmatch(f))
        why = f"is not a class index like the other {numerics} folder(s)"
    else:
        bad = folders[0]
        why = "is neither an ImageNet synset id nor a class index"
    return (f"{root / bad}: folder {bad!r} {why}, and {len(folders)} folders cannot map by order to the "
            f"model's {num_classes} classes; pass --class-map FILE")


def _subset_title(subset: Optional[str]) -> str:
    return {"imagenet-1k": "ImageNet-1k", "imagenet-12k": "ImageNet-12k", "imagenet-22k": "ImageNet-22k"}.get(
        subset or "", subset or "ImageNet")


class ImageNetFolder(ImageFolder):
    """``ROOT/<class>/<image>`` whose labels are the model's class indices from a :class:`ClassMap`
    (torchvision's ``ImageFolder`` listing and loading, RGB PIL images; ``classes`` stays the
    folder names, ``class_to_idx`` the mapping).

    Args:
        root: The split folder.
        class_map: Folder → model index (see :func:`folder_class_map`).
        transform: Applied to each PIL image.

    Examples:
        >>> ds = ImageNetFolder("val", folder_class_map("val", 1000), transform)
        >>> ds.targets[:3]        # model class indices, not folder positions
    """

    def __init__(self, root: os.PathLike | str, class_map: ClassMap, transform: Optional[Callable] = None) -> None:
        listed = class_folders(root)
        if tuple(listed) != class_map.folders:
            extra = sorted(set(listed) ^ set(class_map.folders))
            raise TinySaverError(f"{Path(root) / extra[0]}: the class map does not list the same folders as {root}")
        self.class_map = class_map
        try:
            super().__init__(str(root), transform=transform)
        except FileNotFoundError as exc:  # a class folder without images
            raise TinySaverError(f"{root}: {exc}") from None

    def find_classes(self, directory: str) -> Tuple[List[str], Dict[str, int]]:
        return list(self.class_map.folders), self.class_map.class_to_idx


def model_num_classes(name: str) -> int:
    """The number of outputs model ``name`` is built with (timm's pretrained config; torchvision
    classifiers have 1000), without building it."""
    if name.startswith("tv:"):
        return 1000
    import timm

    import_module("tinysaver.plugins.timm.zoo")  # registers the local models with timm
    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    if cfg is not None and getattr(cfg, "num_classes", None):
        return int(cfg.num_classes)
    return int(classifier_source("timm").create(name).num_classes)  # locally registered models: build it once


def output_classes(model: nn.Module, input_size: Sequence[int]) -> int:
    """The model's number of outputs: ``num_classes`` when it says, else one forward pass."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    with torch.no_grad():
        return int(model.eval()(torch.zeros(1, *input_size)).shape[-1])


__all__ = ["ClassMap", "MaskedClassifier", "ImageNetFolder", "class_folders", "resolve_class_map",
           "folder_class_map", "read_class_map_file", "model_num_classes", "output_classes"]
