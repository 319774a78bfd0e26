"""Ray Serve: the cascade served over HTTP answers concurrent requests exactly like the offline
PyTorch Cascade, batches them across requests, answers bad requests 400 and keeps serving, applies
new thresholds to the running replicas, and answers overload 503.

One local Ray instance (2 CPUs, no dashboard, loopback only) serves every test of the module.
"""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from tinysaver import Cascade
from tinysaver.runtime.export import export_cascade

from .helpers import ROOT
from .test_export import FMNIST_PREPROCESS, gap_threshold

pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")

N = 400  # test images used here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data():
    from PIL import Image

    from tinysaver.plugins.datasets import load_fashion_mnist
    from tinysaver.runtime import preprocess_image

    images, _ = load_fashion_mnist("test")
    images = images[:N]
    x = np.stack([preprocess_image(Image.fromarray(img, mode="L"), FMNIST_PREPROCESS) for img in images])
    return images, x


@pytest.fixture(scope="module")
def models():
    from tinysaver.plugins.timm import create_classifier

    return create_classifier("fmnist_cnn_s"), create_classifier("fmnist_cnn_l")


def _thresholds(models, x, ratio):
    saver, _ = models
    with torch.no_grad():
        conf = saver(torch.from_numpy(x)).softmax(1).max(1).values.double().numpy()
    return gap_threshold(conf, ratio, window=40)


def _offline(models, x, threshold):
    with torch.no_grad():
        out = Cascade(*models, threshold=threshold)(torch.from_numpy(x))
    return out.logits.numpy(), out.stage.numpy(), out.confidence.numpy()


@pytest.fixture(scope="module")
def server(models, data, tmp_path_factory):
    import ray
    from ray import serve

    from tinysaver.serve import build_app

    _, x = data
    threshold, _ = _thresholds(models, x, 0.6)
    export_dir = tmp_path_factory.mktemp("serve_export")
    export_cascade(Cascade(*models, threshold=threshold), export_dir, names=["fmnist_cnn_s", "fmnist_cnn_l"],
                   data_configs=[FMNIST_PREPROCESS] * 2)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback-only test cluster
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = {"export_dir": str(export_dir), "max_request_bytes": 300_000, "max_samples_per_request": 64,
              "max_request_pixels": 1_000_000,
              # a long batch wait makes cross-request merging certain, not a matter of timing
              "stage_defaults": {"ray_actor_options": {"num_cpus": 0.25}, "batch_wait_timeout_s": 0.05,
                                 "max_batch_size": 16}}
    serve.run(build_app(config), name="cascade", route_prefix="/")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "config": config, "threshold": threshold,
               "export_dir": export_dir, "port": port}
    finally:
        serve.shutdown()
        ray.shutdown()


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def _post_npy(url, x):
    r = requests.post(f"{url}/predict", data=_npy(x), headers={"content-type": "application/x-npy"}, timeout=120)
    return r.status_code, r.json()


def _assert_equal_offline(answers, rows, offline):
    logits, stage, conf = offline
    got_stage = np.array([s for a in answers for s in a["stage"]])
    got_logits = np.array([lg for a in answers for lg in a["logits"]], dtype=np.float32)
    got_conf = np.array([c for a in answers for c in a["confidence"]])
    got_class = np.array([c for a in answers for c in a["class"]])
    np.testing.assert_array_equal(got_stage, stage[rows])
    np.testing.assert_array_equal(got_class, logits[rows].argmax(1))
    assert np.abs(got_logits - logits[rows]).max() <= 1e-4
    assert np.abs(got_conf - conf[rows]).max() <= 1e-5


def test_concurrent_requests_equal_the_offline_cascade(server, models, data):
    _, x = data
    offline = _offline(models, x, server["threshold"])
    rows = list(range(160))
    before = requests.get(f"{server['url']}/health", timeout=60).json()["stages"]
    with ThreadPoolExecutor(16) as pool:  # 16 clients, one sample per request
        results = list(pool.map(lambda i: _post_npy(server["url"], x[i:i + 1]), rows))
    assert {code for code, _ in results} == {200}
    _assert_equal_offline([a for _, a in results], rows, offline)
    assert set(offline[1][rows].tolist()) == {0, 1}  # both stages answered some requests
    after = requests.get(f"{server['url']}/health", timeout=60).json()["stages"]
    # Cross-request batching: the front stage ran fewer batches than it got requests.
    front_batches = after[0]["batches"] - before[0]["batches"]
    front_samples = after[0]["samples"] - before[0]["samples"]
    assert front_samples == len(rows)
    assert front_batches < len(rows) / 2, (front_batches, front_samples)
    # ... and the escalated samples of a batch went on to the base in one call, not one per request
    escalated = int((offline[1][rows] == 1).sum())
    calls = after[0]["calls_to_next"] - before[0]["calls_to_next"]
    assert 0 < calls < escalated / 2, (calls, escalated)


def test_multi_sample_json_and_images_equal_arrays(server, models, data):
    from PIL import Image

    images, x = data
    offline = _offline(models, x, server["threshold"])
    rows = list(range(200, 212))
    r = requests.post(f"{server['url']}/predict", json={"inputs": x[rows].tolist()}, timeout=120)
    assert r.status_code == 200
    _assert_equal_offline([r.json()], rows, offline)
    encoded = []
    for i in rows:
        buf = io.BytesIO()
        Image.fromarray(images[i], mode="L").save(buf, format="PNG")
        encoded.append(buf.getvalue())
    r = requests.post(f"{server['url']}/predict", json={"images": [base64.b64encode(e).decode() for e in encoded]},
                      timeout=120)
    assert r.status_code == 200
    _assert_equal_offline([r.json()], rows, offline)
    r = requests.post(f"{server['url']}/predict", data=encoded[0], headers={"content-type": "image/png"}, timeout=120)
    assert r.status_code == 200
    _assert_equal_offline([r.json()], rows[:1], offline)


@pytest.mark.parametrize("kwargs, reason", [
    (dict(data=_npy(np.zeros((1, 1, 28, 27), np.float32)), headers={"content-type": "application/x-npy"}),
     "shape [1, 1, 28, 27]"),
    (dict(data=_npy(np.zeros((1, 1, 28, 28), np.int32)), headers={"content-type": "application/x-npy"}),
     "dtype int32"),
    (dict(json={"inputs": [[["a"]]]}), "rectangular nested list of numbers"),
    (dict(json={"images": ["aGVsbG8="]}), "image 0: cannot decode"),
    (dict(data=b"\x89PNG broken", headers={"content-type": "image/png"}), "image: cannot decode"),
    (dict(data=b"{not json", headers={"content-type": "application/json"}), "malformed JSON"),
    (dict(data=b"0" * 400_000, headers={"content-type": "application/x-npy"}), "exceeds max_request_bytes"),
    (dict(data=_npy(np.zeros((65, 1, 28, 28), np.float32)), headers={"content-type": "application/x-npy"}),
     "65 samples in one request"),
    (dict(data=b"x", headers={"content-type": "text/plain"}), "unsupported content type"),
    # small on the wire, large in memory: refused from the header, before decoding
    (dict(data=_png(1100, 1000), headers={"content-type": "image/png"}),
     "image: 1100x1000 pixels would pass max_request_pixels (1000000 decoded pixels per request)"),
    (dict(json={"images": [base64.b64encode(_png(600, 600)).decode()] * 3}), "image 2: 600x600 pixels would pass"),
    (dict(data=_png(20_000, 1), headers={"content-type": "image/png"}), "more than 100 times longer than wide"),
])
def test_bad_requests_get_400_with_one_line_and_the_server_keeps_serving(server, data, kwargs, reason):
    r = requests.post(f"{server['url']}/predict", timeout=120, **kwargs)
    assert r.status_code == (413 if "max_request_bytes" in reason else 400)
    error = r.json()["error"]
    assert reason in error and "\n" not in error
    code, answer = _post_npy(server["url"], data[1][:1])
    assert code == 200 and len(answer["stage"]) == 1


def test_image_limits_are_checked_before_decoding():
    """The pixel limit reads the header only (a PNG cut after its header is refused for its size, not
    as undecodable), and the sample count is checked before any image is decoded."""
    from tinysaver import TinySaverError
    from tinysaver.serve import parse_payload

    cut = _png(3000, 3000)[:64]  # the IHDR chunk (the size) survives, the pixels do not
    with pytest.raises(TinySaverError, match="image: 3000x3000 pixels would pass max_request_pixels"):
        parse_payload("image/png", cut, max_pixels=1_000_000)
    with pytest.raises(TinySaverError, match="cannot decode"):
        parse_payload("image/png", cut)
    garbage = {"images": [base64.b64encode(b"not an image").decode()] * 3}
    with pytest.raises(TinySaverError, match="3 samples in one request"):
        parse_payload("application/json", json.dumps(garbage).encode(), max_samples=2)
    kind, images = parse_payload("application/json", json.dumps({"images": [base64.b64encode(_png(500, 400)).decode()]
                                                                  * 5}).encode(), max_pixels=1_000_000)
    assert kind == "images" and len(images) == 5 and images[0].shape == (400, 500)  # 5 x 200,000 = the limit


def test_new_thresholds_reconfigure_the_running_replicas(server, models, data):
    from ray import serve

    from tinysaver.serve import build_app

    _, x = data
    url = server["url"]
    before = requests.get(f"{url}/health", timeout=60).json()["stages"]
    threshold, _ = _thresholds(models, x, 0.85)
    serve.run(build_app({**server["config"], "thresholds": [threshold]}), name="cascade", route_prefix="/")
    try:
        after = requests.get(f"{url}/health", timeout=60).json()["stages"]
        assert after[0]["threshold"] == threshold
        assert [s["replica"] for s in after] == [s["replica"] for s in before]  # reconfigured, not replaced
        offline = _offline(models, x, threshold)
        rows = list(range(300, 340))
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: _post_npy(url, x[i:i + 1]), rows))
        assert {code for code, _ in results} == {200}
        _assert_equal_offline([a for _, a in results], rows, offline)
    finally:
        serve.run(build_app(server["config"]), name="cascade", route_prefix="/")


def test_overload_gets_503_and_the_server_recovers(server, data):
    from ray import serve

    from tinysaver.serve import build_app

    tight = {**server["config"], "thresholds": ["inf"],  # every sample goes on to the base
             "stage_defaults": {"ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 1,
                                "max_queued_requests": 1, "max_batch_size": 64, "batch_wait_timeout_s": 0.0}}
    serve.run(build_app(tight), name="tight", route_prefix="/tight")
    try:
        url = f"{server['url']}/tight"
        x = data[1][:64]
        with ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(lambda _: requests.post(f"{url}/predict", data=_npy(x), timeout=120,
                                                          headers={"content-type": "application/x-npy"}).status_code,
                                  range(48)))
        assert set(codes) <= {200, 503}
        assert codes.count(503) > 0 and codes.count(200) > 0
        code, answer = _post_npy(url, x[:2])
        assert code == 200 and answer["stage"] == [1, 1]
    finally:
        serve.delete("tight")


def test_cli_serve_check_joins_the_cluster(server, tmp_path):
    import ray

    config = tmp_path / "serve.yaml"
    config.write_text(json.dumps({"applications": [{
        "name": "cli", "route_prefix": "/cli", "import_path": "tinysaver.serve:build_app",
        "args": {"export_dir": str(server["export_dir"]),
                 "stage_defaults": {"ray_actor_options": {"num_cpus": 0.25}}}}]}))
    address = ray.get_runtime_context().gcs_address
    result = subprocess.run([sys.executable, "-m", "tinysaver.cli", "serve", str(config), "--address", address,
                             "--port", str(server["port"]), "--check"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "health:" in result.stdout and "predict (one zero sample): class" in result.stdout


def test_cli_serve_refuses_a_bad_config_in_one_line(server, tmp_path, capsys):
    from tinysaver.cli import main

    config = tmp_path / "bad.yaml"
    config.write_text("export_dir: /nonexistent\n")
    assert main(["serve", str(config)]) == 2
    assert "/nonexistent/cascade.json: not found" in capsys.readouterr().err
    config.write_text(f"export_dir: {server['export_dir']}\nthresholdz: [0.5]\n")
    assert main(["serve", str(config)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    config.write_text(f"export_dir: {server['export_dir']}\nstages: [{{}}, {{max_batch_size: 0}}]\n")
    assert main(["serve", str(config)]) == 2
    assert "stage 1 (fmnist_cnn_l): max_batch_size and num_replicas must be >= 1" in capsys.readouterr().err


def test_cli_serve_applies_a_changed_config_to_the_running_replicas(server, tmp_path):
    """`tinysaver serve` watches its file: new thresholds reach the same replicas; Ctrl-C ends it and
    removes its application from the shared cluster."""
    import signal
    import time

    import ray

    def write(threshold):
        config.write_text(json.dumps({"applications": [{
            "name": "watch", "route_prefix": "/watch", "import_path": "tinysaver.serve:build_app",
            "args": {"export_dir": str(server["export_dir"]), "thresholds": [threshold],
                     "stage_defaults": {"ray_actor_options": {"num_cpus": 0.25}}}}]}))

    def health():
        try:
            r = requests.get(f"{server['url']}/watch/health", timeout=30)
            return r.json()["stages"] if r.status_code == 200 else None
        except requests.RequestException:
            return None

    def wait_for(check, timeout=120.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            stages = health()
            if stages is not None and check(stages):
                return stages
            time.sleep(0.5)
        raise AssertionError("timed out")

    config = tmp_path / "watch.yaml"
    write(0.5)
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "tinysaver.cli", "serve", str(config), "--address", address,
                             "--port", str(server["port"]), "--poll-s", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        before = wait_for(lambda s: s[0]["threshold"] == 0.5)
        time.sleep(0.1)  # a new mtime, even on coarse file-system clocks
        write(0.75)
        after = wait_for(lambda s: s[0]["threshold"] == 0.75)
        assert [s["replica"] for s in after] == [s["replica"] for s in before]
        lines = []
        while not any("applied [0.75]" in line for line in lines):  # the redeploy call has returned
            line = proc.stdout.readline()
            assert line, "tinysaver serve ended early"
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        from ray import serve

        assert "watch" not in serve.status().applications  # removed from the shared cluster
        assert requests.get(f"{server['url']}/watch/health", timeout=30).status_code == 404  # "/" has no such route
    finally:
        if proc.poll() is None:
            proc.kill()
            out, err = proc.communicate()
            print(out, err[-3000:])
