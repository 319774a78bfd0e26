"""Serve an exported cascade on Ray Serve: one deployment per stage, cross-request batching, HTTP JSON API.

CONFIG is a Ray Serve config file whose first application's args are the cascade config (see
tinysaver.serve and configs/serve/fmnist_cascade.yaml), or that args mapping alone. The command
starts a local Ray instance (or joins --address, and then removes only its own application at
the end), deploys the cascade and serves it until interrupted: POST <prefix>/predict (JSON inputs
or base64 images, .npy, or image bytes), GET <prefix>/health.

HTTP is answered by this process (--proxy tinysaver, the default): it holds each body until it is
answered and sends it again when the ingress replica holding it dies. --proxy ray leaves HTTP to
Ray Serve's proxy (as `serve run`), which answers 500 for those requests instead.

While it runs, saving new thresholds or batching options into CONFIG applies them to the running
replicas (Ray Serve user_config: no restart, queues kept). --check deploys, calls /health, answers
one request and exits.

SIGINT or SIGTERM ends it within 30 s at any load: the HTTP front stops taking connections and
gives its requests in flight 5 s, the replicas get graceful_shutdown_timeout_s (5 s by default) to
finish theirs, then the application is removed (and the local Ray instance stopped); past 30 s it
exits with status 1. While it runs it prints a line whenever a deployment's replicas stop running
(a crash, Ray's memory monitor) and when they are back, and the lines in which Ray's memory
monitor reports killing workers.

The same file works with Ray's own CLI: `serve run configs/serve/fmnist_cascade.yaml`.

Example (after the `tinysaver export` example wrote outputs/exported/fmnist_s_l):
  tinysaver serve configs/serve/fmnist_cascade.yaml --check
"""
from __future__ import annotations

import argparse
from typing import Optional


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG.yaml", help="Ray Serve config (applications[0].args) or the args alone")
    p.add_argument("--host", help="HTTP host (default: the config's http_options, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's http_options, else 8000)")
    p.add_argument("--address", help="join this Ray cluster (default: start a local instance)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--check", action="store_true", help="deploy, call /health and /predict once, shut down")
    p.add_argument("--poll-s", type=float, default=1.0, help="how often CONFIG is checked for changes (seconds)")
    p.add_argument("--proxy", choices=("tinysaver", "ray"), default="tinysaver",
                   help="who answers HTTP: tinysaver's own front in this process, which sends a request again when "
                        "the ingress replica holding it dies (default), or Ray Serve's proxy actors (as `serve run`; "
                        "a killed ingress replica then loses the requests it held)")
    p.add_argument("--object-store-mb", type=int, default=1024,
                   help="object store of the local Ray instance, in MiB (default 1024; Ray's own default is 30%% "
                        "of the machine's memory)")


#: the most seconds `tinysaver serve` takes to end after SIGINT/SIGTERM (then it exits anyway)
SHUTDOWN_S = 30.0
#: HTTP options of the config file passed on to Ray Serve's proxy (besides host and port)
PROXY_OPTIONS = ("request_timeout_s", "keep_alive_timeout_s")


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import os
    import signal
    import sys
    import time

    from ..errors import TinySaverError
    from ..serve import ServeConfig, build_app
    from ._checks import at_least

    if args.port is not None and not 0 < args.port < 65536:
        raise TinySaverError(f"--port must be in 1..65535, got {args.port}")
    at_least(args.num_cpus, 1, "--num-cpus")
    at_least(args.object_store_mb, 100, "--object-store-mb")
    if not args.poll_s > 0:
        raise TinySaverError(f"--poll-s must be > 0 seconds, got {args.poll_s}")
    mtime = os.stat(args.config).st_mtime if os.path.exists(args.config) else None  # before reading: no edit missed
    loaded = read_config(args.config)  # refuse a bad config before Ray starts
    http = {"host": "127.0.0.1", "port": 8000, **loaded["http_options"]}
    if args.host:
        http["host"] = args.host
    if args.port:
        http["port"] = args.port
    own_front = args.proxy == "tinysaver"
    if own_front:
        check_port_free(http["host"], int(http["port"]))  # before Ray starts, not after a deploy
    import ray
    from ray import serve

    if args.address:
        context = ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    else:  # a local instance talks over the loopback only
        context = ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
                           _node_ip_address="127.0.0.1", object_store_memory=args.object_store_mb * 1024 * 1024)
    # SIGTERM (a service manager, `kill`) ends it like Ctrl-C: the application is removed (set after
    # ray.init, whose own handler exits with status 15)
    signal.signal(signal.SIGTERM, _interrupt)
    # SIGINT too: a shell starts background jobs with SIGINT ignored, so `kill -INT` would do nothing
    signal.signal(signal.SIGINT, _interrupt)
    name = loaded["name"]
    front = None
    try:
        if own_front:  # no Ray proxy: this process answers HTTP
            serve.start(proxy_location="Disabled")
            # Ray's "Application ... is ready at http://127.0.0.1:8000/" names its proxy's default
            # address, where nothing listens now: this command prints where the front listens
            logging.getLogger("ray.serve").addFilter(lambda record: "is ready at http" not in record.getMessage())
        else:
            serve.start(http_options={"host": http["host"], "port": http["port"],
                                      **{k: http[k] for k in PROXY_OPTIONS if k in http}})
        prefix = loaded["route_prefix"]
        serve.run(build_app(loaded["args"]), name=name, route_prefix=prefix)
        if own_front:
            front = start_http_front(name, loaded, args.config, http)
        url = f"http://{http['host']}:{http['port']}{prefix.rstrip('/')}"
        print(f"serving {name}: POST {url}/predict, GET {url}/health", flush=True)
        note = calibrated_thresholds_note(loaded["args"], args.config)
        if note:
            print(note, file=sys.stderr, flush=True)
        if args.check:
            return _check(url, ServeConfig.from_dict(loaded["args"], args.config))
        watch = ReplicaWatch(name, getattr(context, "address_info", {}).get("session_dir"))
        while True:  # until Ctrl-C
            time.sleep(args.poll_s)
            watch.poll()
            if front is not None and not front.thread.is_alive():  # nothing listens any more: say so, end
                print(f"tinysaver serve: the HTTP front on {http['host']}:{http['port']} stopped; exiting",
                      file=sys.stderr, flush=True)
                return 1
            try:
                now = os.stat(args.config).st_mtime
            except OSError:  # an editor replacing the file (gone for a moment), a moved file: keep serving
                continue
            if now != mtime:
                mtime = now
                try:
                    loaded = read_config(args.config)
                    serve.run(build_app(loaded["args"]), name=name, route_prefix=prefix)
                    if front is not None:  # the front's limits follow the config too
                        cfg = ServeConfig.from_dict(loaded["args"], args.config)
                        front.app.reconfigure(cfg, served_names(cfg))
                except Exception as exc:  # a bad edit or a failed redeploy: keep serving, say why
                    detail = " ".join(str(exc).split())[:300]  # a TinySaverError names the file already
                    where = "" if isinstance(exc, TinySaverError) else f"{args.config}: redeploy failed: "
                    print(f"tinysaver serve: not applied: {where}{detail}", file=sys.stderr, flush=True)
                    continue
                print(f"{args.config}: applied {json.dumps(loaded['args'].get('thresholds'))}", flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        _shut_down(name, bool(args.address), front)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def check_port_free(host: str, port: int) -> None:
    """Refuses, in one line, a host:port this process cannot listen on."""
    import socket

    from ..errors import TinySaverError

    if not 0 < port < 65536:
        raise TinySaverError(f"HTTP port must be in 1..65535, got {port}")
    try:
        for family, _, _, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            with socket.socket(family, socket.SOCK_STREAM) as s:  # every address the server will bind
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(address)
    except OSError as exc:
        raise TinySaverError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                             f"or --host") from None


def start_http_front(name: str, loaded: dict, path: str, http: dict):
    """Starts the HTTP front (:mod:`tinysaver.serve.front`) for the deployed application ``name``."""
    from ray import serve

    from ..serve import ServeConfig
    from ..serve.front import HttpFront, start_front

    cfg = ServeConfig.from_dict(loaded["args"], path)
    timeout = http.get("request_timeout_s")
    timeout = float(timeout) if timeout is not None and float(timeout) > 0 else None  # <= 0: none, as Ray's proxy
    app = HttpFront(lambda: serve.get_app_handle(name), served_names(cfg), cfg.ingress, cfg.max_request_bytes,
                    loaded["route_prefix"], timeout)
    app.handle  # resolved here: get_app_handle blocks, and must not on the front's event loop
    return start_front(app, http["host"], int(http["port"]), http)


def served_names(cfg) -> list:
    """The names of the stages a config serves (the last alone with ``base_only``)."""
    return cfg.names[-1:] if cfg.base_only else list(cfg.names)


def _shut_down(name: str, shared: bool, front=None) -> None:
    """Stops the HTTP front (its requests in flight get 5 s), then removes the application (a
    shared cluster) or stops Serve and the local Ray instance, within :data:`SHUTDOWN_S` whatever
    the load; further signals are ignored meanwhile."""
    import os
    import signal
    import sys
    import threading

    import ray
    from ray import serve

    def give_up():
        print(f"tinysaver serve: shutdown took over {SHUTDOWN_S:g} s; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    timer = threading.Timer(SHUTDOWN_S, give_up)
    timer.daemon = True
    timer.start()
    try:
        if front is not None:
            front.stop()
        if shared:  # a shared cluster: remove this application only
            serve.delete(name)
        else:
            serve.shutdown()
        ray.shutdown()
    finally:
        timer.cancel()


class ReplicaWatch:
    """Prints a line when a deployment of the application has fewer replicas running than before
    (a crash, Ray's memory monitor), when it is back, and each report of Ray's memory monitor
    killing workers in this node's raylet log."""

    def __init__(self, name: str, session_dir=None) -> None:
        import os

        self.name = name
        self.running: dict = {}
        self.log = os.path.join(session_dir, "logs", "raylet.out") if session_dir else None
        self.offset = os.path.getsize(self.log) if self.log and os.path.exists(self.log) else 0
        self.poll()

    def poll(self) -> None:
        import sys

        from ray import serve

        try:
            app = serve.status().applications.get(self.name)
        except Exception as exc:  # the controller itself is gone (restarting)
            print(f"tinysaver serve: Ray Serve's controller does not answer ({type(exc).__name__})",
                  file=sys.stderr, flush=True)
            return
        for dep, status in (app.deployments.items() if app else []):
            running = int(status.replica_states.get("RUNNING", 0))
            before = self.running.get(dep)
            self.running[dep] = running
            if before is not None and running != before:
                message = " ".join(str(status.message or "").split())[:300]
                print(f"tinysaver serve: deployment {dep}: {running} replica(s) running (was {before}), "
                      f"{getattr(status.status, 'value', status.status)}{': ' + message if message else ''}", file=sys.stderr, flush=True)
        for line in self._memory_kills():
            print(f"tinysaver serve: Ray's memory monitor: {line}", file=sys.stderr, flush=True)

    def _memory_kills(self) -> list:
        import os

        if not self.log or not os.path.exists(self.log):
            return []
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
            self.offset = f.tell()
        return [" ".join(line.split())[:400] for line in text.splitlines() if "low on memory" in line]


def read_config(path: str) -> dict:
    """The serve config file, loaded and checked (:func:`tinysaver.serve.load_config`,
    :meth:`~tinysaver.serve.ServeConfig.from_dict`, and the application built, which runs Ray
    Serve's checks of ``ray_actor_options``); any problem with it is one line naming it."""
    from ..errors import TinySaverError
    from ..serve import ServeConfig, build_app, load_config

    try:
        loaded = load_config(path)
        ServeConfig.from_dict(loaded["args"], path)
        build_app(loaded["args"])  # Ray Serve's own checks of the deployment options (no cluster needed)
    except TinySaverError:
        raise
    except (OSError, UnicodeDecodeError) as exc:  # a folder, a binary file, no permission
        raise TinySaverError(f"{path}: cannot read the serve config ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:160]})") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a value of the wrong kind
        raise TinySaverError(f"{path}: invalid serve config ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:160]})") from None
    return loaded


def calibrated_thresholds_note(config: dict, path: str) -> Optional[str]:
    """A line when the config's ``thresholds`` replace those that ``tinysaver export --calib-records``
    chose and wrote into cascade.json (else None): the server runs the config's, and the retuned
    export's thresholds would otherwise be dropped without a word."""
    from ..runtime.manifest import read_manifest
    from ..serve import ServeConfig
    from ..thresholds import threshold_to_json

    if "thresholds" not in config:
        return None
    cfg = ServeConfig.from_dict(config, path)
    manifest = read_manifest(cfg.export_dir)
    calibration = manifest.get("calibration")
    served = [threshold_to_json(t) for t in cfg.thresholds]
    if not calibration or served == manifest["thresholds"]:
        return None
    return (f"tinysaver serve: serving the thresholds {served} of {path}, not {manifest['thresholds']} that "
            f"cascade.json was calibrated to ({calibration.get('guarantee')}, drop <= {calibration.get('drop')} pt); "
            f"remove 'thresholds' from {path} to serve those")


def _check(url: str, cfg) -> int:
    import io
    import json
    import urllib.request

    import numpy as np

    from ..runtime import read_manifest

    with urllib.request.urlopen(f"{url}/health", timeout=60) as r:
        print("health:", r.read().decode())
    size = read_manifest(cfg.export_dir)["stages"][0]["preprocess"]["input_size"]
    sample = np.zeros((1, *size), dtype=np.float32)
    body = io.BytesIO()
    np.save(body, sample)
    request = urllib.request.Request(f"{url}/predict", data=body.getvalue(),
                                     headers={"content-type": "application/x-npy"})
    with urllib.request.urlopen(request, timeout=60) as r:
        answer = json.loads(r.read())
    print(f"predict (one zero sample): class {answer['class'][0]}, stage {answer['stage_name'][0]}, "
          f"confidence {answer['confidence'][0]:.6f}")
    return 0
