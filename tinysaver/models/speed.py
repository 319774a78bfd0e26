"""Measured run-time speed-up of a live cascade over its base model (paper section 6.2).

The ideal speed-up of a cascade whose saver lets a fraction r of the samples exit is
``1 / (t_S / t_B + 1 − r)``, with t_S and t_B the measured times of the saver and the base alone on
the same samples. The measured one is ``t_base_alone / t_cascade``; their ratio says how much of
the ideal the routing (gather, second batch, merge) keeps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch

from .cascade import Cascade
from .complexity import timed
from .numerics import Numerics


@dataclass
class CascadeSpeed:
    batch_size: int
    device: str
    samples: int
    exit_ratio: float
    saver_s: float
    base_s: float
    cascade_s: float
    speedup: float
    ideal_speedup: float
    fraction_of_ideal: float
    base_throughput: float
    cascade_throughput: float

    def to_json(self) -> Dict[str, float]:
        return asdict(self)


def measure_cascade_speed(cascade: Cascade, x_saver: torch.Tensor, x_base: torch.Tensor, batch_size: int,
                          device: str = "cpu", repeats: int = 3, amp: bool = False,
                          numerics: Optional[Numerics] = None) -> CascadeSpeed:
    """Times the saver alone, the base alone and the cascade over the same samples in batches of
    ``batch_size``; each figure is the best of ``repeats`` passes, the three interleaved so that
    machine noise hits them alike.

    Args:
        cascade: The cascade (its threshold decides r).
        x_saver: Saver inputs ``[N, ...]``.
        x_base: Base inputs ``[N, ...]`` (may be ``x_saver``).
        batch_size: Samples per call.
        device: Where to run.
        repeats: Passes per measurement (the minimum is kept).
        amp: Autocast.
        numerics: How to run (device, dtype, autocast, memory format); overrides ``device``/``amp``.
    """
    numerics = numerics or Numerics(device=device, amp=amp)
    device = numerics.device
    cascade = numerics.prepare_model(cascade)
    xs = [numerics.prepare_inputs(x_saver[i:i + batch_size]) for i in range(0, len(x_saver), batch_size)]
    xb = [numerics.prepare_inputs(x_base[i:i + batch_size]) for i in range(0, len(x_base), batch_size)]
    exited = 0

    def run_cascade() -> None:
        nonlocal exited
        exited = 0
        for a, b in zip(xs, xb):
            exited += int(cascade(a, b).exited.sum())

    def run_saver() -> None:
        for a in xs:
            cascade.saver(a)

    def run_base() -> None:
        for b in xb:
            cascade.base(b)

    runs: Dict[str, List[float]] = {"saver": [], "base": [], "cascade": []}
    with numerics.context():
        run_cascade()  # warm-up (allocator, kernels, compilation)
        run_base()
        for _ in range(repeats):
            runs["saver"].append(timed(run_saver, device))
            runs["base"].append(timed(run_base, device))
            runs["cascade"].append(timed(run_cascade, device))
    n = len(x_saver)
    t_s, t_b, t_c = (min(runs[k]) for k in ("saver", "base", "cascade"))
    r = exited / n
    ideal = 1.0 / (t_s / t_b + 1.0 - r)
    return CascadeSpeed(batch_size=batch_size, device=device, samples=n, exit_ratio=r, saver_s=t_s, base_s=t_b,
                        cascade_s=t_c, speedup=t_b / t_c, ideal_speedup=ideal, fraction_of_ideal=(t_b / t_c) / ideal,
                        base_throughput=n / t_b, cascade_throughput=n / t_c)


def speed_table(rows: Sequence[CascadeSpeed]) -> str:
    """Markdown table of speed measurements."""
    lines = ["| batch | device | samples | exit ratio | base img/s | cascade img/s | speed-up | ideal | of ideal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.batch_size} | {r.device} | {r.samples} | {r.exit_ratio:.3f} | {r.base_throughput:.1f} | "
                     f"{r.cascade_throughput:.1f} | {r.speedup:.2f}x | {r.ideal_speedup:.2f}x | {r.fraction_of_ideal:.0%} |")
    return "\n".join(lines) + "\n"
