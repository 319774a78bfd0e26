"""One description of how a model is run (device, dtype, autocast, memory format), shared by the
recording and the live cascade, so that a live run is compared with records made the same way.

Routing compares a confidence with a threshold: a record made in bfloat16 autocast and a live check
in float32 would disagree near the threshold for reasons that have nothing to do with the cascade.

Examples:
    >>> numerics = Numerics(device="cpu", amp=True)            # bfloat16 autocast on the CPU
    >>> model = numerics.prepare_model(model)                   # doctest: +SKIP
    >>> with numerics.context():                                # doctest: +SKIP
    ...     logits = model(numerics.prepare_inputs(images))
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, Optional

import torch
from torch import nn

from ..errors import TinySaverError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Numerics:
    """How models run.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:1``...
        amp: Run under ``torch.autocast`` (bfloat16 on the CPU, float16 on CUDA by default).
        dtype: Cast the model and its inputs to this dtype (``float16``, ``bfloat16``); None keeps
            the model's own (float32).
        channels_last: Channels-last memory format for the model and 4-D inputs.
    """

    device: str = "cpu"
    amp: bool = False
    dtype: Optional[str] = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise TinySaverError(f"unknown dtype {self.dtype!r} (known: {', '.join(_DTYPES)})")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise TinySaverError(f"unknown device {self.device!r} (e.g. cpu, cuda, cuda:1)") from None

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    @property
    def torch_dtype(self) -> Optional[torch.dtype]:
        return None if self.dtype is None else _DTYPES[self.dtype]

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model in eval mode on the device, in the dtype and memory format."""
        model = model.eval().to(self.device)
        if self.torch_dtype is not None:
            model = model.to(self.torch_dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def prepare_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the dtype and memory format the model expects."""
        x = x.to(self.device, non_blocking=True)
        if self.torch_dtype is not None and x.is_floating_point():
            x = x.to(self.torch_dtype)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """``no_grad`` and, with ``amp``, autocast on the device."""
        with torch.no_grad(), torch.autocast(device_type=self.device_type, enabled=self.amp):
            yield

    def to_json(self) -> Dict[str, Any]:
        """What a record stores (and a reuse check compares): the device *type*, not its index."""
        out = asdict(self)
        out["device"] = self.device_type
        return out


__all__ = ["Numerics"]
