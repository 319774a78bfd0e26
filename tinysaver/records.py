"""Prediction records: one ``.npz`` file per (model, split), the interchange format of TinySaver.

Format (documented in the README so predictions made anywhere can be brought in):

============  =============  ===========================================================
key           type           meaning
============  =============  ===========================================================
``conf``      float [M]      the model's confidence for each sample (finite)
``pred``      int [M]        its predicted class
``label``     int [M]        the reference label (ground truth, or another model's top-1)
``name``      str scalar     the model's name
``gmacs``     float scalar   its cost per sample in GMACs (one fused multiply-add = 1 MAC)
============  =============  ===========================================================

Optional: ``confidence`` (str scalar, the registered confidence function that produced ``conf``;
``max_softmax`` when absent, which is then range-checked), ``num_classes`` (int scalar; checks
``pred``/``label``), ``logits`` or any other extra array of length M.

Measured latency (written by ``tinysaver record --runtime onnxruntime``; optional, all but
``latency_device`` and ``export_sha256`` together): ``latency_ms`` (float scalar, mean milliseconds
per sample at ``latency_batch_size`` samples per run), ``latency_batch_size`` (int scalar),
``latency_threads`` (int scalar, intra-op threads; 0: the runtime's default), ``runtime`` (str
scalar, e.g. ``onnxruntime 1.17.1 (CPUExecutionProvider)``), ``latency_device`` (str scalar, the
machine it was measured on) and ``export_sha256`` (str scalar, the sha256 of the exported stage
graph that made the record). Analyses weigh ``latency_ms`` instead of ``gmacs`` when asked
(``--cost latency``); latencies measured at other batch sizes, threads, runtimes or machines are
not comparable.

Class map (written by ``tinysaver record`` for folder datasets): ``class_map_folders`` (str [F], the
class folders), ``class_map_index`` (int [F], the model output index of each folder: the labels are
these indices) and ``mask_to_folders`` (bool scalar: logits of the other classes were set to -inf).
Two records whose class maps or mask flags differ do not form a pair.

Samples are matched between models by position: record the same split in the same order.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Sequence, Union

import numpy as np

from .confidence import check_range
from .errors import RecordError
from .io import atomic_open

PathLike = Union[str, os.PathLike]
#: the label of a sample without one (unlabelled data; see :func:`load_record`'s ``labelled``)
UNLABELLED = -1
REQUIRED_ARRAYS = ("conf", "pred", "label")
REQUIRED_SCALARS = ("name", "gmacs")
DEFAULT_CONFIDENCE = "max_softmax"
#: the unit of ``gmacs`` as written in a record (an analysis may weigh measured ms instead)
GMACS_UNIT = "GMACs"
#: the keys of a measured latency that go together (``latency_device`` and ``export_sha256`` are optional)
LATENCY_KEYS = ("latency_ms", "latency_batch_size", "latency_threads", "runtime")


class Latency(NamedTuple):
    """A record's measured cost per sample on a runtime (see the module docstring)."""

    ms: float
    batch_size: int
    threads: int
    runtime: str
    device: str = ""

    @property
    def setting(self) -> Dict[str, Any]:
        """What must agree for two latencies to be comparable: all but ``ms``."""
        return {"batch_size": self.batch_size, "threads": self.threads, "runtime": self.runtime,
                "device": self.device}

    def describe(self) -> str:
        """``onnxruntime 1.17.1 (CPUExecutionProvider), batch 32, 2 threads`` (threads 0: the
        runtime's default)."""
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "default threads"
        return f"{self.runtime}, batch {self.batch_size}, {threads}"


@dataclass
class Record:
    """The predictions of one model on one split.

    Args:
        name: Model name.
        gmacs: Cost per sample in GMACs.
        conf: Confidence per sample, ``[M]``.
        pred: Predicted class per sample, ``[M]``.
        label: Reference label per sample, ``[M]``.
        confidence: Name of the confidence function that produced ``conf``.
        num_classes: Number of classes, when known (validates ``pred`` and ``label``).
        extras: Further arrays of length M (e.g. ``logits``) kept alongside.
        path: Where the record was loaded from (for error messages).
        class_map_folders: Class folder names ``[F]`` of a folder dataset, when known.
        class_map_index: The model class index of each folder ``[F]`` (what the labels are).
        mask_to_folders: The logits were restricted to ``class_map_index`` before confidence and argmax.
        cost_unit: The unit of ``gmacs`` as an analysis weighs it: ``GMACs`` as recorded, or ``ms``
            when a command weighs the measured latency instead (never written to the file).
    """

    name: str
    gmacs: float
    conf: np.ndarray
    pred: np.ndarray
    label: np.ndarray
    confidence: str = DEFAULT_CONFIDENCE
    num_classes: Optional[int] = None
    extras: Dict[str, np.ndarray] = field(default_factory=dict)
    path: Optional[str] = None
    class_map_folders: Optional[np.ndarray] = None
    class_map_index: Optional[np.ndarray] = None
    mask_to_folders: bool = False
    cost_unit: str = GMACS_UNIT

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.conf.shape[0])

    @property
    def correct(self) -> np.ndarray:
        """Boolean ``[M]``: the prediction equals the label."""
        return self.pred == self.label

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def settings(self) -> Dict[str, Any]:
        """How the record was made (``tinysaver record`` stores it); empty for records made elsewhere."""
        text = self.extras.get("recording")
        return json.loads(str(text)) if text is not None else {}

    @property
    def latency(self) -> Optional[Latency]:
        """The measured latency per sample (``latency_ms`` and its setting), or None when not measured."""
        if "latency_ms" not in self.extras:
            return None
        get = lambda key, default=None: np.asarray(self.extras.get(key, default)).item()  # noqa: E731
        return Latency(float(get("latency_ms")), int(get("latency_batch_size")), int(get("latency_threads")),
                       str(get("runtime")), str(get("latency_device", "")))

    def split_name(self, default: str) -> str:
        """The split the record was made on (``test``, ``train_aug``...), else ``default``."""
        split = self.settings.get("split")
        if not split:
            return default
        return f"{split}_aug" if self.settings.get("augment") else str(split)

    def validate(self) -> None:
        """Raises :class:`RecordError` naming the first problem found."""
        fail = lambda problem: RecordError(self.path, problem)  # noqa: E731
        for key in REQUIRED_ARRAYS:
            arr = np.asarray(getattr(self, key))
            if arr.ndim != 1:
                raise fail(f"array {key!r} must be 1-D, got shape {arr.shape}")
            setattr(self, key, arr)
        lengths = {k: len(getattr(self, k)) for k in REQUIRED_ARRAYS}
        lengths.update({k: len(v) for k, v in self.extras.items() if np.ndim(v) >= 1})
        if len(set(lengths.values())) > 1:
            raise fail(f"arrays have different lengths: {lengths}")
        if len(self.conf) == 0:
            raise fail("record is empty (0 samples)")
        if not np.issubdtype(self.conf.dtype, np.floating):
            raise fail(f"'conf' must be float, got {self.conf.dtype}")
        bad = ~np.isfinite(self.conf)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise fail(f"'conf' has {int(bad.sum())} non-finite value(s) (NaN/inf), first at index {i}: {self.conf[i]}")
        for key in ("pred", "label"):
            if not np.issubdtype(getattr(self, key).dtype, np.integer):
                raise fail(f"{key!r} must hold integer class ids, got {getattr(self, key).dtype}")
        # No class has a negative index; the one exception is the label UNLABELLED of unlabelled data
        # (a pipeline that compares with the base's top-1 records it), which analysis refuses.
        for key, lowest in (("pred", 0), ("label", UNLABELLED)):
            arr = getattr(self, key)
            if len(arr) and arr.min() < lowest:
                i = int(np.argmax(arr < lowest))
                raise fail(f"{key!r} holds a negative class id {arr[i]} at index {i}; class ids start at 0"
                           + (f" ({UNLABELLED}: unlabelled)" if key == "label" else ""))
        if self.num_classes is not None and self.num_classes < 1:
            raise fail(f"'num_classes' must be >= 1, got {self.num_classes}")
        if not np.isfinite(self.gmacs) or self.gmacs < 0:
            raise fail(f"'gmacs' must be a finite cost >= 0, got {self.gmacs}")
        out_of_range = check_range(self.confidence, self.conf)
        if out_of_range:
            raise fail(out_of_range)
        if "recording" in self.extras:
            self._validate_recording(fail)
        self._validate_latency(fail)
        if self.num_classes is not None:
            for key in ("pred", "label"):
                arr = getattr(self, key)
                if arr.min() < 0 or arr.max() >= self.num_classes:
                    raise fail(f"{key!r} has class ids in [{arr.min()}, {arr.max()}], outside "
                               f"0..{self.num_classes - 1} for num_classes={self.num_classes}")
        self._validate_class_map(fail)

    def _validate_recording(self, fail) -> None:
        # How `tinysaver record` made the record: a JSON object (read back by ``settings``).
        text = self.extras["recording"]
        try:
            settings = json.loads(str(np.asarray(text).item()))
        except (ValueError, TypeError):
            raise fail("'recording' must be the JSON object `tinysaver record` writes (how the record "
                       "was made); it does not parse") from None
        if not isinstance(settings, dict):
            raise fail(f"'recording' must be a JSON object, got {type(settings).__name__}")

    def _validate_latency(self, fail) -> None:
        # The measured latency (tinysaver record --runtime ...): all its keys, each a scalar of its type.
        present = [k for k in LATENCY_KEYS if k in self.extras]
        if not present:
            return
        if len(present) < len(LATENCY_KEYS):
            missing = [k for k in LATENCY_KEYS if k not in self.extras]
            raise fail(f"a measured latency needs {', '.join(LATENCY_KEYS)} together; missing {', '.join(missing)}")
        # numpy dtype kinds each key accepts: a number (float or int), an int, a str
        kinds = {"latency_ms": ("fiu", "a number"), "latency_batch_size": ("iu", "an int"),
                 "latency_threads": ("iu", "an int"), "runtime": ("U", "a str"), "latency_device": ("U", "a str"),
                 "export_sha256": ("U", "a str")}
        for key, (accepted, what) in kinds.items():
            value = np.asarray(self.extras[key]) if key in self.extras else None
            if value is not None and (value.ndim != 0 or value.dtype.kind not in accepted):
                raise fail(f"{key!r} must be {what} scalar, got {value.dtype} of shape {value.shape}")
        latency = self.latency
        if not (np.isfinite(latency.ms) and latency.ms > 0):
            raise fail(f"'latency_ms' must be a finite time > 0, got {latency.ms}")
        if latency.batch_size < 1 or latency.threads < 0 or not latency.runtime:
            raise fail(f"a measured latency needs latency_batch_size >= 1, latency_threads >= 0 (0: the runtime's "
                       f"default) and a runtime; got {latency.batch_size}, {latency.threads}, {latency.runtime!r}")

    def _validate_class_map(self, fail) -> None:
        if (self.class_map_folders is None) != (self.class_map_index is None):
            raise fail("'class_map_folders' and 'class_map_index' go together")
        self.mask_to_folders = bool(self.mask_to_folders)
        if self.class_map_folders is None:
            if self.mask_to_folders:
                raise fail("'mask_to_folders' is set but there is no class map")
            return
        folders, index = np.asarray(self.class_map_folders), np.asarray(self.class_map_index)
        if folders.ndim != 1 or index.shape != folders.shape or len(folders) == 0:
            raise fail(f"class map needs 1-D 'class_map_folders' and 'class_map_index' of one length, "
                       f"got shapes {folders.shape} and {index.shape}")
        if folders.dtype.kind != "U" or not np.issubdtype(index.dtype, np.integer):
            raise fail(f"class map must be str folders and int indices, got {folders.dtype} and {index.dtype}")
        if len(np.unique(folders)) != len(folders) or len(np.unique(index)) != len(index):
            raise fail("class map lists a folder or a class index twice")
        if self.num_classes is not None and (index.min() < 0 or index.max() >= self.num_classes):
            raise fail(f"'class_map_index' holds {index.min()}..{index.max()}, outside 0..{self.num_classes - 1}")
        if self.mask_to_folders and not np.isin(self.pred, index).all():
            raise fail("'pred' holds classes outside the class map although the logits were masked to it")
        self.class_map_folders, self.class_map_index = folders, index.astype(np.int64)

    @property
    def has_class_map(self) -> bool:
        return self.class_map_folders is not None

    def to_arrays(self) -> Dict[str, Any]:
        arrays: Dict[str, Any] = dict(self.extras)
        arrays.update(conf=self.conf, pred=self.pred, label=self.label, name=np.str_(self.name),
                      gmacs=np.float64(self.gmacs), confidence=np.str_(self.confidence))
        if self.num_classes is not None:
            arrays["num_classes"] = np.int64(self.num_classes)
        if self.has_class_map:
            arrays.update(class_map_folders=self.class_map_folders, class_map_index=self.class_map_index,
                          mask_to_folders=np.bool_(self.mask_to_folders))
        return arrays


def save_record(path: PathLike, record: Record) -> Path:
    """Writes ``record`` to ``path`` (``.npz``) atomically: temp file in the same folder + rename.

    Examples:
        >>> rec = Record("tiny", 0.1, np.array([0.9]), np.array([1]), np.array([1]))
        >>> save_record("tiny_val.npz", rec)  # doctest: +SKIP
    """
    path = Path(path)
    with atomic_open(path, "wb") as f:
        np.savez(f, **record.to_arrays())
    return path


def read_npz(path: PathLike, required: Sequence[str], kind: str = "record") -> Dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, after checking it exists, reads and holds ``required``;
    every problem is a :class:`RecordError` naming the file (records of any kind share this)."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        # allow_pickle=False: an object array (a pickle) is refused, never unpickled.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError(f"a single {type(loaded).__name__} (.npy), not an .npz archive of named arrays")
        with loaded as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise RecordError(path, f"unreadable {kind} ({type(exc).__name__}: {reason}); expected an .npz "
                                f"with arrays {', '.join(required)}") from None
    missing = [k for k in required if k not in data]
    if missing:
        raise RecordError(path, f"missing array(s) {', '.join(map(repr, missing))} "
                                f"(found: {', '.join(sorted(data)) or 'nothing'})")
    return data


def load_record(path: PathLike, labelled: bool = False) -> Record:
    """Reads and validates a record; every problem is a :class:`RecordError` naming the file.

    Args:
        path: The ``.npz`` file.
        labelled: Refuse a record of unlabelled data (labels :data:`UNLABELLED`): accuracies
            computed against placeholder labels would all be 0 (the analysis commands ask for this).
    """
    data = read_npz(path, REQUIRED_ARRAYS + REQUIRED_SCALARS)
    try:
        name = str(data.pop("name").item())
        gmacs = float(data.pop("gmacs"))
        confidence = str(data.pop("confidence").item()) if "confidence" in data else DEFAULT_CONFIDENCE
        num_classes = int(data.pop("num_classes")) if "num_classes" in data else None
        mask_to_folders = bool(data.pop("mask_to_folders")) if "mask_to_folders" in data else False
    except (TypeError, ValueError) as exc:
        raise RecordError(path, f"bad scalar field: {exc}") from None
    arrays = {k: data.pop(k) for k in REQUIRED_ARRAYS}
    class_map = {k: data.pop(k) for k in ("class_map_folders", "class_map_index") if k in data}
    rec = Record(name=name, gmacs=gmacs, confidence=confidence, num_classes=num_classes,
                 extras=data, path=str(path), mask_to_folders=mask_to_folders, **class_map, **arrays)
    if labelled and (rec.label == UNLABELLED).any():
        raise RecordError(path, f"the record holds unlabelled samples (label {UNLABELLED}, e.g. index "
                                f"{int(np.argmax(rec.label == UNLABELLED))}): accuracies need labels (or a reference "
                                f"model's top-1 as labels, as PipelineConfig(reference='base') records them)")
    return rec


def class_map_difference(a: Record, b: Record) -> Optional[str]:
    """How the class maps of two records differ (a phrase), or None when they agree.

    A record without a class map (made elsewhere, or before maps were stored) agrees with any map
    on that score: its labels are then checked on their own.
    """
    if a.mask_to_folders != b.mask_to_folders:
        on_off = lambda r: "on" if r.mask_to_folders else "off"  # noqa: E731
        return f"logit masking to the folders' classes differs ({on_off(a)} vs {on_off(b)})"
    if not (a.has_class_map and b.has_class_map):
        return None
    mine = dict(zip(a.class_map_folders.tolist(), a.class_map_index.tolist()))
    theirs = dict(zip(b.class_map_folders.tolist(), b.class_map_index.tolist()))
    if mine == theirs:
        return None
    only = sorted(set(mine) ^ set(theirs))
    if only:
        return f"the class folders differ ({len(mine)} vs {len(theirs)} folders; {only[0]!r} is in only one)"
    folder = next(f for f in sorted(mine) if mine[f] != theirs[f])
    return f"the class maps differ (folder {folder!r} is class {mine[folder]} vs {theirs[folder]})"


def check_pair(saver: Record, base: Record) -> None:
    """Checks that two records describe the same samples (same length, same class map, same labels)."""
    differ_map = class_map_difference(saver, base)
    if differ_map:
        raise RecordError(saver.path, f"{differ_map} from the base record {base.path}: record both models on the "
                                      f"same folders with the same --class-map/--mask-to-folders")
    if len(saver) != len(base):
        raise RecordError(saver.path, f"has {len(saver)} samples but the base record {base.path} has "
                                      f"{len(base)}: record both models on the same split")
    differ = saver.label != base.label
    if differ.any():
        i = int(np.flatnonzero(differ)[0])
        raise RecordError(saver.path, f"labels differ from the base record {base.path} at "
                                      f"{int(differ.sum())} sample(s), first at index {i} "
                                      f"({saver.label[i]} vs {base.label[i]}): the samples are not in the same order")
