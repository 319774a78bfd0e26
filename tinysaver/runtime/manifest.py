"""``cascade.json``, the manifest of an export directory (:mod:`tinysaver.runtime.export`): its
format, its checks (format, version, one threshold per stage but the last, every stage file present
with its sha256, a precision the runtime runs) and each stage's entry as a :class:`StageSpec`.

Each stage says its ``precision`` (:data:`PRECISIONS`; a manifest written before precisions existed
has none: its stages are fp32). Every precision keeps the graph's float32 input and output.

Numpy-free and torch-free: the exporter, the runtime and the server all read it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence

from ..errors import TinySaverError
from ..io import write_json
from ..thresholds import check_thresholds, threshold_to_json

MANIFEST = "cascade.json"
FORMAT, VERSION = "tinysaver-onnx-cascade", 1
#: every stage graph's input and output names
INPUT, OUTPUT = "input", "logits"
#: the precisions a stage graph may have (:mod:`tinysaver.runtime.quantize`); the first is the default
PRECISIONS = ("fp32", "fp16", "int8")


class StageSpec(NamedTuple):
    """One stage of ``cascade.json``."""

    name: str
    file: str
    input_size: tuple
    preprocess: Dict[str, Any]
    confidence: str
    gmacs: float
    num_classes: int
    precision: str = PRECISIONS[0]


def read_manifest(directory: str | Path) -> Dict[str, Any]:
    """``cascade.json`` of an export directory, checked (format, version, one threshold per stage
    but the last, every stage file present with its sha256)."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise TinySaverError(f"{path}: not found (write it with `tinysaver export`)") from None
    except ValueError as exc:
        raise TinySaverError(f"{path}: not JSON ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise TinySaverError(f"{path}: not a {FORMAT} v{VERSION} manifest")
    stages = manifest.get("stages") or []
    if len(stages) < 2 or len(manifest.get("thresholds", [])) != len(stages) - 1:
        raise TinySaverError(f"{path}: needs >= 2 stages and one threshold per stage but the last")
    for stage in stages:
        check_file(directory, stage["file"], stage["sha256"])
        precision = stage.get("precision", PRECISIONS[0])
        if precision not in PRECISIONS:
            raise TinySaverError(f"{path}: stage {stage.get('name')!r} has precision {precision!r}, which this "
                                 f"runtime does not run (it runs {', '.join(PRECISIONS)})")
    return manifest


def write_thresholds(directory: str | Path, thresholds: Sequence[float], calibration: Mapping[str, Any]) -> Dict[str, Any]:
    """Sets an export's thresholds (``cascade.json`` rewritten whole or not at all; the graphs are
    untouched: the single graph, if any, takes its thresholds as an input).

    Args:
        thresholds: One per stage but the last, checked (never NaN).
        calibration: How they were chosen (stored as the manifest's ``calibration``; JSON-ready).

    Returns:
        The new manifest.
    """
    manifest = read_manifest(directory)
    values = check_thresholds(list(thresholds), len(manifest["stages"]))
    manifest["thresholds"] = [threshold_to_json(t) for t in values]
    manifest["calibration"] = dict(calibration)
    write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def check_file(directory: Path, file: str, sha256: str) -> None:
    """Refuses a stage file that is missing or whose sha256 is not the manifest's."""
    path = directory / file
    if not path.is_file():
        raise TinySaverError(f"{path}: stage graph missing")
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise TinySaverError(f"{path}: sha256 differs from {MANIFEST} (file changed after export)")


def stage_specs(manifest: Mapping[str, Any]) -> List[StageSpec]:
    return [StageSpec(name=s["name"], file=s["file"], input_size=tuple(s["preprocess"]["input_size"]),
                      preprocess=dict(s["preprocess"]), confidence=s["confidence"], gmacs=float(s["gmacs"]),
                      num_classes=int(s["num_classes"]), precision=s.get("precision", PRECISIONS[0]))
            for s in manifest["stages"]]


def preprocess_key(p: Mapping[str, Any]) -> tuple:
    """A hashable key of a stage's preprocessing: stages with equal keys take the same input."""
    return tuple((k, json.dumps(p[k], sort_keys=True)) for k in sorted(p))


__all__ = ["MANIFEST", "FORMAT", "VERSION", "INPUT", "OUTPUT", "PRECISIONS", "StageSpec", "read_manifest", "check_file",
           "stage_specs", "preprocess_key", "write_thresholds"]
