"""Exported cascades without PyTorch: the export format, image preprocessing, runtime backends and
:class:`OnnxCascade`.

- :mod:`~tinysaver.runtime.manifest`: ``cascade.json`` (format, checks, :class:`StageSpec`);
- :mod:`~tinysaver.runtime.preprocess`: image decoding and timm's eval transform in PIL + numpy;
- :mod:`~tinysaver.runtime.backends`: the registry of runtimes (onnxruntime first); every session is
  built there, so a TensorRT/OpenVINO runtime is one registered class;
- :mod:`~tinysaver.runtime.cascade`: :class:`OnnxCascade`, routed by :func:`tinysaver.routing.route`;
- :mod:`~tinysaver.runtime.quantize`: stage graphs in int8 (onnxruntime's static QDQ quantization,
  calibrated on a named split through the registry's datasets) or fp16, checked by their top-1
  agreement with the fp32 graph (imports onnxruntime and onnx inside its functions only);
- :mod:`~tinysaver.runtime.recording`: records an exported stage on a dataset as it runs (its own
  preprocessing and confidence, plus its measured latency): ``tinysaver record --runtime onnxruntime``;
- :mod:`~tinysaver.runtime.export`: writes an export directory from a torch cascade (imports torch
  and onnx inside its functions only).

Importing this package never imports torch (``tests/test_export.py`` checks it).

May import: the core (errors, io, registry, routing, thresholds, confidence, records) and, inside
:mod:`~tinysaver.runtime.export`'s functions only, the torch layer (models). Calibration images
come through the core's dataset registry (:func:`tinysaver.registry.dataset_source`), never from a
plugin imported by name.
"""
from __future__ import annotations

from .backends import BACKENDS, DEFAULT_BACKEND, Backend, get_backend, make_session
from .cascade import CascadeResult, OnnxCascade, StageModel, check_batch, merge
from .manifest import FORMAT, MANIFEST, PRECISIONS, VERSION, StageSpec, read_manifest, stage_specs
from .preprocess import MAX_ASPECT_RATIO, decode_image, preprocess_image
from .quantize import Calibration

__all__ = ["OnnxCascade", "CascadeResult", "StageSpec", "StageModel", "read_manifest", "stage_specs", "merge",
           "check_batch", "decode_image", "preprocess_image", "make_session", "MAX_ASPECT_RATIO", "MANIFEST",
           "FORMAT", "VERSION", "BACKENDS", "DEFAULT_BACKEND", "Backend", "get_backend", "PRECISIONS", "Calibration"]
