"""Model cost: GMACs counted by torch's own counter, and measured latency/throughput.

Convention: one fused multiply-add = 1 MAC, as timm's benchmark, fvcore, mmengine.analysis and the
paper's tables report it. ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per
multiply-add, so its total is halved. (Ultralytics' "GFLOPs" are 2 × GMACs.)
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, Sequence

import torch
from torch import nn


@contextlib.contextmanager
def inference_trace(*models: nn.Module) -> Iterator[None]:
    """Runs a cost trace the way inference runs: every model in eval mode, autograd off.

    Why: a trace with autograd on counts what training would run. Backbones with gradient
    checkpointing (mmdet's Swin-L configs, Co-DINO's, set ``with_cp=True``) call
    ``torch.utils.checkpoint`` whenever their input requires grad, which fails inside a tracer
    (``RuntimeError: unordered_map::at``) and keeps every activation alive (DINO Swin-L: killed at
    21.6 GB on CPU, 10.4 GB peak with autograd off). ``no_grad`` rather than ``inference_mode``:
    mmengine's counter traces with ``torch.jit``, which cannot record inference tensors. The
    models' train/eval flags are restored afterwards.

    Examples:
        >>> with inference_trace(model):
        ...     model(x)   # eval mode, no autograd graph
    """
    flags = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for saved in flags:
            for module, training in saved:
                module.training = training


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
    # The math kernel of scaled_dot_product_attention: the fused CPU kernels are invisible to the
    # counter (an attention model would count 0 MACs for its attention).
    with inference_trace(model), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
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


class StageMeter:
    """Wall time per sample and peak memory of each stage of a live cascade, as it runs.

    Each call of a stage is timed (the device synchronised around it) and counted with the number
    of samples it ran on, so ``ms_per_sample`` is the stage's own time over the samples that reached
    it. Peak memory while the stage ran: on CUDA, ``torch.cuda.max_memory_allocated`` (reset before
    each call; every resident model's weights included); on the CPU under Linux, the process's peak
    resident set (``VmHWM``, reset before each call through ``/proc/self/clear_refs``); elsewhere
    the process's lifetime peak RSS (``getrusage``), which only grows.

    Args:
        names: The stages' names.

    Examples:
        >>> meter = StageMeter(["saver", "base"])
        >>> out = meter.measure(0, saver, images, len(images), device="cpu")   # doctest: +SKIP
        >>> meter.summary()                                                    # doctest: +SKIP
        [{'stage': 'saver', 'samples': 2, 'calls': 1, 'ms_per_sample': 41.3, 'peak_memory_mb': 812.4, ...}, ...]
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.seconds = [0.0] * len(self.names)
        self.samples = [0] * len(self.names)
        self.calls = [0] * len(self.names)
        self.peak_bytes = [0] * len(self.names)
        self.memory_kind = [""] * len(self.names)

    def measure(self, k: int, fn: Callable[..., Any], inputs: Any, samples: int, device: Any = "cpu") -> Any:
        """``fn(inputs)``, timed and its peak memory read, counted as ``samples`` samples of stage k."""
        device = torch.device(device)
        _reset_peak_memory(device)
        sync(str(device))
        start = time.perf_counter()
        out = fn(inputs)
        sync(str(device))
        self.seconds[k] += time.perf_counter() - start
        self.samples[k] += int(samples)
        self.calls[k] += 1
        peak, kind = _peak_memory(device)
        self.peak_bytes[k] = max(self.peak_bytes[k], peak)
        self.memory_kind[k] = kind
        return out

    def summary(self) -> list:
        """One dict per stage: ``stage``, ``samples``, ``calls``, ``seconds``, ``ms_per_sample``
        (None when it ran on nothing), ``peak_memory_mb`` and ``memory`` (what was read)."""
        return [{"stage": name, "samples": n, "calls": c, "seconds": s,
                 "ms_per_sample": (1000 * s / n) if n else None, "peak_memory_mb": b / 2 ** 20 if c else None,
                 "memory": kind} for name, n, c, s, b, kind
                in zip(self.names, self.samples, self.calls, self.seconds, self.peak_bytes, self.memory_kind)]


_CLEAR_REFS = "/proc/self/clear_refs"


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_memory(device: torch.device) -> tuple:
    """``(bytes, what was read)`` since :func:`_reset_peak_memory`."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "process peak RSS (VmHWM)"
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process lifetime peak RSS"
