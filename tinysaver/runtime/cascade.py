"""Run an exported cascade (:mod:`tinysaver.runtime.export`) with onnxruntime and numpy: no PyTorch.

:class:`OnnxCascade` loads ``cascade.json`` and one session per stage (onnxruntime, or another
backend of :mod:`tinysaver.runtime.backends`) and routes each
batch with :func:`tinysaver.routing.route`, the routine the PyTorch :class:`~tinysaver.Cascade`
runs: stage 1 answers every sample whose confidence (the registered numpy confidence function, in
float64) reaches its threshold, the open samples are gathered into one batch for the next stage,
and the answers are merged back in order. Importing this module never imports torch.

Inputs:

- preprocessed batches: float32 ``[B, C, H, W]``, one for every stage (when the stages share one
  input shape) or one per stage (``cascade(x0, x1, ...)``), normalised as each stage's data config
  says; or
- images (:meth:`OnnxCascade.predict_images`): encoded bytes (JPEG, PNG, anything PIL decodes),
  PIL images, or uint8 arrays ``[H, W]``/``[H, W, 3]``. Each stage preprocesses the decoded image
  the way timm's eval transform does (:func:`~tinysaver.runtime.preprocess.preprocess_image`): resize the shorter side to
  ``floor(size / crop_pct)`` with the config's interpolation (PIL), centre crop, scale to [0, 1],
  normalise with mean/std. Supported ``crop_mode`` s: ``center`` and ``squash``; interpolations:
  ``nearest``, ``bilinear``, ``bicubic``, ``lanczos``, ``box``, ``hamming``.

Examples:
    >>> cascade = OnnxCascade("outputs/exported/fmnist_s_l")                         # doctest: +SKIP
    >>> out = cascade(batch)                 # float32 [B, 1, 28, 28]         # doctest: +SKIP
    >>> out.logits.argmax(1), out.stage, out.confidence                      # doctest: +SKIP
    >>> out = cascade.predict_images([open("shirt.png", "rb").read()])       # doctest: +SKIP
    >>> cascade.thresholds = [0.95]          # at run time                   # doctest: +SKIP
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from ..errors import TinySaverError
from ..routing import Routed, Stage, merge_outputs, route
from ..thresholds import ThresholdsMixin
from .backends import make_session
from .manifest import MANIFEST, StageSpec, check_file, preprocess_key, read_manifest, stage_specs
from .preprocess import decode_image, preprocess_image


class CascadeResult(NamedTuple):
    """Merged answers in the original sample order (numpy twin of ``CascadeOutput``).

    Attributes:
        logits: ``[B, C]`` float32: each sample's logits from the stage that answered it.
        stage: ``[B]`` int64: index of the answering stage.
        confidence: ``[B]`` float64: the answering stage's confidence.
    """

    logits: np.ndarray
    stage: np.ndarray
    confidence: np.ndarray


class StageModel:
    """A stage graph as a callable ``float32 [B, C, H, W] -> logits [B, classes]``.

    Args:
        session: Its onnxruntime session.
        spec: Its manifest entry (for the input check).
        max_batch: Largest batch one session run gets; a larger batch runs in slices of this size
            (None: whole). On a CPU a large batch can cost more per sample than a small one (its
            activations leave the cache): measure, e.g. with ``bench/bench_serve.py``'s
            per-batch times. Each sample's logits do not depend on the slicing.
    """

    def __init__(self, session: Any, spec: StageSpec, max_batch: Optional[int] = None) -> None:
        self.session, self.spec, self.max_batch = session, spec, max_batch
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.max_batch is None or len(x) <= self.max_batch:
            return self._run(x)
        return np.concatenate([self._run(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


def check_batch(x: Any, input_size: Sequence[int], what: str = "input") -> np.ndarray:
    """A preprocessed batch as C-contiguous float32 ``[B, C, H, W]``, or a one-line error.

    Float64 is narrowed to float32 (its values are what a float32 model sees anyway); any other
    dtype, another shape, or a non-finite value is refused.
    """
    if not isinstance(x, np.ndarray):
        raise TinySaverError(f"{what}: expected a numpy array, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TinySaverError(f"{what}: dtype {x.dtype} (expected float32)")
    want = tuple(int(v) for v in input_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise TinySaverError(f"{what}: shape {list(x.shape)} (expected [batch, {', '.join(map(str, want))}])")
    if len(x) == 0:
        raise TinySaverError(f"{what}: empty batch")
    with np.errstate(over="ignore"):  # float64 beyond float32's range narrows to inf: refused below
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise TinySaverError(f"{what}: contains NaN or infinity (in float32, which the model computes in)")
    return x


class OnnxCascade(ThresholdsMixin):
    """An exported cascade on onnxruntime (or another registered backend), routed per sample by
    :func:`tinysaver.routing.route`.

    Args:
        directory: An export directory (``cascade.json`` + stage graphs).
        providers: onnxruntime execution providers (default CPU; ``["CUDAExecutionProvider"]`` with
            onnxruntime-gpu).
        threads: Intra-op threads per session (None: onnxruntime's default, all cores).
        single_graph: Run ``cascade_single.onnx`` (routing inside the graph) instead of the stage
            graphs; needs an export made with ``single_graph=True``.
        backend: The runtime backend (:mod:`tinysaver.runtime.backends`; default onnxruntime).

    Attributes:
        thresholds: One per stage but the last; settable at run time (checked, never NaN).
        specs: The stages' manifest entries.
    """

    def __init__(self, directory: str | Path, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, single_graph: bool = False, backend: Optional[str] = None) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.specs = stage_specs(self.manifest)
        self.thresholds = self.manifest["thresholds"]
        self.single_graph = single_graph
        if single_graph:
            single = self.manifest.get("single_graph")
            if not single:
                raise TinySaverError(f"{self.directory / MANIFEST}: exported without the single graph "
                                     f"(tinysaver export --single-graph)")
            check_file(self.directory, single["file"], single["sha256"])
            self._single = make_session(self.directory / single["file"], providers, threads, backend=backend)
        self.models = [StageModel(make_session(self.directory / s.file, providers, threads, backend=backend), s)
                       for s in self.specs]
        self.stages = [Stage(model=m, confidence=s.confidence, name=s.name, gmacs=s.gmacs)
                       for m, s in zip(self.models, self.specs)]

    @property
    def num_stages(self) -> int:
        return len(self.specs)

    @property
    def names(self) -> List[str]:
        return [s.name for s in self.specs]

    @property
    def shared_input(self) -> bool:
        """Whether every stage takes the same preprocessed input (one batch serves them all)."""
        return len({(s.input_size, preprocess_key(s.preprocess)) for s in self.specs}) == 1

    def __call__(self, *inputs: np.ndarray) -> CascadeResult:
        """Args:
            *inputs: One float32 batch for every stage (stages sharing one input spec), or one batch
                per stage (rows are the same samples).
        """
        batches = self._batches(inputs)
        if self.single_graph:
            return self._run_single(batches)
        return merge(self.route(batches))

    def route(self, batches: Sequence[np.ndarray]) -> Routed:
        """The routing of one batch (each stage's run, answered rows), checked per stage."""
        return route(self.stages, batches, thresholds=[*self.thresholds, math.inf])

    def predict_images(self, images: Sequence[Any]) -> CascadeResult:
        """Answers images (bytes, PIL images, uint8 arrays): each stage sees its own preprocessing of
        one decode."""
        return self(*self.preprocess_images(images))

    def preprocess_images(self, images: Sequence[Any]) -> List[np.ndarray]:
        """One float32 batch per stage, each preprocessed as that stage's data config says."""
        if len(images) == 0:
            raise TinySaverError("no images")
        decoded = [decode_image(img, f"image {i}") for i, img in enumerate(images)]
        out: Dict[Any, np.ndarray] = {}
        batches = []
        for spec in self.specs:  # stages sharing a preprocessing share one batch
            key = (spec.input_size, preprocess_key(spec.preprocess))
            if key not in out:
                out[key] = np.stack([preprocess_image(img, spec.preprocess) for img in decoded])
            batches.append(out[key])
        return batches

    def _batches(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        if len(inputs) == 1:
            if not self.shared_input:
                raise TinySaverError("the stages take different inputs: give one batch per stage "
                                     f"({', '.join(str(list(s.input_size)) for s in self.specs)})")
            x = check_batch(inputs[0], self.specs[0].input_size)
            return [x] * len(self.specs)
        if len(inputs) != len(self.specs):
            raise TinySaverError(f"give one batch, or one per stage ({len(self.specs)}); got {len(inputs)}")
        batches = [check_batch(x, s.input_size, f"input {k} ({s.name})") for k, (x, s) in enumerate(zip(inputs, self.specs))]
        if len({len(b) for b in batches}) != 1:
            raise TinySaverError(f"the stage batches have different lengths: {[len(b) for b in batches]}")
        return batches

    def _run_single(self, batches: Sequence[np.ndarray]) -> CascadeResult:
        feeds = {f"input_{k}": b for k, b in enumerate(batches)}
        feeds["thresholds"] = np.asarray(self.thresholds, dtype=np.float64)
        logits, stage, conf = self._single.run(["logits", "stage", "confidence"], feeds)
        return CascadeResult(logits, stage, conf)


def merge(routed: Routed) -> CascadeResult:
    """Each sample's logits from the stage that answered it, in the original order."""
    logits = merge_outputs(routed, lambda y: np.asarray(y, dtype=np.float32))
    return CascadeResult(logits, np.asarray(routed.stage), np.asarray(routed.confidence))


__all__ = ["OnnxCascade", "CascadeResult", "StageModel", "merge", "check_batch"]
