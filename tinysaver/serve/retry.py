"""Calls between deployments that survive a replica's death, and the one-line error of any failure.

Inference is idempotent, so a call whose replica died (kill -9, Ray's memory monitor, a node lost)
is sent again: Ray Serve's router drops the dead replica and the call waits for a live one (or the
one the controller starts in its place). Only the death of a replica is retried; an error the
replica raised (a bad input, back-pressure) is answered as it is.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from ..errors import TinySaverError


class StageDown(TinySaverError):
    """A stage whose replicas stayed unreachable through the retry window (HTTP 503)."""

    status = 503


def replica_died(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it wraps) says the replica is gone, not that the request failed."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    kinds = (ActorDiedError, ActorUnavailableError, RayActorError)
    return isinstance(exc, kinds) or isinstance(getattr(exc, "cause", None), kinds)


def cause_of(exc: BaseException) -> BaseException:
    """The error a replica raised, unwrapped from Ray's ``RayTaskError`` (whose text carries the
    remote traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


async def call_with_retry(call: Callable[[], Awaitable[Any]], timeout_s: float, what: str,
                          on_retry: Optional[Callable[[BaseException], None]] = None) -> Any:
    """``await call()``, sent again (0.05 s, doubling to 1 s apart) while its replica is dead, for
    up to ``timeout_s`` seconds.

    Raises:
        StageDown: Still no live replica after ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay, tries = 0.05, 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if not replica_died(exc):
                raise
            tries += 1
            if loop.time() + delay > deadline:
                raise StageDown(f"{what} is down (its replica died; retried {tries} times over {timeout_s:g} s)") \
                    from None
            if on_retry is not None:
                on_retry(exc)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)


__all__ = ["StageDown", "replica_died", "cause_of", "call_with_retry"]
