"""Exported cascades without PyTorch: the export format, image preprocessing, runtime backends and
:class:`OnnxCascade`.

- :mod:`~tinysaver.runtime.manifest`: ``cascade.json`` (format, checks, :class:`StageSpec`);
- :mod:`~tinysaver.runtime.preprocess`: image decoding and timm's eval transform in PIL + numpy;
- :mod:`~tinysaver.runtime.backends`: the registry of runtimes (onnxruntime first); every session is
  built there, so a TensorRT/OpenVINO runtime is one registered class;
- :mod:`~tinysaver.runtime.cascade`: :class:`OnnxCascade`, routed by :func:`tinysaver.routing.route`;
- :mod:`~tinysaver.runtime.recording`: records an exported stage on a dataset as it runs (its own
  preprocessing and confidence, plus its measured latency): ``tinysaver record --runtime onnxruntime``;
- :mod:`~tinysaver.runtime.export`: writes an export directory from a torch cascade (imports torch
  and onnx inside its functions only).

Importing this package never imports torch (``tests/test_export.py`` checks it).

May import: the core (errors, io, registry, routing, thresholds, confidence, records) and, inside
:mod:`~tinysaver.runtime.export`'s functions only, the torch layer (models).
"""
from __future__ import annotations

from .backends import BACKENDS, DEFAULT_BACKEND, Backend, get_backend, make_session
from .cascade import CascadeResult, OnnxCascade, StageModel, check_batch, merge
from .manifest import FORMAT, MANIFEST, VERSION, StageSpec, read_manifest, stage_specs
from .preprocess import MAX_ASPECT_RATIO, decode_image, preprocess_image

__all__ = ["OnnxCascade", "CascadeResult", "StageSpec", "StageModel", "read_manifest", "stage_specs", "merge",
           "check_batch", "decode_image", "preprocess_image", "make_session", "MAX_ASPECT_RATIO", "MANIFEST",
           "FORMAT", "VERSION", "BACKENDS", "DEFAULT_BACKEND", "Backend", "get_backend"]
