"""The HTTP front of ``tinysaver serve`` (:class:`HttpFront`, :func:`start_front`): an HTTP server
in the serving process, outside Ray's actors, that reads each body and sends it to the ingress
deployment through a handle, again if the ingress replica died.

Why not Ray Serve's proxy: the proxy forwards a request to one ingress replica and, when that
replica is killed, answers 500 for every request it was holding (it never sends them again), so a
kill -9 of the ingress lost requests however many ingress replicas ran. Here the body stays in the
front until the answer arrives, and a call that meets a dead replica is sent again
(:func:`~tinysaver.serve.retry.call_with_retry`; inference is idempotent) to a live one or to the
replica the controller starts in its place. ``serve run`` with Ray's proxy keeps working
(``tinysaver serve --proxy ray`` too); it just lacks this.

The front does what the ingress's ``__call__`` does before parsing: upload slots
(``ingress.max_concurrent_uploads``), the body deadline (``body_timeout_s``) and size limit
(``max_request_bytes``), all before the ingress is involved; it decodes nothing (the ingress's
decode processes do), so its event loop only moves bytes.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..errors import TinySaverError
from .config import IngressOptions
from .ingress import HEALTH_TIMEOUT_S, REFUSED_BODY_S, error_answer
from .payload import RequestError, UploadSlots, discard_body
from .retry import call_with_retry, replica_died

#: how long the front's /health waits for the ingress's, which waits up to HEALTH_TIMEOUT_S for
#: the stages': longer, so that a slow stage is reported as such and not as a dead ingress
FRONT_HEALTH_TIMEOUT_S = 2 * HEALTH_TIMEOUT_S + 1.0

#: how long :func:`start_front` waits for the server to listen
START_TIMEOUT_S = 30.0


class HttpFront:
    """The ASGI application of the front: ``POST <prefix>/predict`` and ``GET <prefix>/health``.

    Args:
        handle: A callable returning the ingress deployment's handle
            (``lambda: serve.get_app_handle(name)``); asked once, on the first request.
        stage_names: The served stages' names (for /health while the ingress does not answer).
        options: The ingress options (upload slots, body timeout, retry window).
        max_request_bytes: Largest body accepted (413 beyond).
        route_prefix: The application's route prefix.
        request_timeout_s: A request not answered within this many seconds gets 408 (as Ray
            Serve's proxy's ``request_timeout_s``; None: no limit).
    """

    def __init__(self, handle: Callable[[], Any], stage_names: List[str], options: IngressOptions,
                 max_request_bytes: int, route_prefix: str = "/", request_timeout_s: Optional[float] = None) -> None:
        self._get_handle = handle
        self._handle: Any = None
        self.stage_names = list(stage_names)
        self.options = options
        self.max_request_bytes = int(max_request_bytes)
        self.prefix = "/" + route_prefix.strip("/") if route_prefix.strip("/") else ""
        self.request_timeout_s = request_timeout_s
        self.uploads = UploadSlots(REFUSED_BODY_S)  # bodies being received now
        self.retries = 0  # calls sent again after the ingress replica died
        self.hang_ups = 0  # clients that left before their answer (their call cancelled)

    def reconfigure(self, config: Any, stage_names: List[str]) -> None:
        """Takes the limits and stage names of a redeployed :class:`~tinysaver.serve.config.ServeConfig`."""
        self.options = config.ingress
        self.max_request_bytes = int(config.max_request_bytes)
        self.stage_names = list(stage_names)

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = self._get_handle()
        return self._handle

    async def __call__(self, scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        if scope["type"] != "http":  # lifespan, websockets: nothing to do
            return
        request = Request(scope, receive)
        path = request.url.path.rstrip("/")
        if self.prefix:  # the path below the route prefix ("" outside it: 404)
            path = path[len(self.prefix):] if path.startswith(self.prefix + "/") else ""
        try:
            if path == "/health" and request.method == "GET":
                status, body, headers = 200, await self.health(), None
            elif path == "/predict" and request.method == "POST":
                answer = await self.predict(request)
                if answer is None:  # the client left: nobody to answer
                    return
                status, body, headers = 200, answer, None
            else:
                await discard_body(request, self.max_request_bytes, REFUSED_BODY_S)
                status, body, headers = 404, {"error": "use POST .../predict or GET .../health"}, None
        except Exception as exc:
            status, body, headers = error_answer(exc, f"{request.method} {path}")
        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)

    async def predict(self, request: Any) -> Optional[Dict[str, Any]]:
        """Reads the body under an upload slot, then asks the ingress (again while its replica is
        dead) until it answers, ``request_timeout_s`` passes (408) or the client leaves (None: the
        call is cancelled, as Ray's proxy cancels it, so that a flood of clients hanging up costs
        no inference)."""
        from starlette.requests import ClientDisconnect

        try:
            body = await self.uploads.read(request, self.options.max_concurrent_uploads, self.max_request_bytes,
                                           self.options.body_timeout_s)
        except ClientDisconnect:  # left during its upload: nobody to answer, nothing to log
            self.hang_ups += 1
            return None
        ctype = request.headers.get("content-type", "")
        handle, sent = self.handle, []

        def call() -> Any:
            response = handle.predict.remote(ctype, body)
            sent.append(response)
            return response

        answer = asyncio.ensure_future(
            call_with_retry(call, self.options.retry_timeout_s, "the ingress", on_retry=self._count_retry))
        gone = asyncio.ensure_future(disconnected(request.receive))
        done: set = set()
        try:
            done, _ = await asyncio.wait({answer, gone}, timeout=self.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if answer not in done:  # the client left, the time is up, or this task was cancelled
                abandon(answer, sent)
        if answer in done:
            return answer.result()
        if gone in done:
            self.hang_ups += 1
            return None
        raise RequestError(f"not answered within {self.request_timeout_s:g} s (request_timeout_s)", 408)

    def _count_retry(self, exc: BaseException) -> None:
        self.retries += 1

    async def health(self) -> Dict[str, Any]:
        """The ingress's /health with the front's own counts; "degraded" with the stages "unknown"
        when the ingress does not answer within :data:`FRONT_HEALTH_TIMEOUT_S`: the ingress
        "down" when its replica died (or none is running), "not answering" when it is only slow."""
        front = {"uploads": self.uploads.active, "retries": self.retries, "hang_ups": self.hang_ups}
        try:
            answer = await asyncio.wait_for(self._ask_health(), FRONT_HEALTH_TIMEOUT_S)
        except Exception as exc:
            from ray.serve.exceptions import DeploymentUnavailableError

            gone = replica_died(exc) or isinstance(exc, DeploymentUnavailableError)
            return {"status": "degraded", "stages": [{"name": n, "status": "unknown"} for n in self.stage_names],
                    "ingress": {"status": "down" if gone else "not answering"}, "front": front}
        return {**answer, "front": front}

    async def _ask_health(self) -> Dict[str, Any]:
        return await self.handle.health.remote()


def abandon(answer: "asyncio.Future[Any]", sent: List[Any]) -> None:
    """Cancels a call nobody waits for any more, and the ingress's work on it (best effort)."""
    answer.cancel()
    # its end is a cancellation or Ray's RequestCancelledError: retrieved, so that asyncio does not
    # log "Task exception was never retrieved" once per client that left
    answer.add_done_callback(lambda task: task.cancelled() or task.exception())
    if sent:  # DeploymentResponse.cancel() may block briefly on the router's future: off the loop
        asyncio.get_running_loop().run_in_executor(None, quietly, sent[-1].cancel)


def quietly(call: Callable[[], Any]) -> None:
    """``call()``, whatever it raises (a cancel of a request that failed to be assigned re-raises
    that failure; it has been answered already)."""
    try:
        call()
    except Exception:
        pass


async def disconnected(receive: Callable) -> None:
    """Returns when the client has closed its connection (ASGI ``http.disconnect``; called once
    the body has been read, ``receive`` waits until then)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class RunningFront:
    """A started front: ``stop()`` lets the requests in flight finish (at most ``grace_s``), then
    closes the server."""

    def __init__(self, server: Any, thread: threading.Thread, app: HttpFront) -> None:
        self.server, self.thread, self.app = server, thread, app

    def stop(self, grace_s: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(grace_s + 5.0)
        if self.thread.is_alive():  # requests still open after the grace period: close them
            self.server.force_exit = True
            self.thread.join(5.0)


def start_front(app: HttpFront, host: str, port: int, http_options: Optional[Mapping[str, Any]] = None,
                grace_s: float = 5.0) -> RunningFront:
    """Serves ``app`` with uvicorn on ``host:port`` in a thread of this process.

    Args:
        app: The front.
        host, port: Where to listen.
        http_options: The config's ``http_options``; ``keep_alive_timeout_s`` is used (idle
            keep-alive connections are closed after it; by default Ray Serve's own default, 90 s
            in Ray 2.60).
        grace_s: How long :meth:`RunningFront.stop` lets requests in flight finish.

    Raises:
        TinySaverError: The server could not listen (the port is taken, the host is not local).
    """
    import uvicorn

    from ray.serve.config import HTTPOptions

    opts = dict(http_options or {})
    keep_alive = float(opts.get("keep_alive_timeout_s", HTTPOptions().keep_alive_timeout_s))
    config = uvicorn.Config(app, host=host, port=int(port), log_level="critical", lifespan="off",
                            access_log=False, timeout_keep_alive=keep_alive, timeout_graceful_shutdown=int(grace_s))
    server = uvicorn.Server(config)
    failed: List[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # uvicorn exits with SystemExit(1) when it cannot bind
            failed.append(exc)

    thread = threading.Thread(target=run, name="tinysaver-http-front", daemon=True)
    thread.start()
    end = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > end:
            server.should_exit = True
            why = f": {' '.join(str(failed[0]).split())[:160]}" if failed and str(failed[0]) not in ("", "1") else ""
            raise TinySaverError(f"cannot listen on {host}:{port} (is the port in use, or the host not this "
                                 f"machine's?){why}")
        time.sleep(0.02)
    return RunningFront(server, thread, app)


__all__ = ["HttpFront", "RunningFront", "start_front", "START_TIMEOUT_S"]
