"""Benchmark (not a test): `tinysaver serve` under hostile requests and faults, each with its outcome.

The repository's serve config (configs/serve/fmnist_cascade.yaml: fmnist_cnn_s -> fmnist_cnn_l,
threshold 0.9, its limits and replica settings) is served by `tinysaver serve` in a subprocess
(a local Ray instance with --num-cpus CPUs). Good clients are closed-loop threads sending one
preprocessed Fashion-MNIST test image as .npy per request. Each row is one attack or fault:

- malformed requests (JSON nested 100,000 deep, a .npy header claiming 10^12 samples, a body over
  max_request_bytes sent by urllib, float16 .npy, JSON numbers as strings): the status and error;
- 150 clients sending headers and 100 body bytes, then waiting 20 s: the good clients' throughput
  and answers meanwhile, against their undisturbed throughput;
- 2 clients sending the largest allowed image (8000 x 8000 RGB PNG) in a loop: the same;
- kill -9 of the base replica, of the saver replica, of the ingress replica under the good
  clients: their non-200 answers, the longest time without any answer, and the time until /health
  is "ok" with a new replica;
- SIGINT to `tinysaver serve` under the good clients: the time until it has ended.

Writes bench/results/bench_serve_faults.{json,md} (``--proxy ray``: Ray Serve's proxy answers
HTTP instead of tinysaver serve's own front; bench_serve_faults_ray_proxy.{json,md}). Takes about
three minutes.

    python bench/bench_serve_faults.py [--clients 8] [--num-cpus 2] [--proxy tinysaver|ray]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export(out: Path) -> None:
    from tinysaver import Cascade
    from tinysaver.plugins.timm import create_classifier, data_config
    from tinysaver.runtime.export import export_cascade

    models = [create_classifier(n) for n in ("fmnist_cnn_s", "fmnist_cnn_l")]
    export_cascade(Cascade(*models, thresholds=[0.9]), out, names=["fmnist_cnn_s", "fmnist_cnn_l"],
                   data_configs=[data_config(m) for m in models])


def payloads(export_dir: Path, n: int = 256) -> List[bytes]:
    from PIL import Image

    from tinysaver.plugins.datasets import load_fashion_mnist
    from tinysaver.runtime import preprocess_image, read_manifest

    spec = read_manifest(export_dir)["stages"][0]["preprocess"]
    images, _ = load_fashion_mnist("test")
    out = []
    for img in images[:n]:
        buf = io.BytesIO()
        np.save(buf, preprocess_image(Image.fromarray(img, mode="L"), spec)[None])
        out.append(buf.getvalue())
    return out


def post(url: str, body: bytes, ctype: str, timeout: float = 60) -> tuple:
    request = urllib.request.Request(url, data=body, headers={"content-type": ctype})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError) as exc:  # reset, refused, timed out
        return type(exc).__name__, b""


class Load:
    """Closed-loop good clients; each answer is (time done, status)."""

    def __init__(self, url: str, bodies: List[bytes], clients: int) -> None:
        self.url, self.bodies = url, bodies
        self.done: List[tuple] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(clients)]

    def client(self, i: int) -> None:
        k = i
        while not self.stop.is_set():
            status, _ = post(f"{self.url}/predict", self.bodies[k % len(self.bodies)], "application/x-npy")
            self.done.append((time.monotonic(), status))
            k += len(self.threads)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    def window(self, start: float, end: float) -> Dict[str, Any]:
        rows = [(t, s) for t, s in self.done if start <= t < end]
        ok = [t for t, s in rows if s == 200]
        times = [start, *sorted(ok), end]
        return {"answers": len(rows), "throughput_rps": round(len(ok) / (end - start), 1),
                "non_200": sorted({str(s) for _, s in rows if s != 200}),
                "non_200_count": sum(s != 200 for _, s in rows),
                "longest_gap_s": round(max(b - a for a, b in zip(times[:-1], times[1:])), 2)}


def health(url: str) -> Optional[Dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
            return json.loads(r.read())
    except Exception:
        return None


def malformed(url: str, max_bytes: int) -> List[Dict[str, Any]]:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**12, 1, 28, 28)})
    f16 = io.BytesIO()
    np.save(f16, np.zeros((1, 1, 28, 28), np.float16))
    huge = io.BytesIO()  # finite float32, but the model's logits overflow to NaN
    np.save(huge, np.full((2, 1, 28, 28), 3e38, np.float32))
    cases = [
        ("JSON nested 100,000 deep (200 kB)", b"[" * 100_000 + b"]" * 100_000, "application/json"),
        (".npy header claiming (10^12, 1, 28, 28)", header.getvalue() + b"\0" * 64, "application/x-npy"),
        (f"body of {max_bytes + 1_000_000} bytes > max_request_bytes, sent whole first (urllib)",
         b"0" * (max_bytes + 1_000_000), "application/x-npy"),
        ("float16 .npy", f16.getvalue(), "application/x-npy"),
        ("JSON numbers as strings", json.dumps({"inputs": [[["0.5"] * 28] * 28]}).encode(), "application/json"),
        ("finite inputs of 3e38 (the logits overflow)", huge.getvalue(), "application/x-npy"),
    ]
    rows = []
    for what, body, ctype in cases:
        status, answer = post(f"{url}/predict", body, ctype)
        try:
            error = json.loads(answer)["error"]
        except Exception:
            error = answer[:100].decode(errors="replace")
        rows.append({"what": what, "outcome": f"{status}: {error}"})
    return rows


def slow_uploads(url: str, port: int, load: Load, n: int, hold_s: float, baseline: float) -> Dict[str, Any]:
    socks = []
    start = time.monotonic()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=hold_s + 30)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                  b"Content-Length: 10000\r\n\r\n" + b"0" * 100)
        socks.append(s)
    time.sleep(hold_s)
    end = time.monotonic()
    statuses: Dict[str, int] = {}
    for s in socks:
        s.settimeout(1.0)
        try:
            head = s.recv(64).decode(errors="replace").split(" ")
            key = head[1] if len(head) > 1 else "closed"
        except OSError as exc:
            key = type(exc).__name__
        statuses[key] = statuses.get(key, 0) + 1
        s.close()
    w = load.window(start, end)
    return {"what": f"{n} clients send headers + 100 of 10,000 body bytes, then wait {hold_s:g} s",
            "outcome": f"slow clients got {statuses}; good clients {w['throughput_rps']} req/s "
                       f"({100 * w['throughput_rps'] / baseline:.0f} % of undisturbed), "
                       f"{w['non_200_count']} non-200, longest gap {w['longest_gap_s']} s", **w}


def in_a_loop(step: Callable[[], None], clients: int, seconds: float, join_timeout: float) -> Tuple[float, float]:
    """``clients`` threads each run ``step`` in a loop for ``seconds``; returns the (start, end) of that
    window (monotonic clock), after joining the threads."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            step()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    end = time.monotonic()
    stop.set()
    for t in threads:
        t.join(timeout=join_timeout)
    return start, end


def big_images(url: str, load: Load, seconds: float, baseline: float) -> Dict[str, Any]:
    from PIL import Image

    buf = io.BytesIO()  # small on the wire (one colour compresses well), 192 MB decoded
    Image.new("RGB", (8000, 8000), (120, 30, 200)).save(buf, format="PNG", compress_level=9)
    png = buf.getvalue()
    sent: List[Any] = []
    start, end = in_a_loop(lambda: sent.append(post(f"{url}/predict", png, "image/png", timeout=120)[0]),
                           clients=2, seconds=seconds, join_timeout=120)
    w = load.window(start, end)
    return {"what": f"2 clients send an 8000x8000 RGB PNG ({len(png) / 1e6:.1f} MB) in a loop for {seconds:g} s",
            "outcome": f"{len(sent)} images answered {sorted({str(s) for s in sent})}; good clients "
                       f"{w['throughput_rps']} req/s ({100 * w['throughput_rps'] / baseline:.0f} % of undisturbed), "
                       f"{w['non_200_count']} non-200", **w}


def hang_ups(port: int, load: Load, body: bytes, seconds: float, baseline: float) -> Dict[str, Any]:
    """Clients that send a whole request and close the connection without reading the answer (their
    samples share batches, and calls to the base, with the good clients' samples)."""
    sent = [0]
    request = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def leave():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            time.sleep(0.002)  # long enough to reach a batch, not to be answered
        sent[0] += 1

    start, end = in_a_loop(leave, clients=8, seconds=seconds, join_timeout=30)
    w = load.window(start, end)
    return {"what": f"8 clients send a request and hang up before the answer, in a loop for {seconds:g} s",
            "outcome": f"{sent[0]} hang-ups; good clients {w['throughput_rps']} req/s "
                       f"({100 * w['throughput_rps'] / baseline:.0f} % of undisturbed), {w['non_200_count']} non-200 "
                       f"{w['non_200'] or ''}", **w}


def children(pid: int) -> List[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def decoder_kill(url: str, load: Load, ingress_pid: int) -> Dict[str, Any]:
    """kill -9 of the ingress's image-decode processes while a client sends PNGs."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (56, 56), 90).save(buf, format="PNG")
    stop = threading.Event()
    codes: List[int] = []

    def sender():
        while not stop.is_set():
            codes.append(post(f"{url}/predict", buf.getvalue(), "image/png")[0])

    t = threading.Thread(target=sender, daemon=True)
    start = time.monotonic()
    t.start()
    time.sleep(2.0)
    victims = children(ingress_pid)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    time.sleep(4.0)
    stop.set()
    t.join(timeout=60)
    w = load.window(start, time.monotonic())
    restarts = (health(url) or {}).get("ingress", {}).get("decoder_restarts")
    return {"what": "kill -9 of the ingress's image-decode processes while a client sends PNGs",
            "outcome": f"{len(victims)} killed; the PNG client got {len(codes)} answers "
                       f"{sorted({str(c) for c in codes})}; decoder_restarts {restarts}; good clients "
                       f"{w['non_200_count']} non-200", **w}


def config_edits(config: Path, load: Load) -> Dict[str, Any]:
    """The served config file vanishes for a while (an editor replacing it), then gets an edit Ray
    Serve refuses, then is restored."""
    text = config.read_text()
    start = time.monotonic()
    config.unlink()
    time.sleep(3.0)
    config.write_text(text.replace("num_cpus: 1", "num_cpus: -1", 1))
    time.sleep(3.0)
    config.write_text(text)
    time.sleep(3.0)
    w = load.window(start, time.monotonic())
    return {"what": "the config file vanishes for 3 s, then gets an edit Ray Serve refuses, then is restored",
            "outcome": f"server kept serving: good clients {w['non_200_count']} non-200 (see the log lines below)",
            **w}


def kill(url: str, load: Load, which: str, pid: int, replica_of) -> Dict[str, Any]:
    before = replica_of(health(url))
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    seen_degraded = False
    recovered = None
    while time.monotonic() - start < 90:
        h = health(url)
        if h is not None:
            seen_degraded |= h["status"] == "degraded"
            if h["status"] == "ok" and replica_of(h) != before:
                recovered = time.monotonic() - start
                break
        time.sleep(0.1)
    time.sleep(2.0)
    w = load.window(start - 1.0, time.monotonic())
    return {"what": f"kill -9 of the {which} replica under {len(load.threads)} clients",
            "outcome": f"{w['non_200_count']} non-200 {w['non_200'] or ''}; longest gap without an answer "
                       f"{w['longest_gap_s']} s; /health ok with a new replica after "
                       f"{'%.1f s' % recovered if recovered is not None else 'not within 90 s'}"
                       f"{' (degraded seen)' if seen_degraded else ''}",
            "recovered_s": None if recovered is None else round(recovered, 2), **w}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--slow", type=int, default=150)
    ap.add_argument("--proxy", choices=("tinysaver", "ray"), default="tinysaver",
                    help="tinysaver serve --proxy: its own HTTP front (default) or Ray Serve's proxy")
    args = ap.parse_args()
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix="bench_faults_"))
    export(tmp / "export")
    bodies = payloads(tmp / "export")
    config = yaml.safe_load((ROOT / "configs" / "serve" / "fmnist_cascade.yaml").read_text())
    config["applications"][0]["args"]["export_dir"] = str(tmp / "export")
    port = free_port()
    config["http_options"]["port"] = port
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    max_bytes = int(config["applications"][0]["args"]["max_request_bytes"])
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    # stderr to a file, not a pipe: a pipe nobody reads until the end fills up (64 kB of Ray's
    # warnings) and then blocks the server's logging, which is the bench's doing, not the server's
    err_file = open(tmp / "serve.err", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "tinysaver.cli", "serve", str(tmp / "serve.yaml"),
                             "--num-cpus", str(args.num_cpus), "--proxy", args.proxy], stdout=subprocess.PIPE, stderr=err_file,
                            text=True, cwd=ROOT, env=env)
    line = proc.stdout.readline()
    if "serving" not in line:
        raise SystemExit(f"tinysaver serve did not start: {line}{(tmp / 'serve.err').read_text()[-3000:]}")
    url = f"http://127.0.0.1:{port}"
    rows: List[Dict[str, Any]] = malformed(url, max_bytes)
    try:
        with Load(url, bodies, args.clients) as load:
            time.sleep(3.0)  # warm-up
            t0 = time.monotonic()
            time.sleep(8.0)
            base = load.window(t0, time.monotonic())
            baseline = base["throughput_rps"]
            rows.append({"what": f"{args.clients} good clients, undisturbed (8 s)",
                         "outcome": f"{baseline} req/s, {base['non_200_count']} non-200", **base})
            rows.append(slow_uploads(url, port, load, args.slow, 20.0, baseline))
            rows.append(big_images(url, load, 15.0, baseline))
            rows.append(hang_ups(port, load, bodies[0], 10.0, baseline))
            rows.append(decoder_kill(url, load, int(health(url)["ingress"]["replica"].split("-")[0])))
            rows.append(config_edits(tmp / "serve.yaml", load))
            stage_pid = lambda k: int(health(url)["stages"][k]["replica"].split("-")[0])  # noqa: E731
            rows.append(kill(url, load, "base (stage 1)", stage_pid(1), lambda h: h and h["stages"][1].get("replica")))
            rows.append(kill(url, load, "saver (stage 0)", stage_pid(0), lambda h: h and h["stages"][0].get("replica")))
            ingress = int(health(url)["ingress"]["replica"].split("-")[0])
            rows.append(kill(url, load, "HTTP ingress", ingress, lambda h: h and h["ingress"]["replica"]))
            time.sleep(2.0)
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=90)
                took = time.monotonic() - start
                rows.append({"what": f"SIGINT to tinysaver serve under {args.clients} clients",
                             "outcome": f"ended after {took:.1f} s, exit status {proc.returncode}",
                             "shutdown_s": round(took, 2), "returncode": proc.returncode})
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                rows.append({"what": f"SIGINT to tinysaver serve under {args.clients} clients",
                             "outcome": "still running after 90 s (killed)"})
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        err_file.close()
        err = (tmp / "serve.err").read_text()
        shutil.rmtree(tmp, ignore_errors=True)
    log = [ln for ln in err.splitlines() if ln.startswith("tinysaver serve:")]
    result = {"rows": rows, "serve_log": log, "clients": args.clients, "num_cpus": args.num_cpus, "proxy": args.proxy,
              "load_average_end": [round(v, 2) for v in os.getloadavg()], "config": "configs/serve/fmnist_cascade.yaml"}
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "bench_serve_faults" if args.proxy == "tinysaver" else "bench_serve_faults_ray_proxy"
    (OUT / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    answered = "tinysaver serve's own front" if args.proxy == "tinysaver" else "Ray Serve's proxy"
    md = ["# `tinysaver serve` under attacks and faults", "",
          f"`python bench/bench_serve_faults.py --proxy {args.proxy}` (HTTP answered by "
          f"{answered}; "
          f"{args.clients} good clients, local Ray with {args.num_cpus} CPUs, "
          f"{result['config']}; load average at the end {result['load_average_end']}).", "",
          "| attack / fault | outcome |", "|---|---|"]
    md += [f"| {r['what']} | {r['outcome']} |" for r in rows]
    md += ["", "Lines `tinysaver serve` printed meanwhile:", "", "```", *log, "```", ""]
    (OUT / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
