"""Retrying a call whose first try usually succeeds, without paying for the retry machinery.

Building tenacity's ``AsyncRetrying`` and going through it costs tens of microseconds a call
(docs/benchmarks.md); the claim, every outcome batch and every request of the lumina handler
make one. :func:`retry_after_failure` runs the first try bare and hands the remaining tries to
tenacity only after a retryable failure, with the waits tenacity alone would have made. It is
the one retry helper: database conflicts (:func:`taskd.queue.connection.retrying_conflicts`),
the completer's writes through an outage and the lumina handler's requests all use it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)

T = TypeVar("T")


async def retry_after_failure(
    once: Callable[[], Awaitable[T]],
    retryable: Callable[[BaseException], bool],
    *,
    tries: int | None,
    wait_base: float,
    wait_max: float,
    on_failure: Callable[[BaseException], None] | None = None,
) -> T:
    """``once()``, tried up to ``tries`` times (None: until it succeeds) while it fails with an
    error ``retryable`` accepts; the wait before try ``n`` is random up to
    ``min(wait_max, wait_base * 2^(n-2))``. ``on_failure(exc)`` is called after each retryable
    failure (to log it). The last error is re-raised; any other propagates at once.
    """
    try:
        return await once()
    except Exception as exc:
        if (tries is not None and tries <= 1) or not retryable(exc):
            raise
        if on_failure is not None:
            on_failure(exc)
    await anyio.sleep(random.uniform(0, min(wait_max, wait_base)))

    def failed(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if on_failure is not None and exc is not None:
            on_failure(exc)

    retrying = AsyncRetrying(
        retry=retry_if_exception(retryable),
        stop=stop_never if tries is None else stop_after_attempt(tries - 1),
        # Its first wait comes before try 3, so its base is twice ours.
        wait=wait_random_exponential(multiplier=2 * wait_base, max=wait_max),
        before_sleep=failed,
        sleep=anyio.sleep,
        reraise=True,
    )
    return await retrying(once)
