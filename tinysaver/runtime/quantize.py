"""Stage graphs in lower precision: ``int8`` (onnxruntime's static QDQ quantization, calibrated on
images of a named split) and ``fp16``, each checked against the fp32 graph it was made from.

:func:`tinysaver.runtime.export.export_cascade` exports every stage as fp32 (checked against
PyTorch), then converts the stages asked for here:

- ``int8``: :func:`onnxruntime.quantization.quantize_static`, ``QuantFormat.QDQ``, int8 weights
  per output channel, int8 activations per tensor with MinMax ranges collected on the calibration
  images. Each stage's calibration inputs are the split's images through that stage's own export
  preprocessing (:func:`~tinysaver.runtime.preprocess.preprocess_image`), so they equal what the
  runtime feeds it. ``quant_pre_process`` (onnxruntime's shape inference + graph optimisation) is
  not run: it did not help (fmnist_cnn_s: the same int8 logits on the 10,000 test images;
  EfficientNet-Lite0: the same top-1 on 20 ImageNet photos and 256 photo crops), and the
  TorchScript exporter already folds batch norms into the convolutions.
- ``fp16``: onnxruntime's float16 converter (``onnxruntime.transformers.float16``, shipped with
  onnxruntime; a maintained copy of onnxconverter-common's), float32 inputs and outputs kept.

Both keep the graph's float32 input and output, so :class:`~tinysaver.runtime.OnnxCascade` and
``tinysaver serve`` run them unchanged. A converted graph is checked by its **top-1 agreement**
with the fp32 graph on the calibration images (fp16 without calibration images: on seeded random
inputs); the agreement is stored in the manifest, and an agreement below :data:`MIN_AGREEMENT` (a
broken conversion) is refused.

Examples:
    >>> calib = Calibration("fashion_mnist", "holdout", limit=512)
    >>> export_cascade(cascade, "outputs/exported/fmnist_s_l_int8", precision=["int8", "fp32"],
    ...                calib=calib)                                                # doctest: +SKIP
"""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import TinySaverError
from ..registry import dataset_source
from .backends import get_backend
from .manifest import INPUT, OUTPUT, PRECISIONS, preprocess_key
from .preprocess import preprocess_image

#: calibration images used unless told otherwise
DEFAULT_CALIB_LIMIT = 512
#: a converted graph agreeing with its fp32 graph on fewer top-1 answers than this is refused
MIN_AGREEMENT = 0.5
#: per-channel QuantizeLinear/DequantizeLinear (the ``axis`` attribute) need opset 13
INT8_MIN_OPSET = 13
#: samples per calibration / check run
BATCH = 64
#: fp16 without calibration images is checked on this many seeded random inputs
RANDOM_CHECK_SAMPLES = 64
INT8_METHOD = "QDQ, int8 weights per channel, int8 activations per tensor, MinMax ranges"


class Calibration(NamedTuple):
    """Images that calibrate int8 stages (and check fp16 ones).

    Attributes:
        data: A registered dataset (``fashion_mnist``) or an ImageFolder root, as ``--data`` of
            ``tinysaver record`` (:func:`tinysaver.registry.dataset_source`).
        split: Its split (``holdout``; for a folder, the sub-folder).
        limit: How many images: a seeded random subset of the split (all of it when smaller).
        seed: Seed of that subset.
    """

    data: str
    split: str
    limit: int = DEFAULT_CALIB_LIMIT
    seed: int = 0


class CalibrationError(TinySaverError):
    """Calibration images that cannot be used (a missing split, images a stage cannot take)."""


def stage_precisions(precision: Union[str, Sequence[str]], n_stages: int) -> List[str]:
    """One precision per stage from one value for all stages or one per stage.

    Raises:
        TinySaverError: An unknown precision, or a count that is neither 1 nor ``n_stages``.
    """
    given = [precision] if isinstance(precision, str) else list(precision)
    unknown = [p for p in given if p not in PRECISIONS]
    if unknown:
        raise TinySaverError(f"unknown precision {unknown[0]!r} (known: {', '.join(PRECISIONS)})")
    if len(given) not in (1, n_stages):
        raise TinySaverError(f"{len(given)} precisions for {n_stages} stages "
                             "(give one for every stage, or one per stage)")
    return given * n_stages if len(given) == 1 else given


def check_precisions(precision: Union[str, Sequence[str]], n_stages: int, calib: Optional[Calibration] = None,
                     opset: Optional[int] = None) -> List[str]:
    """:func:`stage_precisions`, checked against the calibration images and the opset.

    Raises:
        TinySaverError: What :func:`stage_precisions` refuses, int8 without calibration images,
            calibration images and no stage that uses them, int8 below :data:`INT8_MIN_OPSET`.
    """
    out = stage_precisions(precision, n_stages)
    if "int8" in out and calib is None:
        raise TinySaverError("int8 stages need calibration images (calib=Calibration(data, split))")
    if calib is not None and set(out) == {"fp32"}:
        raise TinySaverError("calibration images given, but every stage is fp32 (nothing to calibrate or check)")
    if calib is not None and int(calib.limit) < 1:
        raise TinySaverError(f"calibration limit {calib.limit}: must be >= 1")
    if "int8" in out and opset is not None and opset < INT8_MIN_OPSET:
        raise TinySaverError(f"int8 stages need opset >= {INT8_MIN_OPSET} (per-channel QuantizeLinear), got {opset}")
    return out


class CalibrationImages:
    """A seeded subset of a split's images, preprocessed per stage on demand.

    Opening it checks the split (it exists, it has images); :meth:`inputs` checks that the images
    fit the stage (grey images for a grey stage, colour for a colour one) and preprocesses them.
    """

    def __init__(self, calib: Calibration) -> None:
        self.calib = calib
        where = f"{calib.data}/{calib.split}"
        try:
            self.dataset = dataset_source(calib.data).split(calib.data, calib.split, None, None)
            size = len(self.dataset)
        except TinySaverError as exc:
            raise CalibrationError(str(exc)) from None
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. torchvision: a folder without images
            raise CalibrationError(f"{where}: {' '.join(str(exc).split())[:200]}") from None
        if size == 0:
            raise CalibrationError(f"{where}: no images")
        count = min(int(calib.limit), size)
        rows = np.random.default_rng(calib.seed).choice(size, count, replace=False) if count < size else np.arange(size)
        self.rows = np.sort(rows)
        self.where = where
        self._cache: Dict[tuple, np.ndarray] = {}

    def describe(self) -> Dict[str, Any]:
        """The manifest's ``calibration`` entry."""
        return dict(data=self.calib.data, split=self.calib.split, count=len(self.rows), seed=int(self.calib.seed))

    def inputs(self, preprocess: Dict[str, Any], stage: str) -> np.ndarray:
        """float32 ``[count, C, H, W]``: the images through ``preprocess`` (a stage's export one)."""
        key = preprocess_key(preprocess)
        if key not in self._cache:
            channels = int(preprocess["input_size"][0])
            out = []
            for i in self.rows:
                try:
                    image = self.dataset[int(i)][0]
                except (OSError, ValueError) as exc:  # an image file PIL cannot read
                    raise CalibrationError(f"{self.where}: image {int(i)}: cannot read it "
                                           f"({type(exc).__name__})") from None
                grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
                if grey != (channels == 1):
                    kind = "grey" if grey else f"{image.mode} colour"
                    raise CalibrationError(f"{self.where}: image {int(i)} is {kind}, but stage {stage} takes "
                                           f"{channels}-channel input: calibrate on images like those it will see")
                try:
                    out.append(preprocess_image(image, preprocess))
                except TinySaverError as exc:
                    raise CalibrationError(f"{self.where}: image {int(i)}: {exc}") from None
            self._cache[key] = np.stack(out)
        return self._cache[key]


def convert_stage(graph: bytes, precision: str, name: str, inputs: Optional[np.ndarray],
                  calibration: Optional[Dict[str, Any]] = None) -> Tuple[bytes, Dict[str, Any]]:
    """The stage graph in ``precision`` and its manifest entries (``precision``; for int8/fp16 also
    ``converter``, ``agreement`` and, where images were used, ``calibration``: what they were).

    Args:
        graph: The checked fp32 graph (input :data:`~tinysaver.runtime.manifest.INPUT`, output
            :data:`~tinysaver.runtime.manifest.OUTPUT`).
        precision: ``fp32`` (returned as is), ``fp16`` or ``int8``.
        name: The stage's name (for errors).
        inputs: Preprocessed calibration images (int8: required; fp16: the check's inputs).
        calibration: What ``inputs`` are (:meth:`CalibrationImages.describe`).

    Raises:
        TinySaverError: The converted graph's top-1 agreement with the fp32 graph is below
            :data:`MIN_AGREEMENT`, or its logits are not finite.
    """
    if precision == "fp32":
        return graph, dict(precision="fp32")
    import onnxruntime

    if precision == "int8":
        if inputs is None:
            raise TinySaverError(f"{name}: int8 needs calibration images")
        converted = quantize_int8(graph, inputs)
        converter = f"onnxruntime {onnxruntime.__version__} quantize_static ({INT8_METHOD})"
    elif precision == "fp16":
        converted = convert_fp16(graph)
        converter = f"onnxruntime {onnxruntime.__version__} transformers.float16 (float32 input and output kept)"
    else:
        raise TinySaverError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    on = "calibration images"
    if inputs is None:  # fp16 without images: seeded random inputs, [-2, 2]-ish like normalised images
        shape = _input_shape(graph)
        inputs = np.random.default_rng(0).standard_normal((RANDOM_CHECK_SAMPLES, *shape)).astype(np.float32)
        on = "random inputs"
    check = agreement(graph, converted, inputs)
    if not check["finite"]:
        raise TinySaverError(f"{name}: the {precision} graph's logits are not finite (overflow): export it as fp32")
    if check["top1"] < MIN_AGREEMENT:
        raise TinySaverError(f"{name}: the {precision} graph agrees with the fp32 graph on the top-1 class of only "
                             f"{check['top1']:.1%} of {len(inputs)} {on} (< {MIN_AGREEMENT:.0%}: a broken "
                             f"conversion); export it as fp32")
    entry = dict(precision=precision, converter=converter,
                 agreement=dict(top1=check["top1"], max_abs_logit_diff=check["max_abs_logit_diff"],
                                samples=len(inputs), on=on, reference="fp32 graph"))
    if calibration is not None and on == "calibration images":
        entry["calibration"] = dict(calibration)
    return converted, entry


def quantize_int8(graph: bytes, inputs: np.ndarray) -> bytes:
    """``graph`` quantized statically to int8 QDQ, calibrated on ``inputs`` (see the module docstring)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT: inputs[i:i + BATCH]} for i in range(0, len(inputs), BATCH)])

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="tinysaver-quant-") as tmp, _quiet():
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return target.read_bytes()


def convert_fp16(graph: bytes) -> bytes:
    """``graph`` in float16, its float32 input and output kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        model = convert_float_to_float16(onnx.load_from_string(graph), keep_io_types=True)
    # The converter appends the Casts of the kept float32 input after the nodes that read them;
    # ONNX wants the nodes in topological order (onnxruntime tolerates it, the checker does not).
    order = topological_order(model.graph)
    nodes = [model.graph.node[i] for i in order]
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    return model.SerializeToString()


def topological_order(graph: Any) -> List[int]:
    """Indices of ``graph`` 's nodes in an order where each node comes after the nodes it reads
    (stable: already ordered nodes keep their order)."""
    known = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, order = list(range(len(graph.node))), []
    while pending:
        ready = [i for i in pending if all(name in known for name in graph.node[i].input)]
        if not ready:
            raise TinySaverError("the converted graph has a cycle or reads a value nothing writes")
        for i in ready:
            known.update(graph.node[i].output)
        order += ready
        pending = [i for i in pending if i not in set(ready)]
    return order


def agreement(reference: bytes, graph: bytes, inputs: np.ndarray) -> Dict[str, Any]:
    """Top-1 agreement and the largest logit difference of ``graph`` against ``reference`` on
    ``inputs`` (both run with onnxruntime), and whether ``graph`` 's logits are finite."""
    backend = get_backend("onnxruntime")
    ref, got = backend.session(reference), backend.session(graph)
    a = np.concatenate([ref.run([OUTPUT], {INPUT: inputs[i:i + 256]})[0] for i in range(0, len(inputs), 256)])
    b = np.concatenate([got.run([OUTPUT], {INPUT: inputs[i:i + 256]})[0] for i in range(0, len(inputs), 256)])
    finite = bool(np.isfinite(b).all())
    return dict(top1=float(np.mean(a.argmax(1) == b.argmax(1))), finite=finite,
                max_abs_logit_diff=float(np.abs(a - b).max()) if finite else float("inf"))


def _input_shape(graph: bytes) -> List[int]:
    import onnx

    dims = onnx.load_from_string(graph).graph.input[0].type.tensor_type.shape.dim
    return [int(d.dim_value) for d in dims[1:]]


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantization tools log advice through the root logger at WARNING (e.g. to run
    ``quant_pre_process``, see the module docstring): silenced while they run."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


__all__ = ["Calibration", "CalibrationError", "CalibrationImages", "DEFAULT_CALIB_LIMIT", "MIN_AGREEMENT",
           "INT8_MIN_OPSET", "stage_precisions", "check_precisions", "convert_stage", "quantize_int8", "convert_fp16",
           "agreement", "topological_order"]
