"""Shared test helpers: the committed Fashion-MNIST pool on small subsets of the real data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "fashion_mnist"


def weights(name: str) -> str:
    return str(WEIGHTS / f"{name}.pth")


def fmnist_subset(split: str, n: int):
    from tinysaver.plugins.datasets import load_fashion_mnist

    images, labels = load_fashion_mnist(split)
    return images[:n], labels[:n]


def fmnist_dataset(split: str, n: int, transform):
    from tinysaver.plugins.datasets import ArrayImageDataset

    return ArrayImageDataset(*fmnist_subset(split, n), transform)


def stack_inputs(dataset) -> tuple[torch.Tensor, np.ndarray]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), np.array([y for _, y in items])
