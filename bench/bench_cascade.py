"""Benchmark (not a test): live cascade throughput vs the base alone, next to the ideal speed-up.

Pair: the Fashion-MNIST demo's committed models (default saver fmnist_cnn_s, base fmnist_cnn_l).
Threshold: the zero-loss threshold chosen on the held-out split's records (recorded here if
needed). Measured on test images at batch 1 and batch 64: saver alone, base alone and cascade, best
of N interleaved passes; the ideal is ``1 / (t_S/t_B + 1 − r)``. Goal: >= 90 % of the ideal.

Usage: python bench/bench_cascade.py [--saver fmnist_cnn_s] [--device cpu] [--out bench/results/cascade_cpu.json]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tinysaver import Cascade, ExitCurve, tradeoff
from tinysaver.io import write_json
from tinysaver.models.complexity import count_gmacs
from tinysaver.models.recording import record_predictions
from tinysaver.models.speed import measure_cascade_speed, speed_table
from tinysaver.plugins.datasets import ArrayImageDataset, load_fashion_mnist
from tinysaver.plugins.timm import create_classifier, data_config, eval_transform

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "fashion_mnist"


def zero_loss_threshold(saver_name: str, base_name: str, saver, base, folder: Path) -> float:
    """Threshold with no accuracy loss on the held-out split (recorded once into ``folder``)."""
    images, labels = load_fashion_mnist("holdout")
    recs = {}
    for name, model in ((saver_name, saver), (base_name, base)):
        path = folder / f"{name}_holdout.npz"
        ds = ArrayImageDataset(images, labels, eval_transform(model))
        recs[name] = record_predictions(model, ds, path, name=name, batch_size=256, progress=False,
                                        gmacs=count_gmacs(model, data_config(model)["input_size"]))
    row = tradeoff(ExitCurve.from_records(recs[saver_name], recs[base_name]), drops=[0.0])
    return row.required[0.0].threshold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--saver", default="fmnist_cnn_s")
    ap.add_argument("--base", default="fmnist_cnn_l")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--samples", type=int, nargs="+", default=[500, 4096], help="test images per batch size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cascade_cpu.json"))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    saver = create_classifier(args.saver, str(WEIGHTS / f"{args.saver}.pth"))
    base = create_classifier(args.base, str(WEIGHTS / f"{args.base}.pth"))
    cache = ROOT / "outputs" / "bench_records"
    threshold = zero_loss_threshold(args.saver, args.base, saver, base, cache)
    images, labels = load_fashion_mnist("test")
    ds = ArrayImageDataset(images, labels, eval_transform(saver))
    rows = []
    for bs, n in zip(args.batch_sizes, args.samples):
        x = torch.stack([ds[i][0] for i in range(min(n, len(ds)))])
        rows.append(measure_cascade_speed(Cascade(saver, base, threshold=threshold), x, x, bs, args.device,
                                          repeats=args.repeats))
    write_json(args.out, {"saver": args.saver, "base": args.base, "threshold": threshold,
                          "torch_threads": torch.get_num_threads(), "rows": [r.to_json() for r in rows]})
    print(f"{args.base} with saver {args.saver}, zero-loss threshold {threshold:.6g} (chosen on holdout)")
    print(speed_table(rows))


if __name__ == "__main__":
    main()
