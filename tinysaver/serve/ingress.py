"""The HTTP ingress (:func:`ingress_deployment`): reads each body under its own limits, parses and
decodes it in a thread pool, calls the first stage (again if its replica died) and answers.

It runs no model. Separating it from the first stage keeps three things apart: slow uploads (an
upload slot, :class:`~tinysaver.serve.config.IngressOptions` ``max_concurrent_uploads``, for at
most ``body_timeout_s``) from inference capacity (the stages' ``max_ongoing_requests``); decoding
(threads) from the event loop that routes every other request; and a dead stage replica from a
lost request (the call is retried).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import TinySaverError
from ..runtime.cascade import check_batch
from ..runtime.manifest import preprocess_key, read_manifest, stage_specs
from ..runtime.preprocess import preprocess_image
from .config import IngressOptions
from .payload import ARRAYS, IMAGES, RequestError, UploadSlots, parse_payload
from .retry import call_with_retry, cause_of

#: how long /health waits for the stages' own report before calling them down
HEALTH_TIMEOUT_S = 3.0
#: how much lower the decode threads' CPU priority is than the replica's (niceness, capped at 19):
#: on a busy machine the cores go to routing and inference first, and a client sending huge images
#: waits instead of slowing everyone (Ray starts its workers at niceness 15; decoding then runs at 19)
DECODE_NICE = 10
#: how long a request refused for want of an upload slot may take to send its body (read and
#: dropped, so that clients which send the whole body before reading, like urllib, read the 503)
REFUSED_BODY_S = 1.0

logger = logging.getLogger("ray.serve")


def lower_priority() -> None:
    """Lowers the calling process's CPU priority by :data:`DECODE_NICE` (niceness at most 19)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + DECODE_NICE))
    except (AttributeError, OSError):  # no priorities here: decoding runs at normal priority
        pass


def decode_body(content_type: str, body: bytes, limits: Mapping[str, int], preprocess: Optional[Mapping[str, Any]],
                input_size: Sequence[int]) -> tuple:
    """``(kind, data)`` a stage takes from a request body: parsed, decoded and, with ``preprocess``
    (every stage preprocesses alike), preprocessed into one float32 batch."""
    kind, data = parse_payload(content_type, body, max_samples=limits["max_samples_per_request"],
                               max_pixels=limits.get("max_request_pixels"), pil=preprocess is not None)
    if kind == ARRAYS:
        return ARRAYS, check_batch(data, input_size)
    if preprocess is not None:  # one preprocessing serves every stage: send the small float32 batch
        return ARRAYS, np.stack([preprocess_image(img, preprocess) for img in data])
    return IMAGES, data


def carries_images(content_type: str, body: bytes) -> bool:
    """Whether a body holds encoded images (decoded in the decode processes, not a thread)."""
    ctype = content_type.split(";")[0].strip().lower()
    return ctype.startswith("image/") or (ctype == "application/json" and b'"images"' in body)


def non_finite_rows(out: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows of an answer whose logits or confidence are not finite (JSON has no inf/NaN)."""
    bad = ~np.isfinite(out["logits"]).all(axis=1) | ~np.isfinite(out["confidence"])
    return np.flatnonzero(bad)


def decode_threads(options: IngressOptions) -> int:
    """Decode threads of an ingress replica: ``decode_threads``, else its ``num_cpus`` (at least 1)."""
    if options.decode_threads:
        return int(options.decode_threads)
    return max(1, int(float(options.ray_actor_options.get("num_cpus", 1) or 1)))


def error_answer(exc: BaseException, what: str) -> Tuple[int, Dict[str, str], Optional[Dict[str, str]]]:
    """``(status, {"error": one line}, headers)`` of a request that failed with ``exc``: the
    message a stage or the ingress raised (not Ray's traceback), 503 for a full queue, a one-line
    500 (details logged) for anything unforeseen. Shared by the ingress and the HTTP front."""
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
    from starlette.requests import ClientDisconnect

    cause = cause_of(exc)
    if isinstance(exc, BackPressureError) or isinstance(cause, BackPressureError):  # a full queue (max_queued_requests)
        pressure = exc if isinstance(exc, BackPressureError) else cause
        headers = {"connection": "close"}
        if getattr(pressure, "retry_after_s", None) is not None:
            headers["retry-after"] = str(max(1, math.ceil(float(pressure.retry_after_s))))
        return int(getattr(pressure, "status_code", 503) or 503), \
            {"error": f"overloaded: {' '.join(str(pressure).split())[:200]}"}, headers
    if isinstance(cause, DeploymentUnavailableError):  # no replica of the deployment runs (yet)
        return 503, {"error": f"unavailable: {' '.join(str(cause).split())[:200]}"}, {"connection": "close"}
    if isinstance(cause, ClientDisconnect):  # the client left during its upload: nobody reads this
        return 499, {"error": "client disconnected"}, None
    if isinstance(cause, TinySaverError):  # raised by a stage or the ingress: its own message
        status = getattr(cause, "status", 400)
        headers = {"connection": "close"} if status in (413, 503) else None
        return status, {"error": (str(cause).splitlines() or [""])[0]}, headers
    logger.error("tinysaver: %s failed", what, exc_info=exc)  # a bug or an unforeseen failure
    detail = " ".join(str(cause).split())[:200]
    return 500, {"error": f"internal error ({type(cause).__name__}: {detail})"}, None


def ingress_deployment() -> Any:
    """The ingress class (built on first use, so importing this module does not import Ray)."""

    class CascadeIngress:
        """HTTP in front of the first stage."""

        def __init__(self, export_dir: str, first_index: int, options: Dict[str, Any], limits: Dict[str, int],
                     first_stage: Any) -> None:
            self.specs = stage_specs(read_manifest(export_dir))
            self.first_index = first_index
            self.options = IngressOptions(**options)
            self.limits = limits
            self.first = first_stage
            self.replica = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.uploads = UploadSlots(REFUSED_BODY_S)  # bodies being received now
            self.retries = 0  # calls sent again after a replica died
            served = self.specs[first_index:]
            self._shared = len({(s.input_size, preprocess_key(s.preprocess)) for s in served}) == 1
            # Arrays are parsed in a thread; images are decoded and preprocessed in processes of
            # lower priority (a 64-megapixel decode in this process slowed every other request
            # 10-fold on 2 cores), when what comes back is the small preprocessed batch.
            self._parser = ThreadPoolExecutor(max_workers=decode_threads(self.options), thread_name_prefix="parse")
            self._decoder = self._new_decoder() if self._shared else None
            self.decoder_restarts = 0  # decode pools replaced after one of their processes died

        def _new_decoder(self) -> ProcessPoolExecutor:
            import multiprocessing

            return ProcessPoolExecutor(max_workers=decode_threads(self.options),
                                       mp_context=multiprocessing.get_context("spawn"), initializer=lower_priority)

        def __del__(self) -> None:
            """Ray Serve calls this when the replica shuts down: the decode processes go with it."""
            for pool in (getattr(self, "_decoder", None), getattr(self, "_parser", None)):
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)

        async def __call__(self, request: Any) -> Any:
            """The HTTP entry of Ray Serve's proxy (``serve run``): the body is read here."""
            from starlette.responses import JSONResponse

            # the path below the application's route prefix (Ray Serve sets it as the ASGI root_path)
            path, root = request.url.path.rstrip("/"), request.scope.get("root_path", "").rstrip("/")
            path = path[len(root):] if root and path.startswith(root) else path
            try:
                if path == "/health" and request.method == "GET":
                    return JSONResponse(await self.health())
                if path == "/predict" and request.method == "POST":
                    return JSONResponse(await self.predict(request.headers.get("content-type", ""),
                                                           await self._read(request)))
                return JSONResponse({"error": "use POST .../predict or GET .../health"}, status_code=404)
            except Exception as exc:
                status, body, headers = error_answer(exc, f"{request.method} {path}")
                return JSONResponse(body, status_code=status, headers=headers)

        async def predict(self, content_type: str, body: bytes) -> Dict[str, Any]:
            """The answer to a ``/predict`` body already read (by :meth:`__call__`, or by the HTTP
            front of ``tinysaver serve`` through a handle, which sends it again if this replica dies)."""
            kind, data = await self._parse(content_type, body)
            out = await call_with_retry(lambda: self.first.answer.remote(kind, data),
                                        self.options.retry_timeout_s, f"stage {self.specs[self.first_index].name}",
                                        on_retry=self._count_retry)
            return self._to_json(out)

        async def health(self) -> Dict[str, Any]:
            """The ``/health`` answer: the stages' reports and this replica's."""
            stages = await self.info()
            status = "degraded" if any(s.get("status") == "down" for s in stages) else "ok"
            return {"status": status, "stages": stages, "ingress": {
                "replica": self.replica, "uploads": self.uploads.active, "retries": self.retries,
                "decoder_restarts": self.decoder_restarts, "status": "up"}}

        def _count_retry(self, exc: BaseException) -> None:
            self.retries += 1

        async def _read(self, request: Any) -> bytes:
            """The body, under an upload slot (:func:`~tinysaver.serve.payload.read_body` limits)."""
            return await self.uploads.read(request, self.options.max_concurrent_uploads,
                                           self.limits["max_request_bytes"], self.options.body_timeout_s)

        async def _parse(self, ctype: str, body: bytes) -> tuple:
            spec = self.specs[self.first_index]
            images = carries_images(ctype, body)
            if not images and not self._shared:
                raise TinySaverError("the stages take different inputs (" + ", ".join(
                    str(list(s.input_size)) for s in self.specs) + "): send images")
            args = (decode_body, ctype, body, self.limits, spec.preprocess if self._shared else None, spec.input_size)
            if images and self._decoder is not None:
                return await self._decode(*args)
            return await asyncio.get_running_loop().run_in_executor(self._parser, *args)

        async def _decode(self, *args: Any) -> tuple:
            """Runs a decode in the process pool. A dead decode process (the kernel's OOM killer, a
            crash in an image library) breaks the whole pool: it is replaced and the request tried
            once more on the new one, then answered 503."""
            for attempt in range(2):
                pool = self._decoder
                try:
                    return await asyncio.get_running_loop().run_in_executor(pool, *args)
                except BrokenProcessPool:
                    if self._decoder is pool:  # the first request to see it replaces it
                        pool.shutdown(wait=False, cancel_futures=True)
                        self._decoder = self._new_decoder()
                        self.decoder_restarts += 1
                        logger.warning("tinysaver ingress: a decode process died; decode pool replaced")
            raise RequestError("the image decoder died twice on this request (out of memory?); it was restarted", 503)

        async def info(self) -> List[Dict[str, Any]]:
            """The stages' reports (each marked up or down) for /health."""
            async def ask() -> List[Dict[str, Any]]:
                return await self.first.info.remote()

            try:
                return await asyncio.wait_for(ask(), HEALTH_TIMEOUT_S)
            except Exception:  # its replica is dead, restarting, or not answering
                return [{"name": s.name, "status": "down" if k == 0 else "unknown"}
                        for k, s in enumerate(self.specs[self.first_index:])]

        def _to_json(self, out: Mapping[str, np.ndarray]) -> Dict[str, Any]:
            bad = non_finite_rows(out)
            if bad.size:  # finite but extreme inputs can overflow the model: say so instead of a 500
                raise RequestError(f"the model's output is not finite for sample(s) "
                                   f"{', '.join(map(str, bad[:10].tolist()))}{' ...' if bad.size > 10 else ''} "
                                   f"(inputs far outside the range the model was trained on?)", 422)
            names = [s.name for s in self.specs]
            stage = out["stage"].tolist()
            return {"class": out["logits"].argmax(axis=1).tolist(), "stage": stage,
                    "stage_name": [names[k] for k in stage], "confidence": out["confidence"].tolist(),
                    "logits": out["logits"].tolist()}

    return CascadeIngress


__all__ = ["HEALTH_TIMEOUT_S", "DECODE_NICE", "REFUSED_BODY_S", "lower_priority", "decode_body", "carries_images",
           "non_finite_rows", "decode_threads", "error_answer", "ingress_deployment"]
