"""One stage of the cascade as a Ray Serve deployment (:func:`stage_deployment`): batching across
requests (``@serve.batch``), the routing of each batch, and the call to the next stage (sent again
if its replica died). HTTP is the ingress's (:mod:`tinysaver.serve.ingress`).
"""
from __future__ import annotations

import asyncio
import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import TinySaverError
from ..routing import Stage, route
from ..runtime.backends import make_session
from ..runtime.cascade import StageModel, check_batch
from ..runtime.manifest import preprocess_key, read_manifest, stage_specs
from ..runtime.preprocess import preprocess_image
from .config import StageOptions
from .payload import ARRAYS, take
from .retry import call_with_retry

#: how long a stage waits for the next one's /health report before calling it down
INFO_TIMEOUT_S = 2.0


class NextDeployment:
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


async def merge_next(index: int, logits: np.ndarray, conf: np.ndarray, exits: np.ndarray,
                     pending: Optional[tuple]) -> Dict[str, np.ndarray]:
    """A stage's answers (``index`` for the rows that exit here), with the escalated rows' answers
    from the next stages merged in.

    Args:
        pending: ``(call, rows)``: the call to the next deployment (an asyncio future) and which of
            its answers are this request's escalated rows, or None (nothing escalated).

    The call may be shared with other requests of the same batch, so it is awaited through
    ``asyncio.shield``: a client that disconnects cancels its own request only, not the call the
    other requests of its batch wait for (awaited bare, the cancellation would reach the shared
    future and every request of the batch would fail).
    """
    stage = np.full(len(logits), index, dtype=np.int64)
    if pending is not None:
        call, rows = pending
        down = await asyncio.shield(call)
        escalated = np.flatnonzero(~exits)
        logits[escalated] = down["logits"][rows]
        stage[escalated] = down["stage"][rows]
        conf[escalated] = down["confidence"][rows]
    return {"logits": logits, "stage": stage, "confidence": conf}


def stage_deployment() -> Any:
    """The deployment class (built on first use, so importing this module does not import Ray)."""
    from ray import serve

    class CascadeStage:
        """One stage of the cascade; the front stage (index 0) also speaks HTTP."""

        def __init__(self, export_dir: str, index: int, n_stages: int, options: Dict[str, Any],
                     limits: Dict[str, int], next_stage: Any = None, retry_timeout_s: float = 30.0) -> None:
            manifest = read_manifest(export_dir)
            self.specs = stage_specs(manifest)
            self.index, self.n_stages = index, n_stages
            self.spec = self.specs[index]
            opts = StageOptions(**options)
            self.model = StageModel(make_session(Path(export_dir) / self.spec.file, opts.providers, opts.threads,
                                                 spinning=False, backend=opts.backend),
                                    self.spec, max_batch=opts.model_batch_size)
            self.stage = Stage(model=self.model, confidence=self.spec.confidence, name=self.spec.name)
            self.next = next_stage
            self.limits = limits
            self.threshold = math.inf
            self.cross_request = opts.cross_request_batching
            self.replica = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.batches = self.samples = 0  # model runs and the samples they held (for /health)
            self.calls_to_next = 0
            self.retries = 0  # calls to the next stage sent again after its replica died
            self.retry_timeout_s = float(retry_timeout_s)
            # Images are preprocessed here (a resize of a large image takes a while), off the event loop.
            self._prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage{index}-prep")
            # One model thread: the event loop keeps decoding, batching and forwarding while it runs.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage{index}")
            self._shared_input = len({(s.input_size, preprocess_key(s.preprocess)) for s in self.specs}) == 1

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
            x = self._inputs(kind, data) if kind == ARRAYS else \
                await asyncio.get_running_loop().run_in_executor(self._prep, self._inputs, kind, data)
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
                pending = (asyncio.ensure_future(self._call_next(kind, take(kind, data, escalated))),
                           np.arange(escalated.size))
            return await self._finish(logits, conf, exits, pending)

        async def _piece(self, x: np.ndarray, kind: str, data: Any) -> Dict[str, np.ndarray]:
            return await self._finish(*await self._batched((x, kind, data)))

        async def _call_next(self, kind: str, data: Any) -> Dict[str, np.ndarray]:
            self.calls_to_next += 1
            return await call_with_retry(lambda: self.next.answer.remote(kind, data), self.retry_timeout_s,
                                         f"stage {self.specs[self.index + 1].name}", on_retry=self._count_retry)

        def _count_retry(self, exc: BaseException) -> None:
            self.retries += 1

        async def _finish(self, logits: np.ndarray, conf: np.ndarray, exits: np.ndarray,
                          pending: Optional[tuple]) -> Dict[str, np.ndarray]:
            return await merge_next(self.index, logits, conf, exits, pending)

        async def info(self) -> List[Dict[str, Any]]:
            """This stage and the ones after it (for the health route)."""
            me = {"name": self.spec.name, "threshold": "inf" if math.isinf(self.threshold) else self.threshold,
                  "max_batch_size": self.max_batch_size, "cross_request_batching": self.cross_request,
                  "replica": self.replica, "batches": self.batches, "samples": self.samples,
                  "calls_to_next": self.calls_to_next, "retries": self.retries, "status": "up"}
            if self.next is None:
                return [me]

            async def ask() -> List[Dict[str, Any]]:
                return await self.next.info.remote()

            try:
                return [me, *(await asyncio.wait_for(ask(), INFO_TIMEOUT_S))]
            except Exception:  # its replica is dead, restarting, or not answering
                return [me, *({"name": s.name, "status": "down" if k == 0 else "unknown"}
                              for k, s in enumerate(self.specs[self.index + 1:]))]

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
                parts = [take(kind, items[i][2], escalated[i]) for i in members]
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
                nxt = NextDeployment()
                routed = route([self.stage, Stage(model=nxt, confidence=nxt.confidence, name="next deployment")],
                               [x, np.arange(len(x))], thresholds=[self.threshold, math.inf])
            run = routed.runs[0]
            return (np.array(run.outputs, dtype=np.float32), np.asarray(run.confidence, dtype=np.float64),
                    np.asarray(run.exits, dtype=bool))

    return CascadeStage


__all__ = ["INFO_TIMEOUT_S", "NextDeployment", "merge_next", "stage_deployment"]
