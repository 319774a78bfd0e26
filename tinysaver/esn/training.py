"""Training an Exit Sequence Network (paper §6.4, Table 7) on cached features of the frozen models.

The saver and the base never change while an ESN trains, and an embedding unit is a global average
pooling (no parameters) followed by a linear layer. So what the frozen models give the ESN for an
input (the saver's logits and pre-logits features, each exit's pooled segment output) can be
computed once per augmented view and cached: training then touches only the small exit sequence,
which is what makes it fit a 2-core CPU. Each *view* is one pass over the training split under
AutoAugment (seeded per sample) with Mixup/CutMix applied per batch (seeded per batch); epoch ``e``
trains on view ``e mod V``. The mixed soft targets are cached with the features, and eq. (11)'s
weights come from the saver's confidence on the same mixed input.

Like :mod:`tinysaver.models.recording`, the cache is written in chunk files (one per view and batch):
an interrupted run resumes, and under ``torchrun`` each process computes its share of the chunks.
Training checkpoints hold state dicts and plain values only, are written after every epoch and
resume exactly (per-epoch shuffles are seeded by the epoch, the ESN has no dropout).

Examples:
    >>> cache = build_feature_cache(esn, lambda view: dataset, views=4, out_dir="cache/train",
    ...                             mix=mixup)                                   # doctest: +SKIP
    >>> train_sequence(esn.sequence, cache, TrainConfig(epochs=10), "ckpt/last.pth")  # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import TinySaverError
from ..io import atomic_open, write_json
from ..models.checkpoint import load_checkpoint
from ..models.numerics import Numerics
from ..models.recording import SeededItems, dist_info
from .network import ExitSequenceNetwork, esn_config
from .sequence import LOSSES, ExitSequence, esn_loss

#: ``mix(images, labels) -> (images, soft targets)``, e.g. a ``timm.data.Mixup``.
Mix = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


# --- the feature cache -------------------------------------------------------------------------------

@dataclass
class FeatureCache:
    """The frozen models' outputs on ``views`` passes over a split, view after view.

    Attributes:
        saver_logits: ``[V·N, C]``.
        saver_feat: ``[V·N, D_S]``.
        exit_feats: Per exit ``[V·N, C_n]``.
        base_logits: ``[V·N, C]``.
        target: ``[V·N, C]`` soft targets (one-hot without Mixup/CutMix).
        label: ``[V·N]`` the original labels (before mixing).
        views: ``V``.
        meta: How the cache was made (models, augmentation, seed): a training checkpoint records it,
            so a run is never resumed on features made another way.
    """

    saver_logits: torch.Tensor
    saver_feat: torch.Tensor
    exit_feats: List[torch.Tensor]
    base_logits: torch.Tensor
    target: torch.Tensor
    label: torch.Tensor
    views: int
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def per_view(self) -> int:
        return len(self.label) // self.views

    def rows_of_view(self, view: int) -> torch.Tensor:
        n = self.per_view
        return torch.arange(view * n, (view + 1) * n)


def _chunk_path(folder: Path, view: int, batch: int) -> Path:
    return folder / f"view{view:03d}_batch{batch:06d}.npz"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_feature_cache(esn: ExitSequenceNetwork, make_dataset: Callable[[int], Any], out_dir: os.PathLike | str, *,
                        views: int = 1, batch_size: int = 256, seed: int = 0, mix: Optional[Mix] = None,
                        numerics: Optional[Numerics] = None, meta: Optional[Dict[str, Any]] = None,
                        progress: bool = True, workers: int = 0) -> FeatureCache:
    """Computes (or resumes, or reuses) the frozen models' features on ``views`` passes over a split.

    Args:
        esn: The network whose frozen saver/base and exits define the features.
        make_dataset: ``view -> dataset`` of ``(image tensor, int label)``; random augmentation in it
            is seeded per (view, sample) here.
        out_dir: Folder of the chunk files and ``meta.json``.
        views: Passes over the split.
        batch_size: Samples per chunk (Mixup/CutMix mixes within a chunk; even sizes for timm's Mixup).
        seed: Seeds augmentation and mixing.
        mix: ``(images, labels) -> (images, soft targets)`` applied per chunk (None: one-hot targets).
        numerics: How the frozen models run (device, dtype, autocast).
        meta: Settings a reuse must match (model names, augmentation...).
        progress: tqdm bar.
        workers: DataLoader workers.

    Returns:
        The :class:`FeatureCache` (on the CPU), on every rank once all chunks exist.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    rank, world = dist_info()
    numerics = numerics or Numerics()
    first = make_dataset(0)
    n = len(first)
    if n == 0:
        raise TinySaverError("the dataset is empty")
    num_batches = (n + batch_size - 1) // batch_size
    full_meta = {"samples": n, "views": views, "batch_size": batch_size, "seed": seed, "mix": mix is not None,
                 "exits": list(esn.exits), "numerics": numerics.to_json(), **(meta or {})}
    if rank == 0:
        _check_or_write_meta(out, full_meta, rank)
    if world > 1:
        torch.distributed.barrier()  # meta written (or a stale cache cleared) before anyone reads it
        if rank != 0:
            _check_or_write_meta(out, full_meta, rank)
    chunks = [(v, b) for v in range(views) for b in range(num_batches)]
    todo = [(v, b) for i, (v, b) in enumerate(chunks) if i % world == rank and not _chunk_path(out, v, b).exists()]
    esn_eval = numerics.prepare_model(esn)
    bar = tqdm(total=len(todo), desc="ESN features" + (f" [rank {rank}/{world}]" if world > 1 else ""),
               unit="chunk", disable=not progress)
    by_view: Dict[int, List[int]] = {}
    for v, b in todo:
        by_view.setdefault(v, []).append(b)
    for v, batches in by_view.items():
        dataset = SeededItems(first if v == 0 else make_dataset(v), seed=seed * 7919 + v)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=[list(range(b * batch_size, min((b + 1) * batch_size, n))) for b in batches],
            num_workers=workers)
        for b, (images, labels) in zip(batches, loader):
            labels = torch.as_tensor(labels, dtype=torch.long)
            if mix is not None:
                _seed_everything(seed * 1_000_003 + v * 100_003 + b)
                images, target = mix(images, labels)
            else:
                target = torch.nn.functional.one_hot(labels, esn.num_classes).float()
            with numerics.context():
                feats = esn_eval.features(numerics.prepare_inputs(images))
            chunk = {"saver_logits": feats.saver_logits, "saver_feat": feats.saver_feat,
                     "base_logits": feats.base_logits, "target": target, "label": labels}
            chunk.update({f"exit{i}": f for i, f in enumerate(feats.exit_feats)})
            with atomic_open(_chunk_path(out, v, b), "wb") as f:
                np.savez(f, **{k: t.detach().float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                               for k, t in chunk.items()})
            bar.update()
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    return load_feature_cache(out, views, num_batches, len(esn.exits))


def _check_or_write_meta(out: Path, meta: Dict[str, Any], rank: int) -> None:
    """Keeps a cache made with the same settings; one made with others is stale: its chunks are
    removed (rank 0) and it is computed again."""
    path = out / "meta.json"
    meta = json.loads(json.dumps(meta))  # the form it takes on disk (tuples become lists)
    if path.exists():
        old = json.loads(path.read_text())
        if old != meta:
            if rank != 0:
                changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
                raise TinySaverError(f"{out}: a feature cache with other settings ({', '.join(changed)}) is there")
            for stale in out.glob("view*_batch*.npz"):
                stale.unlink()
            path.unlink()
    if rank == 0 and not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, meta)


def load_feature_cache(out: Path, views: int, num_batches: int, num_exits: int) -> FeatureCache:
    parts: Dict[str, List[np.ndarray]] = {}
    for v in range(views):
        for b in range(num_batches):
            path = _chunk_path(out, v, b)
            if not path.exists():
                raise TinySaverError(f"{path}: missing chunk; run again to finish the feature cache")
            with np.load(path) as chunk:
                for key in chunk.files:
                    parts.setdefault(key, []).append(chunk[key])
    t = {k: torch.from_numpy(np.concatenate(v)) for k, v in parts.items()}
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return FeatureCache(saver_logits=t["saver_logits"], saver_feat=t["saver_feat"],
                        exit_feats=[t[f"exit{i}"] for i in range(num_exits)], base_logits=t["base_logits"],
                        target=t["target"], label=t["label"].long(), views=views, meta=meta)


# --- training -------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Table 7 of the paper, with the warm-up shortened (see ``warmup_epochs``).

    Args:
        epochs: Training epochs (Table 7: 10).
        lr: Peak learning rate of AdamW (Table 7: 6.25e-4).
        weight_decay: AdamW weight decay (timm's default 0.05).
        warmup_epochs: Linear warm-up (Table 7 lists 20 warm-up epochs for 10 training epochs: the
            learning rate would never leave the warm-up; 1 by default, 20 reproduces the table).
        warmup_lr: Learning rate at the start of the warm-up.
        min_lr: Floor of the cosine decay.
        batch_size: Global batch size (split across processes under torchrun).
        loss: ``eq11`` or ``ce``.
        seed: Seeds the per-epoch shuffles.
    """

    epochs: int = 10
    lr: float = 6.25e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    batch_size: int = 256
    loss: str = "eq11"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise TinySaverError(f"unknown ESN loss {self.loss!r} (known: {', '.join(LOSSES)})")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise TinySaverError(f"epochs and batch size must be >= 1 and lr > 0, got {self.epochs}, "
                                 f"{self.batch_size}, {self.lr}")


def _optimizer_and_scheduler(sequence: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    optimizer = create_optimizer_v2(sequence, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=cfg.epochs * steps_per_epoch, lr_min=cfg.min_lr,
                                  warmup_t=int(round(cfg.warmup_epochs * steps_per_epoch)),
                                  warmup_lr_init=cfg.warmup_lr, warmup_prefix=True, t_in_epochs=False)
    return optimizer, scheduler


def epoch_order(cache: FeatureCache, epoch: int, seed: int) -> torch.Tensor:
    """Rows of epoch ``epoch``: view ``epoch mod V``, shuffled by a generator seeded with the epoch
    (so a resumed run sees exactly the batches an uninterrupted one would)."""
    rows = cache.rows_of_view(epoch % cache.views)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return rows[torch.randperm(len(rows), generator=g)]


def train_sequence(sequence: ExitSequence, cache: FeatureCache, cfg: TrainConfig,
                   checkpoint: os.PathLike | str, *, progress: bool = True,
                   stop_after_epochs: Optional[int] = None) -> Dict[str, Any]:
    """Trains ``sequence`` in place on the cache, resuming from ``checkpoint`` when it exists.

    Args:
        sequence: The trainable part of an ESN.
        cache: Training features (:func:`build_feature_cache`).
        cfg: Hyper-parameters.
        checkpoint: Written after every epoch (rank 0): state dicts of the exit sequence, optimizer
            and scheduler, the epoch, the configuration.
        progress: tqdm bar.
        stop_after_epochs: Stop after this many epochs of this call (simulates an interruption).

    Returns:
        ``{"epochs_done", "loss" (last epoch's mean), "history" (mean loss per epoch), "seconds" (wall
        time of every epoch trained so far, in this call and in the runs it resumed)}``.
    """
    from tqdm import tqdm

    rank, world = dist_info()
    checkpoint = Path(checkpoint)
    steps = math.ceil(cache.per_view / cfg.batch_size)
    optimizer, scheduler = _optimizer_and_scheduler(sequence, cfg, steps)
    config = json.loads(json.dumps({"train": asdict(cfg), "sequence": sequence.config, "views": cache.views,
                                    "samples": cache.per_view, "cache": cache.meta}))
    start, history, seconds = 0, [], []
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        if state.get("config") != config:
            raise TinySaverError(f"{checkpoint}: a checkpoint of another configuration; delete it to start over")
        sequence.load_state_dict(state["sequence"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history, seconds = int(state["epoch"]), list(state["history"]), list(state.get("seconds", []))
    model: nn.Module = sequence
    if world > 1:
        model = nn.parallel.DistributedDataParallel(sequence)
    end = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, start + stop_after_epochs)
    bar = tqdm(total=(end - start) * steps, desc="train ESN", unit="step", disable=not progress or rank != 0)
    sequence.train()
    for epoch in range(start, end):
        began = time.perf_counter()
        order = epoch_order(cache, epoch, cfg.seed)
        total, count = 0.0, 0
        for step in range(steps):
            scheduler.step_update(num_updates=epoch * steps + step)
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size][rank::world]
            logits = model(cache.saver_logits[idx], cache.saver_feat[idx], [f[idx] for f in cache.exit_feats])
            loss = esn_loss(logits, cache.target[idx], cache.saver_logits[idx], cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            total += value * len(idx)
            count += len(idx)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        history.append(total / max(count, 1))
        seconds.append(time.perf_counter() - began)
        if rank == 0:
            state = {"sequence": sequence.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                     "seconds": seconds, "config": config}
            with atomic_open(checkpoint, "wb") as f:
                torch.save(state, f)
        if world > 1:
            torch.distributed.barrier()
    bar.close()
    sequence.eval()
    return {"epochs_done": end, "loss": history[-1] if history else None, "history": history, "seconds": seconds}


def save_sequence(path: os.PathLike | str, esn: ExitSequenceNetwork, extra: Optional[Dict[str, Any]] = None) -> None:
    """Writes the trained exit sequence: its state dict and the configuration to rebuild it (the frozen
    saver and base are not in it: they load by name)."""
    with atomic_open(path, "wb") as f:
        torch.save({"state_dict": esn.sequence.state_dict(), "config": esn_config(esn), **(extra or {})}, f)


def load_sequence(path: os.PathLike | str, esn: ExitSequenceNetwork) -> Dict[str, Any]:
    """Loads a :func:`save_sequence` file into ``esn`` (checked against its exits and sizes)."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "state_dict" not in state or "config" not in state:
        raise TinySaverError(f"{path}: not an ESN file (expected state_dict and config)")
    if state["config"] != esn_config(esn):
        raise TinySaverError(f"{path}: an ESN of another configuration ({state['config']}) than {esn_config(esn)}")
    esn.sequence.load_state_dict(state["state_dict"])
    return state


__all__ = ["FeatureCache", "TrainConfig", "build_feature_cache", "load_feature_cache", "train_sequence",
           "epoch_order", "save_sequence", "load_sequence"]
