"""Ray Serve: the cascade served over HTTP answers concurrent requests exactly like the offline
PyTorch Cascade, batches them across requests, answers bad requests 400 and keeps serving, applies
new thresholds to the running replicas, and answers overload 503.

One local Ray instance (2 CPUs, no dashboard, loopback only) serves every test of the module.
"""
from __future__ import annotations

import base64
import io
import json
import math
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


def _start_front(server, **ingress):
    """tinysaver serve's HTTP front (in this process, on a free port) for the "cascade" application."""
    from ray import serve

    from tinysaver.serve.config import IngressOptions
    from tinysaver.serve.front import HttpFront, start_front

    app = HttpFront(lambda: serve.get_app_handle("cascade"), ["fmnist_cnn_s", "fmnist_cnn_l"],
                    IngressOptions(**ingress), server["config"]["max_request_bytes"], "/", 60.0)
    port = _free_port()
    return start_front(app, "127.0.0.1", port), f"http://127.0.0.1:{port}", port


@pytest.fixture(scope="module")
def front(server):
    running, url, port = _start_front(server)
    try:
        yield {"url": url, "port": port, "app": running.app}
    finally:
        running.stop()


@pytest.fixture(params=["ray_proxy", "front"])
def url(request, server):
    """The cascade's URL through Ray Serve's proxy and through tinysaver serve's own HTTP front."""
    return server["url"] if request.param == "ray_proxy" else request.getfixturevalue("front")["url"]


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def _npy_header(shape, descr="<f4") -> bytes:
    """A .npy header claiming ``shape``, without the data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
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
    # hostile shapes: refused before they cost memory or a stack (each was a 500)
    (dict(data=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"}),
     "JSON nested 100000 deep (at most 32)"),
    (dict(data=_npy_header((10**12, 1, 28, 28)) + b"\0" * 64, headers={"content-type": "application/x-npy"}),
     "1000000000000 samples in one request"),
    (dict(data=_npy_header((8, 1, 28, 28)) + b"\0" * 64, headers={"content-type": "application/x-npy"}),
     ".npy header says [8, 1, 28, 28] float32 (25088 bytes), the body holds 64 bytes"),
    # the dtype policy: float32 (float64 narrowed), nothing else converted silently
    (dict(data=_npy(np.zeros((1, 1, 28, 28), np.float16)), headers={"content-type": "application/x-npy"}),
     "dtype float16"),
    (dict(json={"inputs": [[["0.5"] * 28] * 28]}), "rectangular nested list of numbers (got strings)"),
])
def test_bad_requests_get_400_with_one_line_and_the_server_keeps_serving(url, data, kwargs, reason):
    r = requests.post(f"{url}/predict", timeout=120, **kwargs)
    assert r.status_code == (413 if "max_request_bytes" in reason else 400)
    error = r.json()["error"]
    assert reason in error and "\n" not in error
    code, answer = _post_npy(url, data[1][:1])
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


def test_npy_headers_with_negative_or_boolean_dimensions_are_one_line_errors():
    """numpy's header parser accepts any Python int as a dimension: (-2, -1, 28, 28) matches a body of
    2 x 28 x 28 floats by its product, and failed in the reshape (a 500)."""
    from tinysaver import TinySaverError
    from tinysaver.serve import parse_payload

    for shape in [(-2, -1, 28, 28), (2, -1, -28, 28), (True, 1, 28, 28)]:
        body = _npy_header(shape) + b"\0" * (4 * abs(math.prod(shape)))
        with pytest.raises(TinySaverError, match=r"\.npy header: shape .* \(dimensions must be integers >= 0\)"):
            parse_payload("application/x-npy", body)


def test_serve_says_when_the_config_overrides_thresholds_calibrated_into_the_export(models, tmp_path):
    """`export --calib-records` writes its thresholds into cascade.json; a config with `thresholds`
    (the repository's has [0.9]) silently served those instead."""
    from tinysaver.commands.serve import calibrated_thresholds_note
    from tinysaver.runtime.manifest import read_manifest, write_thresholds

    export = tmp_path / "exp"
    export_cascade(Cascade(*models, threshold=0.9), export, names=["fmnist_cnn_s", "fmnist_cnn_l"],
                   data_configs=[FMNIST_PREPROCESS] * 2)
    args = {"export_dir": str(export), "thresholds": [0.9]}
    assert calibrated_thresholds_note(args, "c.yaml") is None  # not calibrated: the config's thresholds are the plan
    write_thresholds(export, [0.75], {"guarantee": "expected", "drop": 0.5})
    note = calibrated_thresholds_note(args, "c.yaml")
    assert note and "[0.9] of c.yaml, not [0.75]" in note and "\n" not in note
    assert calibrated_thresholds_note({"export_dir": str(export)}, "c.yaml") is None  # cascade.json's are served
    assert calibrated_thresholds_note({**args, "thresholds": [0.75]}, "c.yaml") is None
    assert read_manifest(export)["thresholds"] == [0.75]


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


def test_an_int8_saver_is_served_like_its_onnx_cascade(server, models, data, tmp_path):
    """An export with an int8 saver (``--precision int8 fp32``) runs on the same deployments,
    unchanged: the answers equal :class:`OnnxCascade` on that export, sample by sample."""
    from ray import serve

    from tinysaver.runtime import OnnxCascade
    from tinysaver.runtime.quantize import Calibration
    from tinysaver.serve import build_app

    _, x = data
    rows = list(range(64))
    export_dir = tmp_path / "int8"
    names = ["fmnist_cnn_s", "fmnist_cnn_l"]
    cascade = Cascade(*models, threshold=server["threshold"])
    export_cascade(cascade, export_dir, names=names, data_configs=[FMNIST_PREPROCESS] * 2, precision=["int8", "fp32"],
                   calib=Calibration("fashion_mnist", "holdout", limit=128))
    offline = OnnxCascade(export_dir)
    # a threshold in a gap of the int8 saver's own confidences, so routing equality is not luck
    threshold, margin = gap_threshold(offline.route([x[rows]] * 2).runs[0].confidence, 0.6, window=40)
    assert margin > 1e-5
    offline.thresholds = [threshold]
    want = offline(x[rows])
    serve.run(build_app({**server["config"], "export_dir": str(export_dir), "thresholds": [threshold]}), name="int8",
              route_prefix="/int8")
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: _post_npy(f"{server['url']}/int8", x[i:i + 4]), rows[::4]))
        assert {code for code, _ in results} == {200}
        _assert_equal_offline([a for _, a in results], rows, (want.logits, want.stage, want.confidence))
        assert set(want.stage.tolist()) == {0, 1}
    finally:
        serve.delete("int8")


@pytest.mark.parametrize("proxy", ["tinysaver", "ray"])
def test_cli_serve_check_joins_the_cluster(server, tmp_path, proxy):
    import ray

    config = tmp_path / "serve.yaml"
    config.write_text(json.dumps({"applications": [{
        "name": "cli", "route_prefix": "/cli", "import_path": "tinysaver.serve:build_app",
        "args": {"export_dir": str(server["export_dir"]),
                 "stage_defaults": {"ray_actor_options": {"num_cpus": 0.25}}}}]}))
    address = ray.get_runtime_context().gcs_address
    port = _free_port() if proxy == "tinysaver" else server["port"]  # Ray's proxy of this cluster: its port
    result = subprocess.run([sys.executable, "-m", "tinysaver.cli", "serve", str(config), "--address", address,
                             "--port", str(port), "--proxy", proxy, "--check"],
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

    def write(threshold, actor_options=None):
        config.write_text(json.dumps({"applications": [{
            "name": "watch", "route_prefix": "/watch", "import_path": "tinysaver.serve:build_app",
            "args": {"export_dir": str(server["export_dir"]), "thresholds": [threshold],
                     "stage_defaults": {"ray_actor_options": actor_options or {"num_cpus": 0.25}}}}]}))

    def health():
        try:
            r = requests.get(f"http://127.0.0.1:{port}/watch/health", timeout=30)
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
    port = _free_port()  # the HTTP front's
    proc = subprocess.Popen([sys.executable, "-m", "tinysaver.cli", "serve", str(config), "--address", address,
                             "--port", str(port), "--poll-s", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        before = wait_for(lambda s: s[0]["threshold"] == 0.5)
        # an editor that replaces the file (gone for a moment), then an edit Ray Serve refuses: the
        # server keeps serving what runs and says "not applied"
        config.unlink()
        time.sleep(1.0)
        assert proc.poll() is None
        write(0.6, {"num_cpus": -1})
        time.sleep(1.5)
        assert proc.poll() is None and health()[0]["threshold"] == 0.5
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
        assert "not applied: " + str(config) + ": invalid serve config (ValueError: The quantity of resource num_cpus " \
            "cannot be negative)" in err, err[-2000:]
        from ray import serve

        assert "watch" not in serve.status().applications  # removed from the shared cluster
        assert requests.get(f"{server['url']}/watch/health", timeout=30).status_code == 404  # "/" has no such route
    finally:
        if proc.poll() is None:
            proc.kill()
            out, err = proc.communicate()
            print(out, err[-3000:])


def test_an_over_long_body_gets_a_413_that_urllib_reads(url):
    """urllib sends the whole body before it reads the answer: the server reads (and drops) the rest
    of an over-long body before answering, so the client reads the 413 instead of a reset."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/predict", data=b"0" * 5_000_000,
                                     headers={"content-type": "application/x-npy"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=60)
    assert info.value.code == 413
    assert "exceeds max_request_bytes (300000)" in json.loads(info.value.read())["error"]


def _slow_upload(port: int, path: str) -> socket.socket:
    """A client that sends the headers and 100 of the 10,000 body bytes it announces, then stalls."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                 "Content-Length: 10000\r\n\r\n".encode() + b"0" * 100)
    return sock


def test_stalled_uploads_are_bounded_and_timed_out_apart_from_inference(server, data):
    """Uploads have their own slots (max_concurrent_uploads) and deadline (body_timeout_s): stalled
    clients get 408, one beyond the bound 503 at once, and the stages keep answering meanwhile."""
    import time

    from ray import serve

    from tinysaver.serve import build_app

    guard = {**server["config"], "ingress": {"ray_actor_options": {"num_cpus": 0.25}, "max_concurrent_uploads": 3,
                                             "body_timeout_s": 2.0}}
    serve.run(build_app(guard), name="guard", route_prefix="/guard")
    try:
        url = f"{server['url']}/guard"
        assert _post_npy(url, data[1][:1])[0] == 200
        stalled = [_slow_upload(server["port"], "/guard/predict") for _ in range(3)]
        time.sleep(0.5)
        start = time.monotonic()
        code, answer = _post_npy(url, data[1][:1])
        assert code == 503 and "max_concurrent_uploads is 3" in answer["error"]
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{url}/predict", data=b"0" * 200_000,  # whole body first, then reads
                                         headers={"content-type": "application/x-npy"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=60)
        assert info.value.code == 503
        assert _post_npy(server["url"], data[1][:1])[0] == 200  # the other application is untouched
        for sock in stalled:
            answer = b""
            while b"}" not in answer:  # the status line and headers, then the JSON body
                part = sock.recv(4096)
                if not part:
                    break
                answer += part
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"not received within 2 s" in answer
            sock.close()
        assert time.monotonic() - start < 10
        assert _post_npy(url, data[1][:1])[0] == 200  # slots free again
    finally:
        serve.delete("guard")


def test_a_killed_stage_replica_loses_no_request(server, data):
    """kill -9 of the base replica, then of the saver replica, under 4 clients: every request is
    answered 200 (calls to a dead replica are sent again) and each stage is back."""
    import signal
    import threading
    import time

    url, x = server["url"], data[1]
    codes, health = [], []
    stop = threading.Event()

    def client(i):
        while not stop.is_set():
            codes.append(_post_npy(url, x[i:i + 1])[0])

    def replicas():
        return [s["replica"] for s in requests.get(f"{url}/health", timeout=60).json()["stages"]]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for k in (1, 0):
            before = replicas()
            os.kill(int(before[k].split("-")[0]), signal.SIGKILL)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                body = requests.get(f"{url}/health", timeout=60).json()
                health.append(body["status"])
                if body["status"] == "ok" and body["stages"][k]["replica"] != before[k]:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"stage {k} not back within 60 s")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(codes) > 20 and set(codes) == {200}, sorted(set(codes))


def test_health_says_degraded_while_a_stage_does_not_answer(server):
    """The ingress's /health with a first stage whose replica is gone: "degraded", the stage "down"
    (the kill above usually recovers before a health call sees it)."""
    import asyncio

    from starlette.requests import Request

    from tinysaver.serve.ingress import ingress_deployment

    class Dead:
        class info:
            @staticmethod
            def remote():
                from ray.exceptions import ActorDiedError

                async def fail():
                    raise ActorDiedError()
                return fail()

    ingress = ingress_deployment()(str(server["export_dir"]), 0, {}, {"max_request_bytes": 10,
                                                                      "max_samples_per_request": 1}, Dead())
    scope = {"type": "http", "method": "GET", "path": "/health", "root_path": "", "headers": [], "query_string": b""}
    answer = json.loads(asyncio.run(ingress(Request(scope))).body)
    assert answer["status"] == "degraded"
    assert answer["stages"] == [{"name": "fmnist_cnn_s", "status": "down"}, {"name": "fmnist_cnn_l", "status": "unknown"}]


def test_cli_serve_ends_within_30_s_of_sigterm_under_load(server, tmp_path):
    """SIGTERM under load: `tinysaver serve` removes its application and ends within 30 s."""
    import signal
    import threading
    import time

    import ray

    config = tmp_path / "term.yaml"
    config.write_text(json.dumps({"applications": [{
        "name": "term", "route_prefix": "/term", "import_path": "tinysaver.serve:build_app",
        "args": {"export_dir": str(server["export_dir"]), "ingress": {"ray_actor_options": {"num_cpus": 0.25}},
                 "stage_defaults": {"ray_actor_options": {"num_cpus": 0.25}}}}]}))
    address = ray.get_runtime_context().gcs_address
    port = _free_port()  # the HTTP front's
    proc = subprocess.Popen([sys.executable, "-m", "tinysaver.cli", "serve", str(config), "--address", address,
                             "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stop = threading.Event()
    body = _npy(np.zeros((8, 1, 28, 28), np.float32))

    def client():
        while not stop.is_set():
            try:
                requests.post(f"http://127.0.0.1:{port}/term/predict", data=body, timeout=30,
                              headers={"content-type": "application/x-npy"})
            except requests.RequestException:
                pass

    threads = [threading.Thread(target=client) for _ in range(8)]
    try:
        assert "serving term" in proc.stdout.readline()
        for t in threads:
            t.start()
        time.sleep(2.0)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - start
        assert proc.returncode == 0 and took < 30, (took, err[-2000:])
        from ray import serve

        assert "term" not in serve.status().applications
    finally:
        stop.set()
        for t in threads:
            t.join()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_client_leaving_does_not_cancel_the_call_its_batch_neighbours_wait_for():
    """The escalated rows of one batch go on in one call shared by its requests: a request cancelled
    (its client disconnected) must not cancel that call for the others."""
    import asyncio

    from tinysaver.serve.stage import merge_next

    async def scenario():
        release = asyncio.Event()

        async def next_stage():
            await release.wait()
            return {"logits": np.ones((2, 3), np.float32), "stage": np.array([1, 1]), "confidence": np.array([.9, .8])}

        call = asyncio.ensure_future(next_stage())
        exits = np.array([False])
        leaving = asyncio.ensure_future(merge_next(0, np.zeros((1, 3), np.float32), np.zeros(1), exits, (call, [0])))
        staying = asyncio.ensure_future(merge_next(0, np.zeros((1, 3), np.float32), np.zeros(1), exits.copy(),
                                                   (call, [1])))
        await asyncio.sleep(0.01)
        leaving.cancel()
        await asyncio.sleep(0.01)
        release.set()
        return await staying, leaving.cancelled(), call.cancelled()

    answer, left, call_cancelled = asyncio.run(scenario())
    assert left and not call_cancelled
    assert answer["stage"].tolist() == [1] and answer["confidence"].tolist() == [0.8]


def test_inputs_that_overflow_the_model_get_a_422_not_a_500(server, data):
    """Finite float32 inputs near the type's limit make the logits NaN; JSON cannot carry them."""
    r = requests.post(f"{server['url']}/predict", data=_npy(np.full((2, 1, 28, 28), 3e38, np.float32)),
                      headers={"content-type": "application/x-npy"}, timeout=120)
    assert r.status_code == 422, r.text
    assert "output is not finite for sample(s) 0, 1" in r.json()["error"]
    assert _post_npy(server["url"], data[1][:1])[0] == 200


def _ingress(server, first_stage, **limits):
    from tinysaver.serve.ingress import ingress_deployment

    return ingress_deployment()(str(server["export_dir"]), 0, {}, {"max_request_bytes": 1_000_000,
                                                                   "max_samples_per_request": 8, **limits},
                                first_stage)


def _request(method: str, path: str, body: bytes = b"", content_type: str = "application/octet-stream"):
    from starlette.requests import Request

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
             "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]}
    return Request(scope, receive)


def test_a_dead_decode_process_is_replaced_and_the_request_answered(server, data):
    """A decode process killed (the OOM killer, a crash in an image library) breaks its whole pool:
    the ingress replaces the pool and decodes the request on the new one."""
    import asyncio

    ingress = _ingress(server, None)
    try:
        with pytest.raises(Exception):
            ingress._decoder.submit(os._exit, 1).result(timeout=60)  # the pool is now broken
        kind, x = asyncio.run(ingress._parse("image/png", _png(28, 28)))
        assert kind == "arrays" and x.shape == (1, 1, 28, 28) and ingress.decoder_restarts == 1
        kind, x = asyncio.run(ingress._parse("image/png", _png(28, 28)))
        assert x.shape == (1, 1, 28, 28) and ingress.decoder_restarts == 1
    finally:
        ingress.__del__()


def test_an_unforeseen_failure_is_a_one_line_500_and_json(server):
    import asyncio

    class Broken:
        class answer:
            @staticmethod
            def remote(kind, data):
                async def fail():
                    raise RuntimeError("something\nunexpected")
                return fail()

    ingress = _ingress(server, Broken())
    try:
        body = _npy(np.zeros((1, 1, 28, 28), np.float32))
        response = asyncio.run(ingress(_request("POST", "/predict", body, "application/x-npy")))
        assert response.status_code == 500
        assert json.loads(response.body) == {"error": "internal error (RuntimeError: something unexpected)"}
    finally:
        ingress.__del__()


def test_a_killed_ingress_replica_loses_no_request_through_the_front(server, front, data):
    """kill -9 of the ingress replica under 4 clients of tinysaver serve's HTTP front: every request
    is answered 200 (the front holds the body and sends it again to the new replica). Through Ray's
    proxy the same kill answered the requests in flight 500 (bench/results/bench_serve_faults.md)."""
    import signal
    import threading
    import time

    url, x = front["url"], data[1]
    codes = []
    stop = threading.Event()

    def client(i):
        while not stop.is_set():
            try:
                codes.append(_post_npy(url, x[i:i + 1])[0])
            except requests.RequestException as exc:  # a reset would be a lost request too
                codes.append(type(exc).__name__)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        before = None
        while before is None:  # a loaded machine can make one health call slow ("not answering")
            before = requests.get(f"{url}/health", timeout=60).json()["ingress"].get("replica")
        os.kill(int(before.split("-")[0]), signal.SIGKILL)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            body = requests.get(f"{url}/health", timeout=60).json()
            if body["status"] == "ok" and body["ingress"].get("replica") not in (None, before):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the ingress was not back within 60 s")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(codes) > 20 and set(codes) == {200}, sorted(map(str, set(codes)))


class _FakeIngress:
    """A handle whose replica dies ``deaths`` times, then answers (for the front without Ray's cluster)."""

    def __init__(self, deaths: int) -> None:
        self.deaths, self.calls = deaths, 0
        outer = self

        class Method:
            def __init__(self, answer):
                self.answer = answer

            def remote(self, *args):
                async def call():
                    from ray.exceptions import ActorDiedError

                    outer.calls += 1
                    if outer.calls <= outer.deaths:
                        raise ActorDiedError()
                    return self.answer
                return call()

        self.predict = Method({"class": [3]})
        self.health = Method({"status": "ok", "stages": [], "ingress": {"status": "up"}})


def _asgi(app, method: str, path: str, body: bytes = b""):
    """(status, JSON) of one request to an ASGI app, run here."""
    import asyncio

    sent, received = [], []

    async def receive():  # the body, then nothing: the client waits for its answer
        if received:
            await asyncio.Event().wait()
        received.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/x-npy"), (b"content-length", str(len(body)).encode())]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def test_the_front_sends_a_request_again_while_the_ingress_is_dead_and_says_when_it_gave_up():
    from tinysaver.serve.config import IngressOptions
    from tinysaver.serve.front import HttpFront

    fake = _FakeIngress(deaths=2)
    app = HttpFront(lambda: fake, ["s", "l"], IngressOptions(retry_timeout_s=5), 1000, "/api")
    assert _asgi(app, "POST", "/api/predict", b"x") == (200, {"class": [3]})
    assert fake.calls == 3 and app.retries == 2
    assert _asgi(app, "GET", "/api/health")[1] == {"status": "ok", "stages": [], "ingress": {"status": "up"},
                                                    "front": {"uploads": 0, "retries": 2, "hang_ups": 0}}
    assert _asgi(app, "POST", "/predict")[0] == 404  # outside the route prefix
    dead = HttpFront(lambda: _FakeIngress(deaths=10**9), ["s", "l"], IngressOptions(retry_timeout_s=0.3), 1000)
    status, answer = _asgi(dead, "POST", "/predict", b"x")
    assert status == 503 and answer["error"].startswith("the ingress is down (its replica died; retried")
    assert _asgi(dead, "GET", "/health")[1] == {
        "status": "degraded", "stages": [{"name": "s", "status": "unknown"}, {"name": "l", "status": "unknown"}],
        "ingress": {"status": "down"}, "front": {"uploads": 0, "retries": dead.retries, "hang_ups": 0}}
    assert _asgi(app, "POST", "/api/predict", b"0" * 1001)[0] == 413


def test_stalled_uploads_at_the_front_are_bounded_and_timed_out(server, data):
    """The front's upload slots and body deadline: stalled clients get 408, one beyond the bound 503
    at once, good clients are answered meanwhile."""
    import time

    running, url, port = _start_front(server, max_concurrent_uploads=3, body_timeout_s=2.0)
    try:
        assert _post_npy(url, data[1][:1])[0] == 200
        stalled = [_slow_upload(port, "/predict") for _ in range(3)]
        time.sleep(0.5)
        start = time.monotonic()
        code, answer = _post_npy(url, data[1][:1])
        assert code == 503 and "max_concurrent_uploads is 3" in answer["error"]
        for sock in stalled:
            answer = b""
            while b"}" not in answer:
                part = sock.recv(4096)
                if not part:
                    break
                answer += part
            assert answer.startswith(b"HTTP/1.1 408") and b"not received within 2 s" in answer, answer
            sock.close()
        assert time.monotonic() - start < 10
        assert _post_npy(url, data[1][:1])[0] == 200
    finally:
        running.stop()


def test_cli_serve_refuses_a_port_in_use_in_one_line_before_ray_starts(server, tmp_path, capsys):
    from tinysaver.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {"export_dir": str(server["export_dir"])}
        path = tmp_path / "port.yaml"
        path.write_text(json.dumps(config))
        assert main(["serve", str(path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1


def test_the_front_cancels_the_call_of_a_client_that_left_and_answers_408_past_request_timeout(caplog):
    import asyncio
    import gc

    from tinysaver.serve.config import IngressOptions
    from tinysaver.serve.front import HttpFront

    cancelled = []

    async def wait():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # as Ray's DeploymentResponse once cancel() was called
            raise RuntimeError("request was cancelled") from None

    class NeverAnswers:
        def __await__(self):
            return wait().__await__()

        def cancel(self):
            cancelled.append(True)

    class Handle:
        class predict:
            @staticmethod
            def remote(*args):
                return NeverAnswers()

    def run(app, then):
        messages = [{"type": "http.request", "body": b"x", "more_body": False}, *then]
        sent = []

        async def receive():
            return messages.pop(0) if messages else await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "root_path": "", "query_string": b"",
                 "headers": [(b"content-type", b"application/x-npy")]}
        asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
        return sent

    app = HttpFront(lambda: Handle, ["s", "l"], IngressOptions(), 1000)
    assert run(app, [{"type": "http.disconnect"}]) == []  # nobody to answer
    assert app.hang_ups == 1 and cancelled == [True]
    slow = HttpFront(lambda: Handle, ["s", "l"], IngressOptions(), 1000, request_timeout_s=0.2)
    sent = run(slow, [])
    assert sent[0]["status"] == 408 and b"not answered within 0.2 s (request_timeout_s)" in sent[1]["body"]
    assert cancelled == [True, True]
    gc.collect()  # a cancelled call's error is retrieved: no log line per client that left
    assert "never retrieved" not in caplog.text
