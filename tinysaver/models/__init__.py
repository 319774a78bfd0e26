"""The torch layer: the live cascade and what measures, records and loads torch models.

- :mod:`.cascade`: :class:`Cascade`, the live classification cascade on the routing core;
- :mod:`.complexity`: GMACs/params counting (``count_gmacs``, ``inference_trace``) and timing;
- :mod:`.numerics`: :class:`Numerics` (device, AMP, dtype, channels-last) used the same way everywhere;
- :mod:`.speed`: measured cascade speed against the ideal ``1 / (t_S/t_B + 1 − r)``;
- :mod:`.checkpoint`: ``weights_only`` checkpoint loading and file fingerprints;
- :mod:`.recording`: per-sample prediction records of a model on a dataset (sharded under torchrun).

May import: the core modules errors/io/registry/thresholds/confidence/records/routing, torch.
"""
from __future__ import annotations

from .cascade import BASE, SAVER, Cascade, CascadeOutput
from .complexity import count_gmacs
from .numerics import Numerics

__all__ = ["Cascade", "CascadeOutput", "SAVER", "BASE", "Numerics", "count_gmacs"]
