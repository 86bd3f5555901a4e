"""Retrying a call whose first try usually succeeds, without paying for the retry machinery.

Building tenacity's ``AsyncRetrying`` and going through it costs ~45-70 us a call on a slow
machine; the claim, every outcome batch and every request of the lumina handler made one.
:func:`retry_after_failure` runs the first try bare and hands the remaining tries to tenacity
only after a retryable failure, with the waits tenacity alone would have made.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

T = TypeVar("T")


async def retry_after_failure(
    once: Callable[[], Awaitable[T]],
    retryable: Callable[[BaseException], bool],
    *,
    tries: int,
    wait_base: float,
    wait_max: float,
) -> T:
    """``once()``, tried up to ``tries`` times while it fails with an error ``retryable``
    accepts; the wait before try ``n`` is random up to ``min(wait_max, wait_base * 2^(n-2))``.
    The last error is re-raised; any other propagates at once.
    """
    try:
        return await once()
    except Exception as exc:
        if tries <= 1 or not retryable(exc):
            raise
    await anyio.sleep(random.uniform(0, min(wait_max, wait_base)))
    retrying = AsyncRetrying(
        retry=retry_if_exception(retryable),
        stop=stop_after_attempt(tries - 1),
        # Its first wait comes before try 3, so its base is twice ours.
        wait=wait_random_exponential(multiplier=2 * wait_base, max=wait_max),
        sleep=anyio.sleep,
        reraise=True,
    )
    return await retrying(once)
