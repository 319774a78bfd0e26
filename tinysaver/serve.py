"""Serve an exported cascade (:mod:`tinysaver.export`) on Ray Serve, one deployment per stage.

The front stage is the HTTP ingress: it decodes each request, answers the samples it is sure about
and sends the others to the next stage's deployment. Every stage runs its model through
``@serve.batch``, so the samples that reach it from *different* requests (and from every replica
of the stage before) form one batch: the escalated 30 % of 32 single-sample requests is one batch
of ~10 at the base, not ten batches of one, and it leaves the front stage in one call. Each stage has its own replicas, resources
(``ray_actor_options``: saver on CPU replicas, base on GPU replicas), batch size and wait, so each
scales on its own across a Ray cluster. The routing decision of a batch is
:func:`tinysaver.routing.route` with the next deployment as its second stage.

HTTP API (``route_prefix`` + ...):

- ``POST /predict`` with one of
    * ``application/json`` ``{"inputs": [[[[...]]]]}``: preprocessed float32 ``[B, C, H, W]`` (or one
      sample ``[C, H, W]``), when every stage takes the same input;
    * ``application/json`` ``{"images": ["<base64 JPEG/PNG>", ...]}``: each stage preprocesses the
      decoded image as its data config says (:func:`tinysaver.runtime.preprocess_image`);
    * ``application/x-npy``: a ``.npy`` float32 array, as ``inputs``;
    * ``image/*``: one encoded image.

  Answer: ``{"class": [...], "stage": [...], "stage_name": [...], "confidence": [...],
  "logits": [[...]]}``, one entry per sample in request order.
- ``GET /health``: every stage's name, threshold, batching, and for the replica that answered: its
  id, how many model runs (``batches``) over how many ``samples`` it made, and its
  ``calls_to_next`` (calls carrying escalated samples to the next stage).

A bad request (wrong shape or dtype, undecodable image, payload over ``max_request_bytes``, more
than ``max_samples_per_request`` samples, images of more than ``max_request_pixels`` pixels in all,
an image more than 100 times longer than wide, malformed JSON) is answered 400 ``{"error": "<one
line>"}``; the replica keeps serving. The pixel limit is read from each image's header before it
is decoded: a compressed image is small on the wire and large in memory (100 kB of PNG can hold
10,000 x 10,000 pixels). Overload is Ray Serve's back-pressure: a request beyond a
deployment's ``max_ongoing_requests`` waits in its queue, beyond ``max_queued_requests`` it gets
503.

The thresholds are each stage's ``user_config``: redeploying with new thresholds (``serve.run(build_app(config))``
again, ``tinysaver serve`` noticing its config file changed) calls ``reconfigure`` on the running
replicas, which keep their models and their queues. With Ray's own config files (``serve deploy``)
put the new values in the file's ``deployments: [{name: stage0_..., user_config: ...}]``: a change
of the application ``args`` gives the application a new code version and new replicas.

Config (the ``args`` of a Ray Serve application, see ``configs/serve/fmnist_cascade.yaml``)::

    export_dir: outputs/exported/fmnist_s_l     # `tinysaver export` output; every node must see it
    thresholds: [0.9]                   # optional, overrides cascade.json
    max_request_bytes: 4194304
    max_samples_per_request: 256
    max_request_pixels: 67108864          # decoded pixels of a request's images, in all
    base_only: false                    # serve the last stage alone (the reference of a benchmark)
    stage_defaults: {max_batch_size: 32, batch_wait_timeout_s: 0.005, threads: 1}
    stages:                             # optional, one entry per stage, over stage_defaults
      - {num_replicas: 2, ray_actor_options: {num_cpus: 1}}
      - {num_replicas: 1, ray_actor_options: {num_gpus: 1}, providers: [CUDAExecutionProvider]}

Examples:
    >>> from ray import serve
    >>> serve.run(build_app({"export_dir": "outputs/exported/fmnist_s_l"}), route_prefix="/")  # doctest: +SKIP
    $ serve run tinysaver.serve:build_app export_dir=outputs/exported/fmnist_s_l thresholds=0.9
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from . import __version__
from .errors import TinySaverError
from .routing import Stage, route
from .runtime.backends import make_session
from .runtime.cascade import StageModel, check_batch
from .runtime.manifest import read_manifest, stage_specs
from .runtime.preprocess import preprocess_image
from .thresholds import check_thresholds as parse_thresholds

#: what a sample sent between stages looks like
ARRAYS, IMAGES = "arrays", "images"


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

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str) -> "StageOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TinySaverError(f"{where}: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        opts = cls(**values)
        if int(opts.max_batch_size) < 1 or int(opts.num_replicas) < 1:
            raise TinySaverError(f"{where}: max_batch_size and num_replicas must be >= 1")
        if opts.model_batch_size is not None and int(opts.model_batch_size) < 1:
            raise TinySaverError(f"{where}: model_batch_size must be >= 1 (or null: the whole batch)")
        if float(opts.batch_wait_timeout_s) < 0:
            raise TinySaverError(f"{where}: batch_wait_timeout_s must be >= 0")
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

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], where: str = "serve config") -> "ServeConfig":
        """Parses and checks a config (a YAML mapping, or ``serve run``'s ``key=value`` strings)."""
        known = {"export_dir", "thresholds", "max_request_bytes", "max_samples_per_request", "max_request_pixels",
                 "base_only",
                 "stage_defaults", "stages"}
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
        thresholds = parse_thresholds(thresholds, len(names))
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
                   base_only=_as_bool(config.get("base_only", False)))


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class _NextDeployment:
    """The routing core's last stage inside one deployment: "the rows the next deployment answers".

    Its batch is the row indices, so ``route`` hands back exactly the escalated rows, gathered; the
    next deployment is then called with those samples.
    """

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return rows

    @staticmethod
    def confidence(rows: np.ndarray) -> np.ndarray:
        return np.zeros(len(rows))


def _rows(items: Sequence[tuple]) -> int:
    """Samples in a list of ``(x, kind, data)`` batch items (``@serve.batch`` counts samples)."""
    return sum(len(x) for x, _, _ in items)


def _take(kind: str, data: Any, rows: np.ndarray) -> Any:
    """Rows of a request's data: an array's rows or a list's images."""
    return data[rows] if kind == ARRAYS else [data[i] for i in rows]


def _stage_deployment() -> Any:
    """The deployment class (built on first use, so importing this module does not import Ray)."""
    from ray import serve

    class CascadeStage:
        """One stage of the cascade; the front stage (index 0) also speaks HTTP."""

        def __init__(self, export_dir: str, index: int, n_stages: int, options: Dict[str, Any],
                     limits: Dict[str, int], next_stage: Any = None) -> None:
            manifest = read_manifest(export_dir)
            self.specs = stage_specs(manifest)
            self.index, self.n_stages = index, n_stages
            self.spec = self.specs[index]
            opts = StageOptions(**options)
            self.model = StageModel(make_session(Path(export_dir) / self.spec.file, opts.providers, opts.threads,
                                                 spinning=False),
                                    self.spec, max_batch=opts.model_batch_size)
            self.stage = Stage(model=self.model, confidence=self.spec.confidence, name=self.spec.name)
            self.next = next_stage
            self.limits = limits
            self.threshold = math.inf
            self.cross_request = opts.cross_request_batching
            self.replica = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.batches = self.samples = 0  # model runs and the samples they held (for /health)
            self.calls_to_next = 0
            # One model thread: the event loop keeps decoding, batching and forwarding while it runs.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage{index}")
            self._shared_input = len({(s.input_size, json.dumps(s.preprocess, sort_keys=True))
                                      for s in self.specs}) == 1

        def reconfigure(self, config: Dict[str, Any]) -> None:
            """``user_config``: threshold and batching, changed without a restart."""
            self.threshold = float(config["threshold"]) if self.next is not None else math.inf
            self.cross_request = bool(config["cross_request_batching"])
            self.max_batch_size = int(config["max_batch_size"])
            self._batched.set_max_batch_size(self.max_batch_size)
            self._batched.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

        # --- between stages ---------------------------------------------------------------------
        async def answer(self, kind: str, data: Any) -> Dict[str, np.ndarray]:
            """Answers a request's samples that reached this stage (the next ones answer the rest).

            Args:
                kind: :data:`ARRAYS` (``data``: float32 ``[B, C, H, W]``) or :data:`IMAGES`
                    (``data``: decoded uint8 images).

            Returns:
                ``logits`` ``[B, C]``, ``stage`` ``[B]``, ``confidence`` ``[B]`` for these samples.
            """
            x = self._inputs(kind, data)
            if self.cross_request:
                step = self.max_batch_size  # a large request goes in pieces a batch can hold
                parts = await asyncio.gather(*(self._piece(x[i:i + step], kind, data[i:i + step])
                                               for i in range(0, len(x), step)))
                return {key: np.concatenate([p[key] for p in parts]) for key in ("logits", "stage", "confidence")}
            # per request: this request's samples are the batch, its escalated ones the next call
            logits, conf, exits = await asyncio.get_running_loop().run_in_executor(self._executor, self._route, x)
            escalated = np.flatnonzero(~exits)
            pending = None
            if escalated.size:
                pending = (asyncio.ensure_future(self._call_next(kind, _take(kind, data, escalated))),
                           np.arange(escalated.size))
            return await self._finish(logits, conf, exits, pending)

        async def _piece(self, x: np.ndarray, kind: str, data: Any) -> Dict[str, np.ndarray]:
            return await self._finish(*await self._batched((x, kind, data)))

        async def _call_next(self, kind: str, data: Any) -> Dict[str, np.ndarray]:
            self.calls_to_next += 1
            return await self.next.answer.remote(kind, data)

        async def _finish(self, logits: np.ndarray, conf: np.ndarray, exits: np.ndarray,
                          pending: Optional[tuple]) -> Dict[str, np.ndarray]:
            """This stage's answers, with the escalated rows' answers from the next stages merged in."""
            stage = np.full(len(logits), self.index, dtype=np.int64)
            if pending is not None:
                call, rows = pending
                down = await call
                escalated = np.flatnonzero(~exits)
                logits[escalated] = down["logits"][rows]
                stage[escalated] = down["stage"][rows]
                conf[escalated] = down["confidence"][rows]
            return {"logits": logits, "stage": stage, "confidence": conf}

        async def info(self) -> List[Dict[str, Any]]:
            """This stage and the ones after it (for the health route)."""
            me = {"name": self.spec.name, "threshold": "inf" if math.isinf(self.threshold) else self.threshold,
                  "max_batch_size": self.max_batch_size, "cross_request_batching": self.cross_request,
                  "replica": self.replica, "batches": self.batches, "samples": self.samples,
                  "calls_to_next": self.calls_to_next}
            return [me, *((await self.next.info.remote()) if self.next is not None else [])]

        def _inputs(self, kind: str, data: Any) -> np.ndarray:
            if kind == ARRAYS:
                if not self._shared_input:
                    raise TinySaverError("the stages take different inputs (" + ", ".join(
                        str(list(s.input_size)) for s in self.specs) + "): send images")
                return check_batch(data, self.spec.input_size)
            from PIL import Image

            return np.stack([preprocess_image(Image.fromarray(img), self.spec.preprocess) for img in data])

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_rows)
        async def _batched(self, items: List[tuple]) -> List[tuple]:
            """One model run for the samples of many requests, split back per request.

            The samples of the whole batch that go on leave in one call to the next deployment (per
            kind of input), not one call per request: each request gets that call and its rows in
            the answer, so nothing here waits for the next stage and the next batch can start.
            """
            xs = [x for x, _, _ in items]
            x = np.concatenate(xs) if len(xs) > 1 else xs[0]
            logits, conf, exits = await asyncio.get_running_loop().run_in_executor(self._executor, self._route, x)
            bounds = np.cumsum([0, *(len(v) for v in xs)])
            escalated = [np.flatnonzero(~exits[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
            pending: List[Optional[tuple]] = [None] * len(items)
            for kind in {k for _, k, _ in items}:
                members = [i for i, (_, k, _) in enumerate(items) if k == kind and escalated[i].size]
                if not members:
                    continue
                parts = [_take(kind, items[i][2], escalated[i]) for i in members]
                sub = np.concatenate(parts) if kind == ARRAYS else [img for part in parts for img in part]
                call = asyncio.ensure_future(self._call_next(kind, sub))
                offsets = np.cumsum([0, *(len(p) for p in parts)])
                for i, a, b in zip(members, offsets[:-1], offsets[1:]):
                    pending[i] = (call, np.arange(a, b))
            return [(logits[a:b].copy(), conf[a:b].copy(), exits[a:b], pending[i])
                    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]

        def _route(self, x: np.ndarray) -> tuple:
            """This stage on a batch: logits, float64 confidence, and which rows it answers."""
            self.batches += 1
            self.samples += len(x)
            if self.next is None:
                routed = route([self.stage], [x])
            else:
                nxt = _NextDeployment()
                routed = route([self.stage, Stage(model=nxt, confidence=nxt.confidence, name="next deployment")],
                               [x, np.arange(len(x))], thresholds=[self.threshold, math.inf])
            run = routed.runs[0]
            return (np.array(run.outputs, dtype=np.float32), np.asarray(run.confidence, dtype=np.float64),
                    np.asarray(run.exits, dtype=bool))

        # --- HTTP (front stage) -----------------------------------------------------------------
        async def __call__(self, request: Any) -> Any:
            from starlette.responses import JSONResponse

            # the path below the application's route prefix (Ray Serve sets it as the ASGI root_path)
            path, root = request.url.path.rstrip("/"), request.scope.get("root_path", "").rstrip("/")
            path = path[len(root):] if root and path.startswith(root) else path
            try:
                if path == "/health" and request.method == "GET":
                    return JSONResponse({"status": "ok", "stages": await self.info()})
                if path == "/predict" and request.method == "POST":
                    kind, data = await self._parse(request)
                    out = await self.answer(kind, data)
                    return JSONResponse(self._to_json(out))
                return JSONResponse({"error": "use POST .../predict or GET .../health"}, status_code=404)
            except TinySaverError as exc:
                return JSONResponse({"error": str(exc).splitlines()[0]}, status_code=400)

        async def _parse(self, request: Any) -> tuple:
            body = await _read_body(request, self.limits["max_request_bytes"])
            return parse_payload(request.headers.get("content-type", ""), body,
                                 max_samples=self.limits["max_samples_per_request"],
                                 max_pixels=self.limits.get("max_request_pixels"))

        def _to_json(self, out: Mapping[str, np.ndarray]) -> Dict[str, Any]:
            names = [s.name for s in self.specs]
            stage = out["stage"].tolist()
            return {"class": out["logits"].argmax(axis=1).tolist(), "stage": stage,
                    "stage_name": [names[k] for k in stage], "confidence": out["confidence"].tolist(),
                    "logits": out["logits"].tolist()}

    return CascadeStage


async def _read_body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TinySaverError(f"payload of {declared} bytes exceeds max_request_bytes ({limit})")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise TinySaverError(f"payload exceeds max_request_bytes ({limit})")
    return bytes(body)


def parse_payload(content_type: str, body: bytes, max_samples: Optional[int] = None,
                  max_pixels: Optional[int] = None) -> tuple:
    """``(kind, data)`` of a request body: float32 arrays or decoded uint8 images (one-line errors).

    Args:
        max_samples: Most samples (array rows or images) in one body; checked before any image is
            decoded.
        max_pixels: Most decoded pixels of the body's images in all, checked on each image's header
            before it is decoded.
    """
    kind, data = _parse_payload(content_type, body, max_samples, max_pixels)
    if max_samples is not None and len(data) > max_samples:
        raise TinySaverError(f"{len(data)} samples in one request (max_samples_per_request is {max_samples})")
    return kind, data


def _parse_payload(content_type: str, body: bytes, max_samples: Optional[int], max_pixels: Optional[int]) -> tuple:
    ctype = content_type.split(";")[0].strip().lower()
    if not body:
        raise TinySaverError("empty request body")
    if ctype == "application/json":
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TinySaverError(f"malformed JSON ({type(exc).__name__})") from None
        if not isinstance(payload, dict) or len({"inputs", "images"} & set(payload)) != 1:
            raise TinySaverError('JSON body must be {"inputs": [...]} or {"images": ["<base64>", ...]}')
        if "inputs" in payload:
            return ARRAYS, _as_batch(_json_array(payload["inputs"]))
        images = payload["images"]
        if not isinstance(images, list) or not images:
            raise TinySaverError('"images" must be a non-empty list of base64 strings')
        if max_samples is not None and len(images) > max_samples:
            raise TinySaverError(f"{len(images)} samples in one request (max_samples_per_request is {max_samples})")
        return IMAGES, _decode_all([_b64(img, i) for i, img in enumerate(images)], max_pixels)
    if ctype in ("application/x-npy", "application/octet-stream"):
        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise TinySaverError(f"body is not a .npy array ({type(exc).__name__})") from None
        return ARRAYS, _as_batch(array)
    if ctype.startswith("image/"):
        return IMAGES, [decode_to_array(body, "image", max_pixels)]
    raise TinySaverError(f"unsupported content type {ctype or 'none'!r} (use application/json, "
                         f"application/x-npy or image/*)")


def _json_array(value: Any) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise TinySaverError('"inputs" must be a rectangular nested list of numbers') from None
    return array


def _as_batch(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind != "f":
        raise TinySaverError(f"inputs: dtype {array.dtype} (expected float32)")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or len(array) == 0:
        raise TinySaverError(f"inputs: shape {list(array.shape)} (expected [batch, C, H, W] or [C, H, W])")
    return np.asarray(array, dtype=np.float32)


def _b64(value: Any, i: int) -> bytes:
    if not isinstance(value, str):
        raise TinySaverError(f"image {i}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TinySaverError(f"image {i}: not valid base64") from None


def _decode_all(encoded: Sequence[bytes], max_pixels: Optional[int]) -> List[np.ndarray]:
    """Decodes a request's images; each is refused from its header when the request's pixels would
    pass ``max_pixels`` with it."""
    out: List[np.ndarray] = []
    used = 0
    for i, data in enumerate(encoded):
        left = None if max_pixels is None else max_pixels - used
        out.append(decode_to_array(data, f"image {i}", left, max_pixels))
        used += out[-1].shape[0] * out[-1].shape[1]
    return out


def decode_to_array(data: bytes, what: str, max_pixels: Optional[int] = None,
                    request_pixels: Optional[int] = None) -> np.ndarray:
    """An encoded image as uint8 ``[H, W]`` (grayscale) or ``[H, W, 3]``: what travels between stages.

    Args:
        max_pixels: Refused from its header beyond that many pixels (what the request has left).
        request_pixels: The request's limit, for the message.
    """
    from .runtime.preprocess import decode_image

    limit = f"max_request_pixels ({request_pixels or max_pixels} decoded pixels per request)"
    img = decode_image(data, what, max_pixels=max_pixels, limit=limit)
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def build_app(config: Mapping[str, Any]) -> Any:
    """The Ray Serve application of a cascade: one deployment per stage, the first one the ingress.

    Args:
        config: See the module docstring (``ServeConfig.from_dict``).

    Returns:
        A bound application for ``serve.run`` (also an application builder for
        ``serve run tinysaver.serve:build_app export_dir=...``).
    """
    cfg = config if isinstance(config, ServeConfig) else ServeConfig.from_dict(config)
    cls = _stage_deployment()
    from ray import serve

    deployment = serve.deployment(cls)
    n = len(cfg.names)
    indices = [n - 1] if cfg.base_only else list(range(n))
    limits = {"max_request_bytes": cfg.max_request_bytes, "max_samples_per_request": cfg.max_samples_per_request,
              "max_request_pixels": cfg.max_request_pixels}
    thresholds = [*cfg.thresholds, math.inf]
    nxt = None
    for k in reversed(indices):
        opts = cfg.stages[k]
        init = dict(export_dir=cfg.export_dir, index=k, n_stages=n, options=asdict(opts), limits=limits)
        user_config = {"threshold": thresholds[k] if not math.isinf(thresholds[k]) else "inf",
                       "max_batch_size": int(opts.max_batch_size), "batch_wait_timeout_s": float(opts.batch_wait_timeout_s),
                       "cross_request_batching": bool(opts.cross_request_batching)}
        dep = deployment.options(
            name=f"stage{k}_{cfg.names[k]}", num_replicas=int(opts.num_replicas),
            ray_actor_options=dict(opts.ray_actor_options), max_ongoing_requests=int(opts.max_ongoing_requests),
            max_queued_requests=int(opts.max_queued_requests), user_config=user_config)
        # A code version that changes only with what the replicas are built from (the graph, the
        # constructor's arguments, this package): a redeploy that changes only user_config
        # (thresholds, batching) then reconfigures the running replicas instead of replacing them.
        # Ray Serve dropped the public `version` option and keeps this attribute for its own use
        # (a random one otherwise); tests/test_serve.py checks the replicas survive a redeploy.
        dep._version = _code_version(init, cfg.export_dir, cfg.names[k])
        nxt = dep.bind(**init, next_stage=nxt)
    return nxt


def _code_version(init: Mapping[str, Any], export_dir: str, name: str) -> str:
    manifest = read_manifest(export_dir)
    sha = next(s["sha256"] for s in manifest["stages"] if s["name"] == name)
    text = json.dumps({"init": init, "sha256": sha, "tinysaver": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


__all__ = ["StageOptions", "ServeConfig", "build_app", "load_config", "parse_payload", "decode_to_array"]
