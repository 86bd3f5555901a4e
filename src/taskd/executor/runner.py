"""Run one attempt of a subtask through its handler and decide its outcome.

The handler runs inside ``ctx.cancel_scope``, cancelled at ``ctx.deadline`` (the queue's
timeout), and for shutdown, a cancelled task or a lost lease: one scope for both ways it can
be cut short. :func:`run_subtask` enters it, or runs the handler in it as the caller entered it
(the daemon's workers: one scope for many attempts run back to back); a stop from outside then
ends in None, or in the caller's hands, since the caller knows why it stopped the attempt.
Everything else ends in a :class:`RunResult`.
"""

from __future__ import annotations

import json
import math
import random
import time
import traceback
from typing import Any, NamedTuple

import anyio
import anyio.to_thread

from taskd.errors import HandlerTimeout, LeaseLost, PermanentError, RetryLater
from taskd.handlers.base import RegisteredHandler, SubtaskContext
from taskd.handlers.registry import HandlerRegistry
from taskd.types import ErrorOccurrence, Outcome, UnreadableJSON

# Stack traces go to error_logs; the top frames say where, the rest is noise in a table.
MAX_STACK_TRACE = 8000
# One encoder for every result: json.dumps with options builds a new one on each call.
_RESULT_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False)
# Up to this fraction of the backoff is added at random, so that retries of a batch that
# failed together do not come back together.
JITTER = 0.1


class RunResult(NamedTuple):
    """What one attempt came to.

    ``outcome`` is None when the lease was lost (drop it, count it). ``error`` is the error to
    add to error_logs: None for successes and for :class:`taskd.RetryLater`. A named tuple,
    immutable like a frozen dataclass at a third of its cost (one per subtask).
    """

    outcome: Outcome | None
    error: ErrorOccurrence | None
    duration: float


def backoff_delay(
    attempt: int, retry_base: float, retry_max: float, *, rng: random.Random | None = None
) -> float:
    """Seconds before retrying after attempt ``attempt`` failed.

    ``min(retry_max, retry_base * 2^(attempt-1))`` plus up to 10% of it at random.
    """
    exponent = min(max(attempt - 1, 0), 64)  # 2^64 seconds is past any retry_max
    delay = min(retry_max, retry_base * 2.0**exponent)
    return delay + delay * JITTER * (rng or random).random()


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL characters become U+FFFD, and lone surrogates
    (which UTF-8 cannot encode) become ``?``. An exception's message may hold either, and one
    such outcome would otherwise fail the whole batch it is written with."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def error_text(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"``, the text stored on the subtask."""
    message = storable(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def result_json(result: Any) -> str | None:
    """The handler's result as JSON text for the outcome (tuples become arrays); None for None.

    Raises :class:`taskd.PermanentError` saying why when it is not JSON-serialisable or
    PostgreSQL's jsonb could not hold it. Encoded once: the store splices the text into the
    batch as it is.
    """
    if result is None:
        return None  # the common "no result": no encoder at all
    if type(result) is dict and not result:
        return "{}"  # what noop returns for the default payload: 1.1 us through the encoder
    try:
        text = _RESULT_ENCODER.encode(result)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PermanentError(f"the handler's result is not JSON-serialisable: {exc}") from exc
    if "\\u0000" in text:
        # PostgreSQL's jsonb cannot hold NUL characters.
        raise PermanentError("the handler's result is not storable: it contains a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            # Half a surrogate pair: neither UTF-8 nor jsonb can hold it.
            raise PermanentError(
                "the handler's result is not storable: it contains a lone surrogate"
            ) from exc
    return text


async def run_subtask(
    registry: HandlerRegistry,
    ctx: SubtaskContext,
    *,
    thread_limiter: anyio.CapacityLimiter,
    scope_entered: bool = False,
) -> RunResult | None:
    """Run the subtask's handler once in ``ctx.cancel_scope`` under the queue's timeout;
    return its outcome, or None when that scope was cancelled from outside.

    A caller that sets ``ctx.deadline`` enforces it: at the deadline it gives the scope that
    deadline, which cancels it. Otherwise the scope's own deadline, or the queue's timeout
    from now, is the timeout. A cancellation is a timeout when the scope's deadline has
    passed, a stop from outside when not.

    With ``scope_entered``, the caller has entered ``ctx.cancel_scope`` and enforces
    ``ctx.deadline`` itself (the producer's workers run many subtasks in one scope): the
    handler runs as it is, and its scope's cancellation propagates to the caller, who tells
    a stop from a timeout (:func:`timed_out` makes the outcome of one).

    Never raises for a handler's failure: an unknown kind, a :class:`taskd.PermanentError` or
    a result that is not JSON become a ``failed`` outcome; :class:`taskd.RetryLater` a
    ``snooze``; :class:`taskd.errors.LeaseLost` an outcome of None; anything else (a timeout
    too) a ``retry`` with backoff, or ``failed`` on the last attempt. A cancellation of an
    enclosing scope propagates.
    """
    started = time.monotonic()
    handler = registry.get(ctx.kind)
    try:
        for what, value in (("payload", ctx.subtask.payload), ("state", ctx.state)):
            if isinstance(value, UnreadableJSON):
                raise PermanentError(f"the subtask's {what} cannot be read: {value.reason}")
        if handler is None:
            raise PermanentError(
                f"no handler for kind {ctx.kind!r}; registered kinds: "
                + ", ".join(registry.kinds())
            )
        if scope_entered:
            result = result_json(await _invoke(handler, ctx, thread_limiter))
        else:
            result = result_json(await _call(handler, ctx, thread_limiter))
    except _Stopped:
        return None
    except LeaseLost:
        ctx.logger.warning("lease lost; the outcome of this attempt is dropped")
        return RunResult(None, None, time.monotonic() - started)
    except RetryLater as exc:
        ctx.logger.info("retry later in %gs: %s", exc.delay, exc)
        outcome = Outcome(ctx.id, ctx.attempt, "snooze", error=error_text(exc), delay=exc.delay)
        return RunResult(outcome, None, time.monotonic() - started)
    except Exception as exc:
        return _failure(ctx, exc, time.monotonic() - started)
    duration = time.monotonic() - started
    return RunResult(Outcome(ctx.id, ctx.attempt, "completed", result), None, duration)


class _Stopped(Exception):
    """The attempt's scope was cancelled from outside before its deadline."""


async def _call(
    handler: RegisteredHandler, ctx: SubtaskContext, thread_limiter: anyio.CapacityLimiter
) -> Any:
    scope = ctx.cancel_scope
    if ctx.deadline == math.inf:
        # No caller's deadline (the producer's timer cancels its scopes at theirs): the
        # scope's, or the queue's timeout from now, set on the scope.
        if scope.deadline == math.inf:
            scope.deadline = anyio.current_time() + ctx.queue_settings.timeout
        ctx.deadline = scope.deadline
    with scope:
        return await _invoke(handler, ctx, thread_limiter)
    # The scope caught its own cancellation: its deadline passed, or it was cancelled from
    # outside (the daemon then knows why, and its reason wins over a deadline that also passed).
    if anyio.current_time() < scope.deadline:
        raise _Stopped
    raise _timeout(ctx)


async def _invoke(
    handler: RegisteredHandler, ctx: SubtaskContext, thread_limiter: anyio.CapacityLimiter
) -> Any:
    if handler.is_async:
        return await handler.fn(ctx)
    # A thread cannot be stopped: past the timeout it is abandoned and runs to its end in the
    # background, while its slot is given back.
    return await anyio.to_thread.run_sync(
        handler.fn, ctx, limiter=thread_limiter, abandon_on_cancel=True
    )


def _timeout(ctx: SubtaskContext) -> HandlerTimeout:
    return HandlerTimeout(f"{ctx.kind} handler ran longer than the queue's timeout of "
                          f"{ctx.queue_settings.timeout:g} s")


def timed_out(ctx: SubtaskContext, duration: float) -> RunResult:
    """The outcome of an attempt past its deadline: cut short while it ran, or never started
    because its deadline passed first. Retried with backoff, or failed on the last attempt,
    as :func:`run_subtask` does with a timeout."""
    return _failure(ctx, _timeout(ctx), duration)


def _failure(ctx: SubtaskContext, exc: Exception, duration: float) -> RunResult:
    text = error_text(exc)
    permanent = isinstance(exc, PermanentError)
    last = ctx.attempt >= ctx.max_attempts
    stack = storable("".join(traceback.format_exception(exc))[-MAX_STACK_TRACE:])
    error = ErrorOccurrence(
        error_type=type(exc).__name__, message=storable(str(exc)), stack_trace=stack,
        queue=ctx.queue, kind=ctx.kind,
    )
    if permanent or last:
        why = "permanent error" if permanent else f"attempt {ctx.attempt} of {ctx.max_attempts}"
        ctx.logger.warning("failed (%s): %s", why, text)
        return RunResult(Outcome(ctx.id, ctx.attempt, "failed", error=text), error, duration)
    settings = ctx.queue_settings
    delay = backoff_delay(ctx.attempt, settings.retry_base, settings.retry_max)
    ctx.logger.info(
        "attempt %d of %d failed, retry in %.1fs: %s", ctx.attempt, ctx.max_attempts, delay, text
    )
    outcome = Outcome(ctx.id, ctx.attempt, "retry", error=text, delay=delay)
    return RunResult(outcome, error, duration)
