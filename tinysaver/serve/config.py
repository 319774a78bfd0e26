"""A serve config: the ``args`` of the Ray Serve application (:class:`ServeConfig`), each stage's
deployment options (:class:`StageOptions`), and the config file (:func:`load_config`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..errors import TinySaverError
from ..runtime.manifest import read_manifest
from ..thresholds import check_thresholds


def known_options(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """``cls(**values)`` for a dataclass of options; an unknown key is one line listing the known."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TinySaverError(f"{where}: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return cls(**values)


@dataclass
class StageOptions:
    """How one stage is deployed.

    Args:
        num_replicas: Replicas of this stage's deployment.
        ray_actor_options: Resources of each replica (``{"num_cpus": 1}``, ``{"num_gpus": 1}``).
        max_batch_size: Largest batch (in samples) the stage runs; requests are merged up to it.
        batch_wait_timeout_s: How long a partial batch waits for more samples.
        cross_request_batching: False: each request's samples run as their own batch (no merging
            across requests; the benchmark's "per-request" variant).
        max_ongoing_requests: Requests a replica takes at once (Ray Serve back-pressure); must be
            >= ``max_batch_size`` for single-sample requests to fill a batch.
        max_queued_requests: Requests waiting beyond that before new ones get 503 (-1: no limit).
        model_batch_size: Largest batch one model run gets (None: the whole batch); a merged batch
            larger than this runs in slices (for CPUs where a big batch costs more per sample).
        threads: onnxruntime intra-op threads of the stage's session (None: all cores).
        providers: onnxruntime execution providers (default CPU).
        backend: The runtime backend of the stage's session (:mod:`tinysaver.runtime.backends`;
            None: onnxruntime).
        health_check_period_s: How often Ray Serve checks each replica (Ray's default is 10 s; a
            dead replica is replaced sooner with a shorter period).
        graceful_shutdown_timeout_s: How long a replica being removed may finish its requests
            (Ray's default is 20 s; ``tinysaver serve`` must end within 30 s of a signal).
    """

    num_replicas: int = 1
    ray_actor_options: Dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    cross_request_batching: bool = True
    max_ongoing_requests: int = 128
    max_queued_requests: int = -1
    model_batch_size: Optional[int] = None
    threads: Optional[int] = 1
    providers: Optional[List[str]] = None
    backend: Optional[str] = None
    health_check_period_s: float = 2.0
    graceful_shutdown_timeout_s: float = 5.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str) -> "StageOptions":
        opts = known_options(cls, values, where)
        if int(opts.max_batch_size) < 1 or int(opts.num_replicas) < 1:
            raise TinySaverError(f"{where}: max_batch_size and num_replicas must be >= 1")
        if opts.model_batch_size is not None and int(opts.model_batch_size) < 1:
            raise TinySaverError(f"{where}: model_batch_size must be >= 1 (or null: the whole batch)")
        if float(opts.batch_wait_timeout_s) < 0:
            raise TinySaverError(f"{where}: batch_wait_timeout_s must be >= 0")
        return opts


@dataclass
class IngressOptions:
    """How the HTTP ingress is deployed (the deployment that reads, parses and decodes requests and
    calls the first stage; it runs no model).

    Args:
        num_replicas: Replicas of the ingress.
        ray_actor_options: Resources of each replica.
        max_ongoing_requests: Requests an ingress replica holds at once: uploads plus requests
            waiting for their answers (Ray Serve back-pressure beyond it).
        max_queued_requests: Requests waiting beyond that before new ones get 503 (-1: no limit).
        max_concurrent_uploads: Request bodies being received at once, per ingress replica behind
            Ray's proxy, for the whole process behind ``tinysaver serve``'s own front (which reads
            the bodies itself); beyond it a request gets 503 at once. Bounded apart from inference, which the stages'
            ``max_ongoing_requests`` bound: slow uploads never hold a stage's slot.
        body_timeout_s: A body not received within this many seconds of the request reaching the
            ingress gets 408 (a stalled client holds an upload slot no longer than this).
        decode_threads: Workers that parse bodies off the event loop: threads for arrays, and
            processes of lower CPU priority that decode and preprocess images (None: the
            replica's ``num_cpus``, at least 1: one core's worth of decoding by default).
        retry_timeout_s: How long a request whose stage replica died is retried (inference is
            idempotent) before it gets 503; below the proxy's ``request_timeout_s`` (60 s in the
            shipped config), so that the client reads this 503 rather than the proxy's 408.
        health_check_period_s, graceful_shutdown_timeout_s: As for a stage.
    """

    num_replicas: int = 1
    # no CPU reserved (as Ray Serve's own proxy): it runs no model, and the stages keep the cores
    ray_actor_options: Dict[str, Any] = field(default_factory=lambda: {"num_cpus": 0})
    max_ongoing_requests: int = 1024
    max_queued_requests: int = -1
    max_concurrent_uploads: int = 512
    body_timeout_s: float = 10.0
    decode_threads: Optional[int] = None
    retry_timeout_s: float = 30.0
    health_check_period_s: float = 2.0
    graceful_shutdown_timeout_s: float = 5.0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str) -> "IngressOptions":
        opts = known_options(cls, values, where)
        if min(int(opts.num_replicas), int(opts.max_ongoing_requests), int(opts.max_concurrent_uploads)) < 1:
            raise TinySaverError(f"{where}: num_replicas, max_ongoing_requests and max_concurrent_uploads must be >= 1")
        if not (float(opts.body_timeout_s) > 0 and float(opts.retry_timeout_s) >= 0):
            raise TinySaverError(f"{where}: body_timeout_s must be > 0 and retry_timeout_s >= 0")
        return opts


@dataclass
class ServeConfig:
    """A cascade application: which export, thresholds, request limits, per-stage deployment."""

    export_dir: str
    thresholds: List[float]
    names: List[str]
    stages: List[StageOptions]
    max_request_bytes: int = 4 * 1024 * 1024
    max_samples_per_request: int = 256
    #: decoded pixels of a request's images in all (64 Mpx: ~200 MB in RGB; photos of 4 MB hold far fewer)
    max_request_pixels: int = 64 * 1024 * 1024
    base_only: bool = False
    ingress: IngressOptions = field(default_factory=IngressOptions)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], where: str = "serve config") -> "ServeConfig":
        """Parses and checks a config (a YAML mapping, or ``serve run``'s ``key=value`` strings)."""
        known = {"export_dir", "thresholds", "max_request_bytes", "max_samples_per_request", "max_request_pixels",
                 "base_only",
                 "stage_defaults", "stages", "ingress"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TinySaverError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        if "export_dir" not in config:
            raise TinySaverError(f"{where}: export_dir is required (a `tinysaver export` directory)")
        export_dir = str(Path(str(config["export_dir"])).expanduser().resolve())
        manifest = read_manifest(export_dir)
        names = [s["name"] for s in manifest["stages"]]
        thresholds = config.get("thresholds", manifest["thresholds"])
        if isinstance(thresholds, str):  # `serve run ... thresholds=0.9,0.8`
            thresholds = [t for t in thresholds.split(",") if t.strip()]
        if not isinstance(thresholds, (list, tuple)):
            thresholds = [thresholds]
        thresholds = check_thresholds(thresholds, len(names))
        defaults = dict(config.get("stage_defaults") or {})
        per_stage = list(config.get("stages") or [{}] * len(names))
        if len(per_stage) != len(names):
            raise TinySaverError(f"{where}: 'stages' has {len(per_stage)} entries for {len(names)} stages ({', '.join(names)})")
        stages = [StageOptions.from_dict({**defaults, **dict(s or {})}, f"{where}: stage {k} ({names[k]})")
                  for k, s in enumerate(per_stage)]
        return cls(export_dir=export_dir, thresholds=thresholds, names=names, stages=stages,
                   max_request_bytes=int(config.get("max_request_bytes", cls.max_request_bytes)),
                   max_samples_per_request=int(config.get("max_samples_per_request", cls.max_samples_per_request)),
                   max_request_pixels=int(config.get("max_request_pixels", cls.max_request_pixels)),
                   base_only=as_bool(config.get("base_only", False)),
                   ingress=IngressOptions.from_dict(dict(config.get("ingress") or {}), f"{where}: ingress"))


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def load_config(path: str | Path) -> Dict[str, Any]:
    """A serve config file: a Ray Serve config (``applications: [{args: ...}]``, its first
    application, with ``http_options``, ``name`` and ``route_prefix``) or the ``args`` mapping alone.

    Returns:
        ``{"args": ..., "http_options": ..., "name": ..., "route_prefix": ...}``.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TinySaverError(f"{path}: not found") from None
    except yaml.YAMLError as exc:
        raise TinySaverError(f"{path}: not YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict):
        raise TinySaverError(f"{path}: expected a mapping")
    if "applications" in data:
        apps = data["applications"] or []
        if not apps or "args" not in apps[0]:
            raise TinySaverError(f"{path}: applications[0].args (the cascade config) is missing")
        app = apps[0]
        base = Path(path).parent
        args = dict(app["args"])
        # A relative export_dir is relative to the config file in `tinysaver serve`, to the
        # working directory in `serve run`: resolve it against the file when it exists there.
        if "export_dir" in args and not Path(args["export_dir"]).is_absolute() and (base / args["export_dir"]).exists() \
                and not Path(args["export_dir"]).exists():
            args["export_dir"] = str(base / args["export_dir"])
        return {"args": args, "http_options": dict(data.get("http_options") or {}),
                "name": app.get("name", "tinysaver"), "route_prefix": app.get("route_prefix", "/")}
    return {"args": data, "http_options": {}, "name": "tinysaver", "route_prefix": "/"}


__all__ = ["StageOptions", "IngressOptions", "ServeConfig", "as_bool", "load_config"]
