#!/usr/bin/env python
"""Trains the demo's pool of classifiers on Fashion-MNIST (CPU, ~15 min on 2 cores) and writes
``weights/fashion_mnist/<arch>.pth`` plus ``manifest.json`` (what was trained, how, and the test
accuracy measured after training). The weights are committed, so the demo never retrains.

Only the ``train`` split (first 50k official training images) is used; ``holdout`` and ``test``
stay unseen for calibration and reporting.

Usage:
  python tools/train_fashion_mnist.py [--archs fmnist_cnn_xs ...] [--epochs 8] [--out weights/fashion_mnist]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tinysaver.io import atomic_open, write_json
from tinysaver.plugins.datasets import load_fashion_mnist
from tinysaver.plugins.timm.zoo import ARCHS, FASHION_MNIST_MEAN, FASHION_MNIST_STD

ROOT = Path(__file__).resolve().parents[1]
# Bigger models get more epochs: each is trained to a plateau without a huge CPU bill.
DEFAULT_EPOCHS = {"fmnist_cnn_xxs": 12, "fmnist_cnn_xs": 12, "fmnist_cnn_s": 12, "fmnist_cnn_m": 10, "fmnist_cnn_l": 10}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1)
    return (x - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shifts of up to ``pad`` pixels and horizontal flips, per sample."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)


def train_one(arch: str, epochs: int, x: torch.Tensor, y: torch.Tensor, seed: int, batch: int = 256) -> torch.nn.Module:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = timm.create_model(arch)
    steps = epochs * (len(x) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.15)
    bar = tqdm(total=steps, desc=f"train {arch}", unit="step")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--epochs", type=int, help="epochs for every arch (default: per-arch table)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "weights" / "fashion_mnist"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    x, y, tx, ty = to_tensor(train_x), torch.from_numpy(train_y), to_tensor(test_x), torch.from_numpy(test_y)
    for arch in args.archs:
        epochs = args.epochs or DEFAULT_EPOCHS[arch]
        start = time.perf_counter()
        model = train_one(arch, epochs, x, y, args.seed)
        seconds = time.perf_counter() - start
        acc = evaluate(model, tx, ty)
        path = out / f"{arch}.pth"
        with atomic_open(path, "wb") as f:
            torch.save(model.state_dict(), f)
        manifest[arch] = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                          "epochs": epochs, "seed": args.seed, "train_split": "train (50k)",
                          "train_seconds": round(seconds, 1), "test_acc": acc,
                          "torch": torch.__version__, "timm": timm.__version__}
        write_json(manifest_path, manifest)
        print(f"{arch}: test accuracy {acc:.4f} after {epochs} epochs ({seconds:.0f} s) -> {path}")


if __name__ == "__main__":
    main()
