"""Run an exported cascade (:mod:`tinysaver.export`) with onnxruntime and numpy: no PyTorch.

:class:`OnnxCascade` loads ``cascade.json`` and one onnxruntime session per stage and routes each
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
  the way timm's eval transform does (:func:`preprocess_image`): resize the shorter side to
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

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from .errors import TinySaverError
from .routing import Routed, Stage, merge_outputs, route
from .thresholds import check_thresholds

MANIFEST = "cascade.json"  # the same name as tinysaver.export.MANIFEST (export imports torch lazily)
FORMAT, VERSION = "tinysaver-onnx-cascade", 1
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
#: longest side / shortest side of an image ``preprocess_image`` takes: the resize scales the shorter
#: side to the model's size, so a 1 x 20,000 image of a hundred bytes would become 256 x 5,120,000
#: pixels (3.9 GB in RGB) before the crop; no photograph is that elongated
MAX_ASPECT_RATIO = 100


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


class StageSpec(NamedTuple):
    """One stage of ``cascade.json``."""

    name: str
    file: str
    input_size: tuple
    preprocess: Dict[str, Any]
    confidence: str
    gmacs: float
    num_classes: int


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
        _check_file(directory, stage["file"], stage["sha256"])
    return manifest


def _check_file(directory: Path, file: str, sha256: str) -> None:
    path = directory / file
    if not path.is_file():
        raise TinySaverError(f"{path}: stage graph missing")
    if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise TinySaverError(f"{path}: sha256 differs from {MANIFEST} (file changed after export)")


#: thresholds from JSON/CLI values (numbers or "inf"), one per stage but the last
parse_thresholds = check_thresholds


def stage_specs(manifest: Mapping[str, Any]) -> List[StageSpec]:
    return [StageSpec(name=s["name"], file=s["file"], input_size=tuple(s["preprocess"]["input_size"]),
                      preprocess=dict(s["preprocess"]), confidence=s["confidence"], gmacs=float(s["gmacs"]),
                      num_classes=int(s["num_classes"])) for s in manifest["stages"]]


def make_session(path: str | Path, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
                 spinning: bool = True) -> Any:
    """An onnxruntime session; ``threads`` caps its intra-op threads (None: onnxruntime's default);
    ``spinning=False`` lets idle intra-op threads sleep instead of busy-waiting (for processes that
    share their cores, e.g. several server replicas on one machine)."""
    import onnxruntime as ort

    providers = list(providers or ["CPUExecutionProvider"])
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise TinySaverError(f"onnxruntime has no {', '.join(missing)} here (available: "
                             f"{', '.join(ort.get_available_providers())}); for CUDA install onnxruntime-gpu")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers)


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
    if not np.isfinite(x).all():
        raise TinySaverError(f"{what}: contains NaN or infinity")
    return np.ascontiguousarray(x, dtype=np.float32)


class OnnxCascade:
    """An exported cascade on onnxruntime, routed per sample by :func:`tinysaver.routing.route`.

    Args:
        directory: An export directory (``cascade.json`` + stage graphs).
        providers: onnxruntime execution providers (default CPU; ``["CUDAExecutionProvider"]`` with
            onnxruntime-gpu).
        threads: Intra-op threads per session (None: onnxruntime's default, all cores).
        single_graph: Run ``cascade_single.onnx`` (routing inside the graph) instead of the stage
            graphs; needs an export made with ``single_graph=True``.

    Attributes:
        thresholds: One per stage but the last; settable at run time.
        specs: The stages' manifest entries.
    """

    def __init__(self, directory: str | Path, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, single_graph: bool = False) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.specs = stage_specs(self.manifest)
        self._thresholds = parse_thresholds(self.manifest["thresholds"], len(self.specs))
        self.single_graph = single_graph
        if single_graph:
            single = self.manifest.get("single_graph")
            if not single:
                raise TinySaverError(f"{self.directory / MANIFEST}: exported without the single graph "
                                     f"(tinysaver export --single-graph)")
            _check_file(self.directory, single["file"], single["sha256"])
            self._single = make_session(self.directory / single["file"], providers, threads)
        self.models = [StageModel(make_session(self.directory / s.file, providers, threads), s) for s in self.specs]
        self.stages = [Stage(model=m, confidence=s.confidence, name=s.name, gmacs=s.gmacs)
                       for m, s in zip(self.models, self.specs)]

    @property
    def names(self) -> List[str]:
        return [s.name for s in self.specs]

    @property
    def thresholds(self) -> List[float]:
        return list(self._thresholds)

    @thresholds.setter
    def thresholds(self, values: Sequence[Any]) -> None:
        self._thresholds = parse_thresholds(values, len(self.specs))

    @property
    def shared_input(self) -> bool:
        """Whether every stage takes the same preprocessed input (one batch serves them all)."""
        return len({(s.input_size, _preprocess_key(s.preprocess)) for s in self.specs}) == 1

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
        return route(self.stages, batches, thresholds=[*self._thresholds, math.inf])

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
            key = (spec.input_size, _preprocess_key(spec.preprocess))
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
        feeds["thresholds"] = np.asarray(self._thresholds, dtype=np.float64)
        logits, stage, conf = self._single.run(["logits", "stage", "confidence"], feeds)
        return CascadeResult(logits, stage, conf)


def merge(routed: Routed) -> CascadeResult:
    """Each sample's logits from the stage that answered it, in the original order."""
    logits = merge_outputs(routed, lambda y: np.asarray(y, dtype=np.float32))
    return CascadeResult(logits, np.asarray(routed.stage), np.asarray(routed.confidence))


# --- images ---------------------------------------------------------------------------------------
def decode_image(image: Any, what: str = "image", max_pixels: Optional[int] = None,
                 limit: str = "the pixel limit") -> Any:
    """A PIL image from encoded bytes, a PIL image, or a uint8 array ``[H, W]``/``[H, W, 3]``.

    Args:
        max_pixels: Encoded bytes whose header announces more pixels than this are refused before
            anything is decoded (a few kB of PNG can announce 100 million pixels).
        limit: How the error names ``max_pixels``.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            img = Image.open(io.BytesIO(bytes(image)))  # reads the header only
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise TinySaverError(f"{what}: {img.width}x{img.height} pixels would pass {limit}")
            img.load()
            return img
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, ImportError) as exc:
            # ImportError: once ultralytics is imported, PIL.Image.open is its patch, which answers an
            # unidentified image by importing pi_heif (not installed: ModuleNotFoundError)
            raise TinySaverError(f"{what}: cannot decode ({type(exc).__name__})") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise TinySaverError(f"{what}: expected uint8 [H, W] or [H, W, 3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image)
    raise TinySaverError(f"{what}: expected bytes, a PIL image or a uint8 array, got {type(image).__name__}")


def preprocess_image(image: Any, preprocess: Mapping[str, Any]) -> np.ndarray:
    """timm's eval transform in PIL + numpy: float32 ``[C, H, W]``.

    Resize (shorter side to ``floor(size / crop_pct)``; ``squash``: both sides), centre crop to the
    input size, ``/ 255``, ``(x - mean) / std``, all in float32: the operations torchvision applies,
    in its order, so the result equals ``eval_transform(model)(image)``.
    """
    from PIL import Image

    channels, height, width = (int(v) for v in preprocess["input_size"])
    interpolation = preprocess.get("interpolation", "bilinear")
    if interpolation not in _INTERPOLATIONS:
        raise TinySaverError(f"unsupported interpolation {interpolation!r} (supported: {', '.join(_INTERPOLATIONS)})")
    resample = getattr(Image.Resampling, interpolation.upper())
    img = image.convert("L" if channels == 1 else "RGB")
    crop_pct = float(preprocess.get("crop_pct") or 0.875)
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    mode = preprocess.get("crop_mode") or "center"
    if mode == "squash":
        img = img.resize((scale[1], scale[0]), resample)
    elif mode == "center":
        if scale[0] != scale[1]:
            raise TinySaverError("crop_mode 'center' with a non-square input is not supported")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        if long > MAX_ASPECT_RATIO * short:
            raise TinySaverError(f"image of {w}x{h} is more than {MAX_ASPECT_RATIO} times longer than wide: refused "
                                 f"(resizing its shorter side to {scale[0]} px would make it {scale[0] * long // short} "
                                 "px long)")
        new_short, new_long = scale[0], int(scale[0] * long / short)
        img = img.resize((new_short, new_long) if w <= h else (new_long, new_short), resample)
    else:
        raise TinySaverError(f"unsupported crop_mode {mode!r} (supported: center, squash)")
    img = _center_crop(img, height, width)
    x = np.asarray(img, dtype=np.uint8)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    x = x.astype(np.float32) / np.float32(255)
    mean = np.asarray(preprocess["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(preprocess["std"], dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _center_crop(img: Any, height: int, width: int) -> Any:
    w, h = img.size
    if width > w or height > h:
        raise TinySaverError(f"image of {w}x{h} is smaller than the {width}x{height} crop after resizing")
    # torchvision's rounding of the crop origin
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


def _preprocess_key(p: Mapping[str, Any]) -> tuple:
    return tuple((k, json.dumps(p[k], sort_keys=True)) for k in sorted(p))


__all__ = ["OnnxCascade", "CascadeResult", "StageSpec", "StageModel", "read_manifest", "stage_specs", "merge",
           "check_batch", "decode_image", "preprocess_image", "make_session", "parse_thresholds"]
