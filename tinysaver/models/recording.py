"""Recording a model's predictions on a dataset into a record (:mod:`tinysaver.records`).

Work is cut into fixed batches ``[b * batch_size, (b + 1) * batch_size)``; each finished batch is
written atomically as one chunk file in ``OUT.partial/``. That gives, with one mechanism:

- **resume**: an interrupted run skips the chunks already on disk;
- **scale-out**: under ``torchrun`` each of N processes records batches ``b % N == rank`` into the
  same folder, and rank 0 merges them after a barrier.

Because every batch holds the same samples whichever process or run computes it, and augmentation
is seeded per sample index (not by a stream that depends on what ran before), a resumed or
multi-process recording is identical to a plain one.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..confidence import build_confidence
from ..errors import TinySaverError
from ..io import atomic_open, write_json
from ..records import Record, save_record
from .numerics import Numerics


class SeededItems(torch.utils.data.Dataset):
    """Seeds Python's, numpy's and torch's RNGs from ``(seed, index)`` before each item, so random
    augmentation of sample i is the same in every run, process and resume (timm's RandAugment
    draws from numpy, its random-resized crop from Python, some transforms from torch)."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item_seed = (self.seed * 1_000_003 + int(index)) % (2**31)
        random.seed(item_seed)
        np.random.seed(item_seed)
        torch.manual_seed(item_seed)
        return self.dataset[index]


def dist_info() -> Tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside a torch.distributed process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed_from_env(device: str = "cpu") -> Tuple[int, int]:
    """Joins the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl
    on GPU); a plain run stays single-process. On CUDA each process takes the GPU of its
    ``LOCAL_RANK`` (the rank within its node: the global rank is wrong on a second node)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and device.startswith("cuda"):
        torch.cuda.set_device(local_rank())
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return dist_info()


def local_rank() -> int:
    """This process's rank within its node (``torchrun`` sets ``LOCAL_RANK``)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _check_or_write_meta(partial: Path, meta: Dict[str, Any], rank: int) -> None:
    meta_path = partial / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise TinySaverError(f"{partial}: an unfinished recording with other settings ({', '.join(changed)}) "
                                 f"is there; delete it to start over")
    elif rank == 0:
        partial.mkdir(parents=True, exist_ok=True)
        write_json(meta_path, meta)


def record_predictions(model: nn.Module, dataset: Any, out: os.PathLike | str, *, name: str, gmacs: float,
                       confidence: str = "max_softmax", batch_size: int = 256, workers: int = 0,
                       device: str = "cpu", amp: bool = False, channels_last: bool = False,
                       dtype: Optional[str] = None, save_logits: bool = False, num_classes: Optional[int] = None,
                       progress: bool = True, extra_meta: Optional[Dict[str, Any]] = None,
                       stop_after_batches: Optional[int] = None, class_map: Optional[Any] = None) -> Optional[Record]:
    """Runs ``model`` over ``dataset`` and writes the record ``out``.

    Args:
        model: Classifier returning logits ``[B, C]``.
        dataset: Items ``(input tensor, int label)``.
        out: Record path (``.npz``).
        name: Model name stored in the record.
        gmacs: Cost per sample stored in the record.
        confidence: Registered confidence function applied to the logits.
        batch_size: Samples per batch (also the unit of resume and sharding).
        workers: DataLoader worker processes.
        device: ``cpu`` or ``cuda[:i]``.
        amp: Autocast (bfloat16 on the CPU, float16 on CUDA).
        channels_last: Use the channels-last memory format (faster convolutions on GPU).
        dtype: Cast the model and inputs (``float16``/``bfloat16``). Device type, amp, dtype and
            memory format are stored in the record: a live cascade compared with it must run the
            same way (:class:`tinysaver.models.numerics.Numerics`).
        save_logits: Keep the logits as an extra array ``logits``.
        num_classes: Stored in the record to validate class ids.
        progress: Show a tqdm bar.
        extra_meta: Settings that must match when resuming (e.g. weights, augmentation seed).
        stop_after_batches: Stop after this many batches (simulates an interruption; for tests).
        class_map: How the dataset's class folders map to the model's outputs, stored in the record:
            an object with ``folders``, ``indices``, ``num_classes``, ``mask_to_folders``,
            ``signature()`` and ``apply(model)`` (masks the logits when asked), e.g.
            :class:`tinysaver.plugins.imagenet.ClassMap`.

    Returns:
        The merged :class:`Record` on rank 0 once every batch is done; None on other ranks or when
        stopped early.
    """
    from tqdm import tqdm

    out = Path(out)
    rank, world = dist_info()
    partial = _partial_dir(out)
    n = len(dataset)
    if n == 0:
        raise TinySaverError("the dataset is empty")
    numerics = Numerics(device=device, amp=amp, dtype=dtype, channels_last=channels_last)
    meta = {"name": name, "samples": n, "batch_size": batch_size, "confidence": confidence,
            "gmacs": gmacs, "save_logits": save_logits, "numerics": numerics.to_json(), **(extra_meta or {})}
    if class_map is not None:
        if num_classes is not None and class_map.num_classes != num_classes:
            raise TinySaverError(f"the class map is for {class_map.num_classes} classes but {name} has {num_classes}")
        meta["class_map"] = class_map.signature()
        model = class_map.apply(model)  # masks the logits to the folders' classes when asked
    _check_or_write_meta(partial, meta, rank)
    if world > 1:
        torch.distributed.barrier()  # the folder and meta exist before anyone writes chunks
    num_batches = (n + batch_size - 1) // batch_size
    todo = [b for b in range(num_batches) if b % world == rank and not (partial / _chunk_name(b)).exists()]
    conf_fn = build_confidence(confidence)
    model = numerics.prepare_model(model)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=[list(range(b * batch_size, min((b + 1) * batch_size, n))) for b in todo],
        num_workers=workers, pin_memory=device.startswith("cuda"))
    bar = tqdm(total=len(todo), desc=f"record {name}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
               unit="batch", disable=not progress)
    with numerics.context():
        for done, (b, (inputs, labels)) in enumerate(zip(todo, loader)):
            if stop_after_batches is not None and done >= stop_after_batches:
                bar.close()
                return None
            logits = model(numerics.prepare_inputs(inputs)).float()
            chunk = {"conf": _np(conf_fn(logits)).astype(np.float64), "pred": _np(logits.argmax(1)).astype(np.int64),
                     "label": np.asarray(labels, dtype=np.int64)}
            if save_logits:
                chunk["logits"] = _np(logits).astype(np.float32)
            with atomic_open(partial / _chunk_name(b), "wb") as f:
                np.savez(f, **chunk)
            bar.update()
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return None
    record = _merge(partial, num_batches, meta, num_classes, out)
    if class_map is not None:
        record = replace(record, class_map_folders=np.asarray(class_map.folders, dtype=str),
                         class_map_index=np.asarray(class_map.indices, dtype=np.int64),
                         mask_to_folders=bool(class_map.mask_to_folders))
    save_record(out, record)
    shutil.rmtree(partial)
    return record


def _chunk_name(batch: int) -> str:
    return f"batch{batch:07d}.npz"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _merge(partial: Path, num_batches: int, meta: Dict[str, Any], num_classes: Optional[int],
           out: Path) -> Record:
    parts: Dict[str, List[np.ndarray]] = {}
    for b in range(num_batches):
        path = partial / _chunk_name(b)
        if not path.exists():
            raise TinySaverError(f"{path}: missing batch {b} of {num_batches}; run the recording again to finish it")
        with np.load(path) as chunk:
            for key in chunk.files:
                parts.setdefault(key, []).append(chunk[key])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    extras = {k: v for k, v in arrays.items() if k not in ("conf", "pred", "label")}
    # How the record was made, so a later run can tell whether it may reuse it.
    extras["recording"] = np.str_(json.dumps(meta, sort_keys=True))
    return Record(name=meta["name"], gmacs=float(meta["gmacs"]), conf=arrays["conf"], pred=arrays["pred"],
                  label=arrays["label"], confidence=meta["confidence"], num_classes=num_classes,
                  extras=extras, path=str(out))


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's state dict (names, dtypes, shapes and bytes): two records made with the
    same fingerprint were made with the same weights, wherever those came from."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{t.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def recording_settings(record: Record) -> Dict[str, Any]:
    """The settings a record was made with (empty for records made elsewhere)."""
    return record.settings


def default_record_path(folder: os.PathLike | str, model: str, split: str, augment: bool) -> Path:
    """``FOLDER/<model>_<split>[_aug].npz`` (``/`` and ``:`` in model names become ``_``)."""
    safe = model.replace("/", "_").replace(":", "_")
    return Path(folder) / f"{safe}_{split}{'_aug' if augment else ''}.npz"
