"""Records of an exported stage as it runs: its predictions on a dataset through the export's own
preprocessing, graph and confidence function, plus its measured latency (:mod:`tinysaver.records`).

A record of a stage graph is what the deployed cascade computes (float32 graph confidences differ
from PyTorch's by a few 1e-6; a quantized graph's by more), so thresholds chosen on it are the ones
:class:`~tinysaver.runtime.OnnxCascade` reproduces, and its ``latency_ms`` is what the stage costs
on this runtime and machine.

- Preprocessing: each image (a PIL image, encoded bytes or a uint8 array, as the dataset gives it)
  goes through :func:`~tinysaver.runtime.preprocess.preprocess_image` with the stage's manifest
  ``preprocess``, as :meth:`OnnxCascade.predict_images` does.
- Confidence: the stage's registered confidence function on its logits (float64), as the cascade's
  routing computes it; ``pred`` is the logits' argmax.
- Latency: measured on the recording runs themselves. Every batch of ``batch_size`` images is one
  session run; the first batch is run once more before, untimed (warm-up: allocations, kernel
  choice). ``latency_ms`` is the wall time of the timed session runs (``time.perf_counter``, the
  graph alone: neither decoding, preprocessing nor the confidence) divided by the samples they
  ran, over the full batches only (a last, smaller batch is not timed; when the whole split is
  smaller than one batch, that batch is timed and ``latency_batch_size`` is its size).

Examples:
    >>> from tinysaver.runtime.recording import record_stage
    >>> record = record_stage("outputs/exported/fmnist_s_l", "fmnist_cnn_s", samples, batch_size=32,
    ...                       threads=1)                                          # doctest: +SKIP
    >>> record.latency.ms, record.latency.describe()                              # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..confidence import build_confidence
from ..errors import RecordError, TinySaverError
from ..records import Record
from .backends import DEFAULT_BACKEND, make_session
from .cascade import StageModel
from .manifest import MANIFEST, StageSpec, read_manifest, stage_specs
from .preprocess import decode_image, preprocess_image


def find_stage(directory: str | Path, name: str) -> Tuple[StageSpec, Dict[str, Any]]:
    """The stage ``name`` of an export directory: its :class:`StageSpec` and its manifest entry
    (``file``, ``sha256``, ``precision`` when the export states one). An unknown name is refused
    with the stages it has."""
    manifest = read_manifest(directory)
    for spec, entry in zip(stage_specs(manifest), manifest["stages"]):
        if spec.name == name:
            return spec, dict(entry)
    known = ", ".join(s["name"] for s in manifest["stages"])
    raise TinySaverError(f"{Path(directory) / MANIFEST}: no stage named {name!r} (stages: {known})")


def runtime_label(session: Any, backend: Optional[str] = None) -> str:
    """``onnxruntime 1.17.1 (CPUExecutionProvider)``: the runtime, its version and the devices the
    session really runs on; another backend is named as registered."""
    name = backend or DEFAULT_BACKEND
    if name != DEFAULT_BACKEND:
        return name
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} ({', '.join(session.get_providers())})"


def device_label() -> str:
    """The machine a latency was measured on: architecture, CPU model and logical CPUs."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return " ".join(part for part in (platform.machine(), model, f"({os.cpu_count()} CPUs)") if part)


def record_stage(directory: str | Path, stage: str, samples: Sequence[Tuple[Any, int]], *, batch_size: int = 32,
                 threads: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                 backend: Optional[str] = None, limit: Optional[int] = None, save_logits: bool = False,
                 class_map: Any = None, settings: Optional[Dict[str, Any]] = None) -> Record:
    """Records the exported stage ``stage`` of ``directory`` on ``samples`` (see the module docstring).

    Args:
        directory: An export directory (``cascade.json`` + stage graphs).
        stage: The stage's name in the manifest (the record's ``name``, so that it pairs with the
            other models' records).
        samples: ``(image, label)`` items: images as :func:`~tinysaver.runtime.preprocess.decode_image`
            takes them (PIL images, encoded bytes, uint8 arrays), labels the model's class ids.
        batch_size: Images per session run (the batch size ``latency_ms`` is measured at).
        threads: Intra-op threads of the session (None: the runtime's default, stored as 0).
        providers: onnxruntime execution providers (default CPU).
        backend: A registered runtime backend (default onnxruntime).
        limit: Record only the first ``limit`` samples.
        save_logits: Keep the logits in the record (``logits``).
        class_map: A folder dataset's class map (``folders``, ``indices``), stored in the record.
        settings: Further settings stored in the record's ``recording`` JSON (data, split...).
    """
    if batch_size < 1 or (threads is not None and threads < 1) or (limit is not None and limit < 1):
        raise TinySaverError(f"batch size, threads and limit must be >= 1, got {batch_size}, {threads}, {limit}")
    spec, entry = find_stage(directory, stage)
    n = len(samples) if limit is None else min(len(samples), limit)
    if n == 0:
        raise TinySaverError("no samples to record")
    session = make_session(Path(directory) / spec.file, providers, threads, backend=backend)
    model, confidence = StageModel(session, spec), build_confidence(spec.confidence)
    timed_batch = batch_size if n >= batch_size else n
    conf, pred, label, logits_kept = [], [], [], []
    elapsed, timed = 0.0, 0
    for start in range(0, n, batch_size):
        items = [samples[i] for i in range(start, min(n, start + batch_size))]
        x = np.stack([preprocess_image(decode_image(image, f"sample {start + j}"), spec.preprocess)
                      for j, (image, _) in enumerate(items)])
        if start == 0:
            model(x)  # warm-up, untimed
        begin = time.perf_counter()
        logits = model(x)
        seconds = time.perf_counter() - begin
        if len(x) == timed_batch:
            elapsed, timed = elapsed + seconds, timed + len(x)
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape != (len(x), spec.num_classes):
            raise TinySaverError(f"{spec.file}: the graph answered shape {list(logits.shape)} for {len(x)} images "
                                 f"(expected [{len(x)}, {spec.num_classes}] logits)")
        conf.append(np.asarray(confidence(logits), dtype=np.float64))
        pred.append(logits.argmax(axis=1).astype(np.int64))
        label.append(np.asarray([int(lab) for _, lab in items], dtype=np.int64))
        if save_logits:
            logits_kept.append(logits.astype(np.float32))
    threads_used = int(threads or 0)
    runtime = runtime_label(session, backend)
    meta = {"runtime": backend or DEFAULT_BACKEND, "export": str(directory), "stage": stage, "file": spec.file,
            "sha256": entry["sha256"], "precision": entry.get("precision", "fp32"), "batch_size": batch_size,
            "threads": threads_used, "providers": list(providers or []), "limit": limit, **(settings or {})}
    extras: Dict[str, Any] = {
        "recording": np.str_(json.dumps(meta, sort_keys=True)),
        "latency_ms": np.float64(elapsed * 1000.0 / timed), "latency_batch_size": np.int64(timed_batch),
        "latency_threads": np.int64(threads_used), "runtime": np.str_(runtime),
        "latency_device": np.str_(device_label()), "export_sha256": np.str_(entry["sha256"])}
    if save_logits:
        extras["logits"] = np.concatenate(logits_kept)
    maps: Dict[str, Any] = {}
    if class_map is not None:
        maps = dict(class_map_folders=np.asarray(class_map.folders, dtype=str),
                    class_map_index=np.asarray(class_map.indices, dtype=np.int64))
    return Record(name=stage, gmacs=spec.gmacs, conf=np.concatenate(conf), pred=np.concatenate(pred),
                  label=np.concatenate(label), confidence=spec.confidence, num_classes=spec.num_classes,
                  extras=extras, **maps)


def check_record_export(record: Record, directory: str | Path) -> None:
    """Refuses a record that was not made on this export's graph of its stage (its ``export_sha256``
    differs from the manifest's, or it has none: a PyTorch record or one made elsewhere)."""
    spec, entry = find_stage(directory, record.name)
    made_on = record.extras.get("export_sha256")
    if made_on is None:
        raise RecordError(record.path, f"was not recorded on an exported graph (no export_sha256); record "
                                       f"{record.name!r} on {directory} with the runtime")
    if str(np.asarray(made_on).item()) != entry["sha256"]:
        raise RecordError(record.path, f"was recorded on another graph of {record.name!r} (sha256 "
                                       f"{str(np.asarray(made_on).item())[:12]}…) than {Path(directory) / spec.file} "
                                       f"({entry['sha256'][:12]}…): record it again on this export")


__all__ = ["find_stage", "record_stage", "check_record_export", "runtime_label", "device_label"]
