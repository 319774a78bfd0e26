"""Model cost: GMACs counted by torch's own counter, and measured latency/throughput.

Convention: one fused multiply-add = 1 MAC, as timm's benchmark, fvcore, mmengine.analysis and the
paper's tables report it. ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per
multiply-add, so its total is halved. (Ultralytics' "GFLOPs" are 2 × GMACs.)
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Sequence

import torch
from torch import nn


def count_gmacs(model: nn.Module, input_size: Sequence[int], device: str = "cpu") -> float:
    """GMACs of one forward pass on one sample of shape ``input_size`` (C, H, W).

    Examples:
        >>> import timm
        >>> round(count_gmacs(timm.create_model("resnet50"), (3, 224, 224)), 2)
        4.09
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *input_size, device=device)
    was_training = model.training
    model.eval()
    # The math kernel of scaled_dot_product_attention: the fused CPU kernels are invisible to the
    # counter (an attention model would count 0 MACs for its attention).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Speed:
    """Measured speed of a model at one batch size."""

    batch_size: int
    device: str
    latency_ms: float  # median time of one batch
    throughput: float  # samples per second
    iters: int


def measure_speed(model: nn.Module, input_size: Sequence[int], batch_size: int = 1, device: str = "cpu",
                  warmup: int = 3, iters: int = 20, amp: bool = False) -> Speed:
    """Median wall time of ``iters`` forward passes after ``warmup`` (CUDA synchronised)."""
    x = torch.randn(batch_size, *input_size, device=device)
    model = model.eval().to(device)
    times = []
    ctx = torch.autocast(device_type=torch.device(device).type, enabled=amp)
    with torch.no_grad(), ctx:
        for i in range(warmup + iters):
            elapsed = timed(lambda: model(x), device)
            if i >= warmup:
                times.append(elapsed)
    median = sorted(times)[len(times) // 2]
    return Speed(batch_size, device, median * 1000, batch_size / median, iters)


def sync(device: str) -> None:
    """Waits for queued GPU work, so wall time measures it (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    """Wall time of ``fn()`` with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def complexity_report(model: nn.Module, input_size: Sequence[int], name: str = "",
                      measure: bool = False, batch_sizes: Sequence[int] = (1, 64), device: str = "cpu",
                      ) -> Dict[str, Any]:
    """``{"model", "input_size", "gmacs", "gflops" (=2×gmacs), "params", "params_m"[, "speed"]}``."""
    gmacs = count_gmacs(model, input_size, device)
    params = count_params(model)
    report: Dict[str, Any] = {"model": name, "input_size": list(input_size), "gmacs": gmacs,
                              "gflops": 2 * gmacs, "params": params, "params_m": params / 1e6,
                              "convention": "1 multiply-add = 1 MAC; gflops = 2 x gmacs"}
    if measure:
        report["speed"] = [asdict(measure_speed(model, input_size, b, device)) for b in batch_sizes]
    return report
