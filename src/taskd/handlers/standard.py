"""The ``standard`` built-in handlers: ``noop``, ``sleep`` and ``fail``.

They do no real work; they exist to try a deployment, to load-test the queue and to
exercise every outcome (success, retry, permanent failure, retry later) end to end.
"""

from __future__ import annotations

import math
from typing import Any

import anyio

from taskd.errors import HandlerError, PermanentError, RetryLater
from taskd.handlers.base import SubtaskContext
from taskd.types import JSON

# One day: a sleep longer than that is a mistake in the payload, not a test.
MAX_SLEEP_MS = 86_400_000


class RequestedFailure(HandlerError):
    """The ``fail`` handler's retryable error: the payload asked for it."""


async def noop(ctx: SubtaskContext) -> JSON:
    """Return the payload unchanged."""
    return ctx.payload


async def sleep(ctx: SubtaskContext) -> JSON:
    """Sleep ``payload["ms"]`` milliseconds, then return ``{"slept_ms": ms}``.

    Raises :class:`taskd.PermanentError` when ``ms`` is missing, not a number, negative or
    over a day.
    """
    ms = _number(ctx.payload, "ms")
    if ms is None:
        raise PermanentError("payload 'ms' is missing: sleep needs {\"ms\": milliseconds}")
    if not 0 <= ms <= MAX_SLEEP_MS:
        raise PermanentError(f"payload 'ms' must be from 0 to {MAX_SLEEP_MS}, got {ms!r}")
    await anyio.sleep(ms / 1000)
    return {"slept_ms": ms}


async def fail(ctx: SubtaskContext) -> JSON:
    """Fail as the payload says; for trying retries and error reporting.

    Payload: ``message`` (default "requested failure"); ``permanent`` (bool): raise
    :class:`taskd.PermanentError` instead of the retryable :class:`RequestedFailure`;
    ``retry_later`` (seconds): raise :class:`taskd.RetryLater` instead; ``until_attempt`` (int):
    fail only while the attempt is below it, then succeed and return ``{"attempt": n}``.
    """
    payload = ctx.payload
    message = payload.get("message", "requested failure")
    if not isinstance(message, str):
        raise PermanentError(f"payload 'message' must be a string, got {message!r}")
    permanent = payload.get("permanent", False)
    if not isinstance(permanent, bool):
        raise PermanentError(f"payload 'permanent' must be true or false, got {permanent!r}")
    until = _number(payload, "until_attempt")
    if until is not None and ctx.attempt >= until:
        return {"attempt": ctx.attempt}
    retry_later = _number(payload, "retry_later")
    if retry_later is not None:
        if retry_later < 0:
            raise PermanentError(f"payload 'retry_later' must be >= 0, got {retry_later!r}")
        raise RetryLater(retry_later, message)
    if permanent:
        raise PermanentError(message)
    raise RequestedFailure(message)


def _number(payload: dict[str, Any], key: str) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PermanentError(f"payload {key!r} must be a number, got {value!r}")
    return value
