"""Reading checkpoints without running code from them.

A ``.pth`` file is a pickle, and a pickle can call any function while it loads (``os.system``
included). Every state dict TinySaver reads goes through :func:`load_checkpoint`: torch's
``weights_only`` unpickler, which builds tensors, containers and plain values and refuses anything
else, plus an allow-list for what real training checkpoints keep next to their weights:

- numpy arrays, dtypes and scalars (an epoch counter saved as ``np.int64``, a metric history);
- ``argparse.Namespace`` (timm's training scripts save their arguments as one);
- mmengine's ``HistoryBuffer``, ``ConfigDict`` and ``MessageHub``, replaced by inert stand-ins that
  only hold their pickled state (nothing of mmengine is imported or run).

A file that needs anything else is refused with one line naming it.

Examples:
    >>> state = load_state_dict("weights/fashion_mnist/fmnist_cnn_s.pth")  # doctest: +SKIP
    >>> sha256_of("weights/fashion_mnist/fmnist_cnn_s.pth")[:12]  # doctest: +SKIP
    'cd2a6c8142fc'
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np
import torch

from ..errors import TinySaverError

PathLike = Union[str, os.PathLike]

#: Keys under which checkpoints keep their weights, in the order they are preferred (EMA weights
#: first, as timm's ``load_state_dict`` does).
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Prefixes that wrappers add to every key: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# numpy dtypes whose arrays and scalars may appear in checkpoint metadata.
_NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "complex64", "complex128", "U", "S")
# Pickled mmengine objects of runner checkpoints (metadata only, never needed for the weights).
_INERT_CLASSES = ("mmengine.logging.history_buffer.HistoryBuffer", "mmengine.config.config.ConfigDict",
                  "mmengine.logging.message_hub.MessageHub")


class _Inert:
    """Stands in for a non-tensor object pickled in a checkpoint's metadata; holds its state only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert(*args)


def _inert_getattr(obj: Any, name: str) -> Any:
    # Pickles of bound methods call getattr; only lookups on stand-ins are answered, any other
    # getattr in a checkpoint is refused.
    if obj is _Inert or isinstance(obj, _Inert):
        return _Inert
    raise pickle.UnpicklingError(f"checkpoint asks for attribute {name!r} of {type(obj).__name__}: refused")


def safe_globals() -> List[Any]:
    """The allow-list handed to ``torch.serialization.safe_globals`` (see the module docstring)."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: List[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, argparse.Namespace]
    # Files written with numpy < 2 name the same functions under numpy.core.
    allowed += [(multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                (multiarray.scalar, "numpy.core.multiarray.scalar")]
    allowed += [type(np.dtype(t)) for t in _NUMPY_DTYPES]
    allowed += [(_Inert, name) for name in _INERT_CLASSES]
    allowed.append((_inert_getattr, "builtins.getattr"))
    return allowed


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    # torch's message is a page of advice around one useful sentence: the refused global or the
    # unknown opcode, between the first paragraph and the pointer to the documentation.
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    useful = [p for p in paragraphs if not p.startswith(("Weights only load failed", "Check the documentation"))]
    return (useful[0] if useful else paragraphs[0] if paragraphs else type(exc).__name__)[:300]


def load_checkpoint(path: PathLike) -> Any:
    """Unpickles a torch checkpoint with ``weights_only=True`` and the allow-list above.

    Args:
        path: The ``.pth``/``.pt``/``.bin`` file.

    Returns:
        Whatever the file holds (tensors on the CPU).

    Raises:
        TinySaverError: The file is missing, unreadable, or needs a global outside the allow-list
            (one line; nothing from the file has run).
    """
    path = Path(path)
    if not path.is_file():
        raise TinySaverError(f"{path}: weights file not found")
    try:
        # torch warns about what it is about to refuse (e.g. "Detected pickle protocol 4"): the
        # refusal below says it in one line, so its warnings are shown only when the load succeeds.
        with warnings.catch_warnings(record=True) as caught, torch.serialization.safe_globals(safe_globals()):
            warnings.simplefilter("always")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return checkpoint
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "global" not in reason.lower():  # not a pickle at all (garbage, another format)
            raise TinySaverError(f"{path}: unreadable weights ({reason})") from None
        raise TinySaverError(f"{path}: refused by the weights_only loader ({reason}); if you "
                             f"trust this file, re-save its state_dict alone") from None
    except Exception as exc:  # a truncated or foreign file: say which and why
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise TinySaverError(f"{path}: unreadable weights ({type(exc).__name__}: {first})") from None


def state_dict_of(checkpoint: Any, origin: PathLike = "checkpoint",
                  keys: Sequence[str] = STATE_DICT_KEYS) -> Dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: the first of ``keys`` that holds a dict, else the
    checkpoint itself; wrapper prefixes (``module.``, ``_orig_mod.``) are removed.

    Raises:
        TinySaverError: What is found is not a mapping of names to tensors.
    """
    obj = checkpoint
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in keys if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TinySaverError(f"{origin}: not a state dict of tensors")
    return {_strip_wrappers(str(k)): v for k, v in obj.items()}


def _strip_wrappers(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_state_dict(path: PathLike, sha256: str | None = None) -> Dict[str, torch.Tensor]:
    """:func:`load_checkpoint` + :func:`state_dict_of`, after checking the file's sha256 if given.

    Args:
        path: The checkpoint file.
        sha256: Expected hex digest (e.g. from a weights manifest); None skips the check.

    Returns:
        The state dict (CPU tensors).
    """
    if sha256 is not None:
        verify_sha256(path, sha256)
    return state_dict_of(load_checkpoint(path), origin=path)


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: PathLike, expected: str) -> None:
    """Raises a one-line :class:`TinySaverError` unless ``path`` exists and hashes to ``expected``."""
    if not Path(path).is_file():
        raise TinySaverError(f"{path}: weights file not found")
    actual = sha256_of(path)
    if actual != expected.lower():
        raise TinySaverError(f"{path}: sha256 {actual[:16]}… does not match the manifest's {expected[:16]}… "
                             f"(file changed or corrupted)")


__all__ = ["STATE_DICT_KEYS", "load_checkpoint", "load_state_dict", "safe_globals", "sha256_of",
           "state_dict_of", "verify_sha256"]
