"""Export a live :class:`~tinysaver.models.cascade.Cascade` for serving: one ONNX graph per stage plus
``cascade.json``, run by :class:`tinysaver.runtime.OnnxCascade` (onnxruntime, no PyTorch).

Why one graph per stage: the routing (which samples go on, gathered into one batch) is data, not
graph. Kept outside the models, it is the same :func:`tinysaver.routing.route` the PyTorch cascade
runs, each stage graph has a plain dynamic batch dimension, and a server can place each stage on
its own machines (:mod:`tinysaver.serve`). :func:`export_single_graph` also offers the whole
cascade as one ONNX graph, routing inside (``If`` + ``NonZero`` + ``Gather`` + ``ScatterND``), for
runtimes that only take one file.

The directory holds::

    cascade.json              format, opset, thresholds, and per stage: name, file, sha256, input
                              shape, preprocessing (the model's timm data config), GMACs, confidence,
                              precision (int8/fp16: the converter, the agreement check, the images)
    stage0_<name>.onnx ...    one graph per stage: input "input" [batch, C, H, W] float32,
                              output "logits" [batch, classes] float32 (in every precision)
    cascade_single.onnx       (optional) the single graph

Exporter: ``torch.onnx.export(..., dynamo=False)`` (TorchScript-based; the ``torch.export``-based
exporter needs the ``onnxscript`` package), default opset :data:`DEFAULT_OPSET`. Every exported
graph is run once with onnxruntime and compared with the PyTorch model before anything is written.
Stages asked for in int8 or fp16 are then converted from that checked fp32 graph and checked by
their top-1 agreement with it (:mod:`tinysaver.runtime.quantize`).

Examples:
    >>> from tinysaver import Cascade
    >>> from tinysaver.plugins.timm import create_classifier
    >>> cascade = Cascade(create_classifier("fmnist_cnn_s"), create_classifier("fmnist_cnn_l"), threshold=0.9)
    >>> export_cascade(cascade, "outputs/exported/fmnist_s_l", names=["fmnist_cnn_s", "fmnist_cnn_l"])  # doctest: +SKIP
    >>> from tinysaver.runtime.quantize import Calibration
    >>> export_cascade(cascade, "outputs/exported/fmnist_s_l_int8", names=["fmnist_cnn_s", "fmnist_cnn_l"],
    ...                precision=["int8", "fp32"], calib=Calibration("fashion_mnist", "holdout"))  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import hashlib
import io
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..confidence import CONFIDENCES
from ..errors import TinySaverError
from ..io import atomic_open, write_json
from ..thresholds import threshold_to_json
from .backends import get_backend
from .manifest import FORMAT, INPUT, MANIFEST, OUTPUT, VERSION
from .quantize import Calibration, CalibrationImages, check_precisions, convert_stage

#: ONNX opset of the exported graphs (onnxruntime >= 1.14 runs it)
DEFAULT_OPSET = 17
SINGLE_GRAPH = "cascade_single.onnx"
#: keys of a timm data config that describe the eval preprocessing
PREPROCESS_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
#: an exported graph must reproduce the PyTorch logits to this (absolute, on random inputs)
EXPORT_ATOL = 1e-3


def export_cascade(cascade: Any, out_dir: str | Path, *, names: Optional[Sequence[str]] = None,
                   data_configs: Optional[Sequence[Mapping[str, Any]]] = None,
                   gmacs: Optional[Sequence[float]] = None, opset: int = DEFAULT_OPSET,
                   single_graph: bool = False, precision: Union[str, Sequence[str]] = "fp32",
                   calib: Optional[Calibration] = None) -> Dict[str, Any]:
    """Writes ``cascade`` as ONNX stage graphs and ``cascade.json`` into ``out_dir``.

    Args:
        cascade: A :class:`tinysaver.models.cascade.Cascade` (any device/dtype: it is exported from a
            float32 CPU copy). Its confidence functions must be registered ones (the runtime
            rebuilds them by name) and it must not carry per-stage torch ``preprocess`` callables
            (the preprocessing is the data config's).
        out_dir: Created if needed; existing export files in it are replaced.
        names: One name per stage (default ``stage0``, ``stage1``...).
        data_configs: Each stage's timm data config (``input_size``, ``interpolation``, ``mean``,
            ``std``, ``crop_pct``, ``crop_mode``); default: resolved by timm from the model.
        gmacs: Each stage's GMACs per sample; default: counted on one sample.
        opset: ONNX opset.
        single_graph: Also write :data:`SINGLE_GRAPH`, the cascade as one graph
            (:func:`export_single_graph`).
        precision: ``fp32``, ``fp16`` or ``int8`` (:mod:`tinysaver.runtime.quantize`): one for every
            stage, or a list with one per stage (``["int8", "fp32"]``: an int8 saver before an fp32
            base). Each stage is exported and checked in fp32 first, then converted and checked by
            its top-1 agreement with the fp32 graph (stored in the manifest).
        calib: The images that calibrate int8 stages (required with int8) and check fp16 ones
            (optional), e.g. ``Calibration("fashion_mnist", "holdout", limit=512)``; each stage
            sees them through its own preprocessing.

    Returns:
        The manifest written to ``cascade.json``.

    Raises:
        TinySaverError: A stage that cannot be exported as asked (unregistered confidence, a torch
            preprocess callable, a graph whose onnxruntime logits differ from PyTorch's, an unknown
            precision, int8 without ``calib``, a converted graph that agrees with its fp32 graph on
            fewer than half the top-1 answers). :class:`~tinysaver.runtime.quantize.CalibrationError`:
            calibration images that cannot be used (a missing split, images the stage cannot take).

    Examples:
        >>> export_cascade(cascade, "outputs/exported/fmnist_s_l_int8", precision=["int8", "fp32"],
        ...                calib=Calibration("fashion_mnist", "holdout", limit=512))  # doctest: +SKIP
        >>> OnnxCascade("outputs/exported/fmnist_s_l_int8").specs[0].precision        # doctest: +SKIP
        'int8'
    """
    import torch

    models = list(cascade.models)
    n = len(models)
    names = [f"stage{k}" for k in range(n)] if names is None else list(names)
    if len(names) != n:
        raise TinySaverError(f"{len(names)} names for {n} stages")
    if any(p is not None for p in cascade.preprocess):
        raise TinySaverError("the cascade has per-stage torch preprocess callables; export describes each stage's "
                             "preprocessing by its data config instead: build the Cascade without them")
    confidences = [confidence_name(fn) for fn in cascade.confidence_fns]
    configs = [dict(c) for c in data_configs] if data_configs is not None else [_resolve_data_config(m) for m in models]
    if len(configs) != n:
        raise TinySaverError(f"{len(configs)} data configs for {n} stages")
    precisions = check_precisions(precision, n, calib, opset)
    images = CalibrationImages(calib) if calib is not None else None  # the split is opened (checked) here
    stages: List[Dict[str, Any]] = []
    graphs: Dict[str, bytes] = {}
    with torch.no_grad():
        for k, (model, name, cfg) in enumerate(zip(models, names, configs)):
            model = copy.deepcopy(model).float().cpu().eval()
            preprocess = _preprocess_of(cfg, name)
            graph, num_classes = _export_stage(model, preprocess["input_size"], opset, name)
            inputs = images.inputs(preprocess, name) if images is not None and precisions[k] != "fp32" else None
            graph, conversion = convert_stage(graph, precisions[k], name, inputs,
                                              images.describe() if images is not None else None)
            file = f"stage{k}_{_safe(name)}.onnx"
            graphs[file] = graph  # the sha256 below is of these bytes, the file written
            cost = float(gmacs[k]) if gmacs is not None else _count_gmacs(model, preprocess["input_size"])
            stages.append(dict(name=name, file=file, sha256=hashlib.sha256(graph).hexdigest(), input=INPUT,
                               output=OUTPUT, num_classes=num_classes, gmacs=cost, confidence=confidences[k],
                               preprocess=preprocess, **conversion))
    manifest = dict(format=FORMAT, version=VERSION, opset=opset, exporter=f"torch.onnx (TorchScript) {torch.__version__}",
                    thresholds=[threshold_to_json(t) for t in cascade.thresholds], stages=stages, single_graph=None)
    if len({s["num_classes"] for s in stages}) != 1:
        raise TinySaverError(f"stages disagree on the number of classes: {[s['num_classes'] for s in stages]}")
    if single_graph:
        import onnx

        single = export_single_graph([onnx.load_from_string(graphs[s["file"]]) for s in stages], confidences, opset)
        graphs[SINGLE_GRAPH] = single
        manifest["single_graph"] = dict(file=SINGLE_GRAPH, sha256=hashlib.sha256(single).hexdigest())
    # Everything is computed and checked: only now is anything written (the manifest last).
    out = Path(out_dir)
    for file, graph in graphs.items():
        with atomic_open(out / file, "wb") as f:
            f.write(graph)
    write_json(out / MANIFEST, manifest)
    return manifest


def confidence_name(fn: Any) -> str:
    """The registered name of confidence function ``fn`` (the runtime rebuilds it by name)."""
    logits = [n for n in CONFIDENCES.names() if getattr(CONFIDENCES.get(n), "kind", "") == "classification"]
    if getattr(fn, "kind", "classification") != "classification":
        raise TinySaverError(f"confidence {fn!r} reads {fn.kind} outputs; an exported classifier cascade needs one "
                             f"that reads logits: {', '.join(logits)}")
    for name in logits:
        if type(fn) is CONFIDENCES.get(name) and not vars(fn):  # registered, and built without options
            return name
    raise TinySaverError(f"confidence {fn!r} is not a registered confidence function without options; "
                         f"export needs one of: {', '.join(logits)}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _resolve_data_config(model: Any) -> Dict[str, Any]:
    try:
        from timm.data import resolve_data_config
    except ImportError:
        raise TinySaverError("no data_configs given and timm is not installed to resolve them") from None
    return dict(resolve_data_config({}, model=model))


def _preprocess_of(cfg: Mapping[str, Any], name: str) -> Dict[str, Any]:
    missing = [k for k in ("input_size", "mean", "std") if k not in cfg]
    if missing:
        raise TinySaverError(f"{name}: data config lacks {', '.join(missing)}")
    size = [int(v) for v in cfg["input_size"]]
    if len(size) != 3:
        raise TinySaverError(f"{name}: input_size must be (C, H, W), got {cfg['input_size']}")
    out = dict(input_size=size, interpolation=str(cfg.get("interpolation", "bilinear")),
               mean=[float(v) for v in cfg["mean"]], std=[float(v) for v in cfg["std"]],
               crop_pct=float(cfg.get("crop_pct") or 0.875), crop_mode=str(cfg.get("crop_mode") or "center"))
    for key in ("mean", "std"):
        if len(out[key]) != size[0]:
            raise TinySaverError(f"{name}: {key} has {len(out[key])} values for {size[0]} channels")
    return out


def _count_gmacs(model: Any, input_size: Sequence[int]) -> float:
    from ..models.complexity import count_gmacs

    return count_gmacs(model, input_size)


def _export_stage(model: Any, input_size: Sequence[int], opset: int, name: str) -> Tuple[bytes, int]:
    """One stage as ONNX bytes (dynamic batch), checked against PyTorch with onnxruntime."""
    import warnings

    import torch

    generator = torch.Generator().manual_seed(0)
    # Batch 2 at export (a batch of 1 can let a dimension be specialised), 3 at the check.
    example = torch.randn(2, *input_size, generator=generator)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream (its successor needs onnxscript); it
        # still writes the same graphs, checked below.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    graph = buffer.getvalue()
    check = torch.randn(3, *input_size, generator=generator)
    want = model(check)
    if not isinstance(want, torch.Tensor) or want.ndim != 2:
        raise TinySaverError(f"{name}: the model must return logits [batch, classes], got {type(want).__name__}")
    got = get_backend("onnxruntime").session(graph).run([OUTPUT], {INPUT: check.numpy()})[0]
    err = float(np.abs(got - want.numpy()).max())
    if not err <= EXPORT_ATOL:
        raise TinySaverError(f"{name}: onnxruntime logits differ from PyTorch's by {err:.3g} (> {EXPORT_ATOL})")
    return graph, int(want.shape[1])


# --- the cascade as one graph ---------------------------------------------------------------------
def export_single_graph(stage_models: Sequence[Any], confidences: Sequence[str], opset: int = DEFAULT_OPSET) -> bytes:
    """The cascade as one ONNX graph with the routing inside.

    Inputs: ``input_k`` (stage k's preprocessed batch, every stage its own, rows are samples) and
    ``thresholds`` (float64 ``[N-1]``, so they change at run time without a new export). Outputs:
    ``logits`` float32 ``[B, C]``, ``stage`` int64 ``[B]``, ``confidence`` float64 ``[B]``.

    Stage k's nodes run inside an ``If`` taken only when some sample is still open; the open rows
    are gathered (``NonZero`` + ``Gather``) and their answers scattered back (``ScatterND``). The
    confidence is computed in float64 from the float32 logits, as the numpy confidence functions
    do, and compared with ``GreaterOrEqual``: the same rule as :func:`tinysaver.routing.route`.

    Args:
        stage_models: One ``onnx.ModelProto`` per stage (input "input", output "logits").
        confidences: One registered confidence name per stage (``max_softmax`` only here).
        opset: The opset of the stage graphs.

    Returns:
        The serialised model.
    """
    import onnx
    from onnx import TensorProto, compose, helper

    if any(c != "max_softmax" for c in confidences):
        raise TinySaverError(f"the single graph implements the max_softmax confidence only, got {list(confidences)}")
    n = len(stage_models)
    prefixed = [compose.add_prefix(m, f"s{k}/") for k, m in enumerate(stage_models)]
    builder = _GraphBuilder(opset)
    initializers = [init for m in prefixed for init in m.graph.initializer]

    def level(k: int, rows: Optional[str]) -> Tuple[List[Any], Tuple[str, str, str]]:
        """Nodes answering the samples that reach stage k (``rows``: their original indices)."""
        nodes: List[Any] = []
        src = f"input_{k}"
        if rows is None:
            nodes.append(helper.make_node("Identity", [src], [f"s{k}/{INPUT}"]))
        else:
            nodes.append(helper.make_node("Gather", [src, rows], [f"s{k}/{INPUT}"], axis=0))
        nodes.extend(prefixed[k].graph.node)
        logits = f"s{k}/{OUTPUT}"
        conf = builder.max_softmax(nodes, logits, f"c{k}")
        stage = builder.name(f"stage{k}")
        nodes.append(helper.make_node("Shape", [conf], [stage + "_shape"]))
        nodes.append(helper.make_node("ConstantOfShape", [stage + "_shape"], [stage],
                                      value=helper.make_tensor("v", TensorProto.INT64, [1], [k])))
        if k == n - 1:
            return nodes, (logits, stage, conf)
        t = builder.const(nodes, np.array(k, dtype=np.int64), f"t{k}_index")
        nodes.append(helper.make_node("Gather", ["thresholds", t], [f"t{k}"], axis=0))
        nodes.append(helper.make_node("GreaterOrEqual", [conf, f"t{k}"], [f"exit{k}"]))
        nodes.append(helper.make_node("Not", [f"exit{k}"], [f"open{k}"]))
        nodes.append(helper.make_node("NonZero", [f"open{k}"], [f"open{k}_nz"]))
        axis0 = builder.const(nodes, np.array([0], dtype=np.int64), f"axis0_{k}")
        nodes.append(helper.make_node("Squeeze", [f"open{k}_nz", axis0], [f"open{k}_local"]))
        if rows is None:
            next_rows = f"open{k}_local"
        else:
            next_rows = f"rows{k + 1}"
            nodes.append(helper.make_node("Gather", [rows, f"open{k}_local"], [next_rows], axis=0))
        nodes.append(helper.make_node("Size", [f"open{k}_local"], [f"open{k}_count"]))
        zero = builder.const(nodes, np.array(0, dtype=np.int64), f"zero{k}")
        nodes.append(helper.make_node("Greater", [f"open{k}_count", zero], [f"any_open{k}"]))
        # then: the next stages answer the open rows, scattered over this stage's answers
        then_nodes, (l2, s2, c2) = level(k + 1, next_rows)
        axis1 = builder.const(then_nodes, np.array([1], dtype=np.int64), f"axis1_{k}")
        then_nodes.append(helper.make_node("Unsqueeze", [f"open{k}_local", axis1], [f"open{k}_idx"]))
        outs = [f"then{k}/logits", f"then{k}/stage", f"then{k}/conf"]
        for src_all, src_open, dst in zip((logits, stage, conf), (l2, s2, c2), outs):
            then_nodes.append(helper.make_node("ScatterND", [src_all, f"open{k}_idx", src_open], [dst]))
        else_outs = [f"else{k}/logits", f"else{k}/stage", f"else{k}/conf"]
        else_nodes = [helper.make_node("Identity", [a], [b]) for a, b in zip((logits, stage, conf), else_outs)]
        merged = [f"m{k}/logits", f"m{k}/stage", f"m{k}/conf"]
        nodes.append(helper.make_node(
            "If", [f"any_open{k}"], merged,
            then_branch=helper.make_graph(then_nodes, f"then{k}", [], _outputs(outs)),
            else_branch=helper.make_graph(else_nodes, f"else{k}", [], _outputs(else_outs))))
        return nodes, tuple(merged)  # type: ignore[return-value]

    nodes, (logits, stage, conf) = level(0, None)
    nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    nodes.append(helper.make_node("Identity", [stage], ["stage"]))
    nodes.append(helper.make_node("Identity", [conf], ["confidence"]))
    inputs = []
    for k, m in enumerate(stage_models):
        dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
        inputs.append(helper.make_tensor_value_info(f"input_{k}", TensorProto.FLOAT, ["batch", *dims[1:]]))
    inputs.append(helper.make_tensor_value_info("thresholds", TensorProto.DOUBLE, [n - 1]))
    graph = helper.make_graph(nodes, "tinysaver_cascade", inputs, _outputs(["logits", "stage", "confidence"], "batch"),
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tinysaver")
    model.ir_version = stage_models[0].ir_version
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _outputs(names: Sequence[str], batch: Any = None) -> List[Any]:
    from onnx import TensorProto, helper

    types = (TensorProto.FLOAT, TensorProto.INT64, TensorProto.DOUBLE)
    shapes = ([batch, None], [batch], [batch])
    return [helper.make_tensor_value_info(nm, t, s) for nm, t, s in zip(names, types, shapes)]


class _GraphBuilder:
    """Small helpers that append nodes to a list (constants, the float64 max-softmax)."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, nodes: List[Any], value: np.ndarray, stem: str) -> str:
        from onnx import helper, numpy_helper

        out = self.name(stem)
        nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(value, out)))
        return out

    def _reduce(self, nodes: List[Any], op: str, x: str, keepdims: int) -> str:
        from onnx import helper

        out = self.name(f"{op.lower()}")
        # ReduceMax takes its axes as an attribute before opset 18, ReduceSum as an input from 13.
        if op == "ReduceSum" or self.opset >= 18:
            axes = self.const(nodes, np.array([-1], dtype=np.int64), "axes")
            nodes.append(helper.make_node(op, [x, axes], [out], keepdims=keepdims))
        else:
            nodes.append(helper.make_node(op, [x], [out], axes=[-1], keepdims=keepdims))
        return out

    def max_softmax(self, nodes: List[Any], logits: str, stem: str) -> str:
        """``max softmax(logits)`` in float64, in the order of the numpy function: z - max, exp,
        divide by the sum, max."""
        from onnx import TensorProto, helper

        z = self.name(f"{stem}_f64")
        nodes.append(helper.make_node("Cast", [logits], [z], to=TensorProto.DOUBLE))
        top = self._reduce(nodes, "ReduceMax", z, keepdims=1)
        shifted, exp, probs = self.name(f"{stem}_shift"), self.name(f"{stem}_exp"), self.name(f"{stem}_probs")
        nodes.append(helper.make_node("Sub", [z, top], [shifted]))
        nodes.append(helper.make_node("Exp", [shifted], [exp]))
        total = self._reduce(nodes, "ReduceSum", exp, keepdims=1)
        nodes.append(helper.make_node("Div", [exp, total], [probs]))
        return self._reduce(nodes, "ReduceMax", probs, keepdims=0)


__all__ = ["DEFAULT_OPSET", "MANIFEST", "SINGLE_GRAPH", "export_cascade", "export_single_graph", "confidence_name",
           "threshold_to_json"]
