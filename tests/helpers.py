"""Shared test helpers: the committed Fashion-MNIST pool on small subsets of the real data, and records
built from right/wrong answers for the brute-force chain tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tinysaver import Record

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


def chain_record(name: str, gmacs: float, conf, right, label) -> Record:
    """A record whose samples are right exactly where ``right`` says (a wrong answer is label + 1)."""
    label = np.asarray(label)
    pred = np.where(np.asarray(right, dtype=bool), label, label + 1)
    return Record(name, float(gmacs), np.asarray(conf, dtype=np.float64), pred, label)


def chain_tuple(rec: Record) -> tuple:
    """A record as the brute-force reference (tests/brute_force_chain.py) takes it."""
    return rec.name, rec.gmacs, rec.conf.tolist(), rec.correct.astype(int).tolist()


def wsr_ucb_reference(x, delta):
    """Upper confidence bound of E[x] for x in [0, 1]: a line-by-line transcription of
    ``WSR_mu_plus`` in the RCPS reference code (Bates et al. 2021, ``core/bounds.py``), solved with
    scipy's brentq."""
    from scipy.optimize import brentq

    n = x.shape[0]
    muhat = (np.cumsum(x) + 0.5) / (1 + np.arange(1, n + 1))
    sigma2hat = (np.cumsum((x - muhat) ** 2) + 0.25) / (1 + np.arange(1, n + 1))
    sigma2hat[1:] = sigma2hat[:-1]
    sigma2hat[0] = 0.25
    nu = np.minimum(np.sqrt(2 * np.log(1 / delta) / n / sigma2hat), 1)

    def kn(mu):
        return np.max(np.cumsum(np.log(1 - nu * (x - mu)))) + np.log(delta)

    if kn(1) < 0:
        return 1.0
    return brentq(kn, 1e-10, 1 - 1e-10, maxiter=1000)
