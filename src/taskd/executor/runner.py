"""The runner: runs claimed subtasks through their handlers and builds every outcome.

A claimed subtask goes producer → runner → completer (River's job executor reports straight
to its completer). The runner decides what one attempt came to — completed, failed, retry with
backoff, snooze, timed out, cancelled — here and nowhere else, and hands the :class:`Outcome`
to the completer. A lost lease produces no outcome (it is counted); a stop for shutdown leaves
the subtask in :attr:`Runner.released` for the daemon to give back.

A worker runs subtasks back to back in one cancel scope (:meth:`Runner.run_ready`) until one is
cut short; the next ones then get a new scope. Stopping or expiring a
:class:`~taskd.executor.running.RunningSubtask` cancels the scope only while its handler runs
in it; the runner then tells a stop from a timeout by the entry's reason and deadline.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import anyio
import anyio.to_thread

from taskd.errors import HandlerError, HandlerTimeout, LeaseLost, PermanentError, RetryLater
from taskd.executor.running import RunningSet, RunningSubtask
from taskd.executor.tracing import Tracing
from taskd.handlers.base import CheckpointStore, RegisteredHandler, SubtaskContext
from taskd.handlers.clients import HttpClients
from taskd.handlers.registry import HandlerRegistry
from taskd.metrics import Metrics
from taskd.settings import QueueSettings
from taskd.types import ClaimedSubtask, ErrorOccurrence, Outcome, UnreadableJSON

# Stack traces go to error_logs; the top frames say where, the rest is noise in a table.
MAX_STACK_TRACE = 8000
# One encoder for every result: json.dumps with options builds a new one on each call.
_RESULT_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False)
# Up to this fraction of the backoff is added at random, so that retries of a batch that
# failed together do not come back together.
JITTER = 0.1


class OutcomeSink(Protocol):
    """Where the runner hands outcomes: the :class:`~taskd.executor.completer.Completer`."""

    def add(self, queue: str, outcome: Outcome) -> None: ...


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
        return "{}"  # what noop returns for the default payload, without the encoder
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


class _QueueMetrics(NamedTuple):
    """One queue's metric children, looked up once, not per subtask."""

    wait: Any
    duration: Any
    leases_lost: Any


class Runner:
    """Runs handlers for every queue of one executor and reports each outcome to ``sink``."""

    def __init__(
        self,
        registry: HandlerRegistry,
        queues: Mapping[str, QueueSettings],
        store: CheckpointStore,
        sink: OutcomeSink,
        metrics: Metrics,
        http: HttpClients,
        *,
        executor_id: str,
        thread_limiter: anyio.CapacityLimiter,
        tracing: Tracing | None = None,
    ) -> None:
        self.registry = registry
        self.tracing = tracing
        self.queues = queues
        self.store = store
        self.sink = sink
        self.http = http
        self.executor_id = executor_id
        self.thread_limiter = thread_limiter
        # (id, attempt) of subtasks stopped by shutdown: the daemon gives them back.
        self.released: list[tuple[int, int]] = []
        self._loggers: dict[str, logging.Logger] = {}
        self._metrics = {
            queue: _QueueMetrics(metrics.subtask_wait.labels(queue),
                                 metrics.subtask_duration.labels(queue),
                                 metrics.leases_lost.labels(queue))
            for queue in queues
        }
        self._scope_class: type[anyio.CancelScope] | None = None

    async def run_ready(
        self,
        ready: deque[RunningSubtask],
        *,
        more: Callable[[], None],
        done: Callable[[RunningSubtask], None],
    ) -> None:
        """Run subtasks from ``ready``, back to back in one cancel scope, until it is empty or
        the scope was used: cancelled (a handler stopped or past its deadline) or given a
        deadline by a handler.

        ``more()`` is called when a subtask is taken while others wait (so that another worker
        comes for them: a handler that blocks never holds up the next subtask); ``done(entry)``
        after each subtask ends, before its outcome is written.
        """
        scope_class = self._scope_class
        if scope_class is None:
            # The backend's own class: anyio.CancelScope() looks the backend up on each call.
            scope_class = self._scope_class = type(anyio.CancelScope())
        running: tuple[RunningSubtask, SubtaskContext, float] | None = None
        with scope_class() as scope:
            while ready and not scope.cancel_called and scope.deadline == math.inf:
                entry = ready.popleft()
                if ready:
                    more()
                ctx = self._context(entry, scope)
                running = (entry, ctx, time.monotonic())
                try:
                    await self._run(entry, ctx)
                finally:
                    done(entry)
                running = None
        if running is not None:  # this scope's cancellation cut the handler short
            entry, ctx, started = running
            self._cut_short(entry, ctx, time.monotonic() - started)

    async def run_one(
        self, subtask: ClaimedSubtask, deadline: float | None = None,
        *, running: RunningSet | None = None,
    ) -> None:
        """Run one claimed subtask as a worker does, its deadline (anyio's clock; default the
        queue's timeout from now) enforced as the producer's timer enforces a claim's.

        With ``running``, the subtask is in that set while it runs (its lease extended by the
        heartbeat, stopped at shutdown). For the quarantine, :mod:`taskd.testing` and tests:
        the same path as the daemon's workers, one subtask long.
        """
        if deadline is None:
            deadline = anyio.current_time() + self.queues[subtask.queue].timeout
        entry = (running.add(subtask, deadline) if running is not None
                 else RunningSubtask(subtask, deadline))

        def done(_: RunningSubtask) -> None:
            if running is not None:
                running.remove(subtask.id)

        async def expire() -> None:
            await anyio.sleep_until(deadline)
            entry.expire()

        async with anyio.create_task_group() as timer:
            timer.start_soon(expire)
            await self.run_ready(deque([entry]), more=lambda: None, done=done)
            timer.cancel_scope.cancel()

    def _context(self, entry: RunningSubtask, scope: anyio.CancelScope) -> SubtaskContext:
        subtask = entry.subtask
        return SubtaskContext(
            subtask, self.queues[subtask.queue], self._logger(subtask.kind),
            self.http.client_for(subtask.id), self.http.session, scope, self.store,
            self.executor_id, subtask.state, entry.deadline,
        )

    async def _run(self, entry: RunningSubtask, ctx: SubtaskContext) -> None:
        subtask = ctx.subtask
        self._metrics[subtask.queue].wait.observe(max(0.0, subtask.wait))
        if entry.stop_reason is not None or entry.expired:
            self._cut_short(entry, ctx, 0.0)  # stopped, or past its deadline, while ready
            return
        started = time.monotonic()
        entry.scope = ctx.cancel_scope
        tracing = self.tracing
        try:
            if tracing is None:
                outcome = await self._attempt(ctx)
            else:
                outcome = await tracing.run(ctx, self._attempt)
        finally:
            entry.scope = None
        self._report(ctx, outcome, time.monotonic() - started)

    async def _attempt(self, ctx: SubtaskContext) -> Outcome | None:
        """Run the handler once; what it came to (None: the lease was lost). A cancellation
        of the scope propagates: :meth:`run_ready` tells a stop from a timeout."""
        subtask = ctx.subtask
        handler = self.registry.get(subtask.kind)
        try:
            if isinstance(subtask.payload, UnreadableJSON) or isinstance(ctx.state,
                                                                         UnreadableJSON):
                _unreadable(ctx)
            if handler is None:
                raise PermanentError(
                    f"no handler for kind {ctx.kind!r}; registered kinds: "
                    + ", ".join(self.registry.kinds())
                )
            result = result_json(await self._invoke(handler, ctx))
        except LeaseLost:
            ctx.logger.warning("lease lost; the outcome of this attempt is dropped")
            return None
        except RetryLater as exc:
            ctx.logger.info("retry later in %gs: %s", exc.delay, exc)
            return Outcome(ctx.id, ctx.attempt, "snooze", error=error_text(exc), delay=exc.delay)
        except Exception as exc:
            return _failure(ctx, exc)
        return Outcome(subtask.id, subtask.attempt, "completed", result)

    async def _invoke(self, handler: RegisteredHandler, ctx: SubtaskContext) -> Any:
        if handler.is_async:
            return await handler.fn(ctx)
        # A thread cannot be stopped: past the timeout it is abandoned and runs to its end in
        # the background, while its slot is given back.
        return await anyio.to_thread.run_sync(
            handler.fn, ctx, limiter=self.thread_limiter, abandon_on_cancel=True
        )

    def _report(self, ctx: SubtaskContext, outcome: Outcome | None, duration: float) -> None:
        if outcome is None:
            self._metrics[ctx.queue].leases_lost.inc()
            return
        self._metrics[ctx.queue].duration.observe(duration)
        self.sink.add(ctx.queue, outcome)

    def _cut_short(self, entry: RunningSubtask, ctx: SubtaskContext, duration: float) -> None:
        """The entry's handler was cancelled, or never started: a stop's reason wins over a
        deadline that also passed. A handler that cancelled its own scope failed: its attempt
        is retried like after any error, rather than left processing until its lease expires."""
        if entry.stop_reason is None:
            if entry.expired or ctx.cancel_scope.deadline <= anyio.current_time():
                error: Exception = HandlerTimeout(
                    f"{ctx.kind} handler ran longer than the queue's timeout of "
                    f"{ctx.queue_settings.timeout:g} s")
            else:
                error = HandlerError(f"the {ctx.kind} handler cancelled its own cancel scope")
            self._report(ctx, _failure(ctx, error), duration)
        elif entry.stop_reason == "shutdown":
            self.released.append((ctx.id, ctx.attempt))
        elif entry.stop_reason == "cancelled":
            self.sink.add(ctx.queue, Outcome(ctx.id, ctx.attempt, "cancelled",
                                             error="cancelled on request"))
        elif entry.stop_reason == "lease_lost":
            self._metrics[ctx.queue].leases_lost.inc()

    def _logger(self, kind: str) -> logging.Logger:
        logger = self._loggers.get(kind)
        if logger is None:
            logger = self._loggers[kind] = logging.getLogger(f"taskd.handler.{kind}")
        return logger


def _unreadable(ctx: SubtaskContext) -> None:
    """Raises :class:`PermanentError` naming the subtask's payload or state that its claim
    could not read as JSON."""
    for what, value in (("payload", ctx.subtask.payload), ("state", ctx.state)):
        if isinstance(value, UnreadableJSON):
            raise PermanentError(f"the subtask's {what} cannot be read: {value.reason}")


def _failure(ctx: SubtaskContext, exc: Exception) -> Outcome:
    """A failed attempt: retried with backoff, or failed for good when the error is permanent
    or the attempts are used up; its error goes to error_logs with the outcome."""
    text = error_text(exc)
    stack = storable("".join(traceback.format_exception(exc))[-MAX_STACK_TRACE:])
    failure = ErrorOccurrence(
        error_type=type(exc).__name__, message=storable(str(exc)), stack_trace=stack,
        queue=ctx.queue, kind=ctx.kind,
    )
    if isinstance(exc, PermanentError) or ctx.attempt >= ctx.max_attempts:
        why = ("permanent error" if isinstance(exc, PermanentError)
               else f"attempt {ctx.attempt} of {ctx.max_attempts}")
        ctx.logger.warning("failed (%s): %s", why, text)
        return Outcome(ctx.id, ctx.attempt, "failed", error=text, failure=failure)
    settings = ctx.queue_settings
    delay = backoff_delay(ctx.attempt, settings.retry_base, settings.retry_max)
    ctx.logger.info(
        "attempt %d of %d failed, retry in %.1fs: %s", ctx.attempt, ctx.max_attempts, delay, text
    )
    return Outcome(ctx.id, ctx.attempt, "retry", error=text, delay=delay, failure=failure)
