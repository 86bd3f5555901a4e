"""Run one handler through the daemon's own runner, without a database.

:func:`run_handler` builds a claimed subtask, runs it with
:meth:`taskd.executor.runner.Runner.run_one` (the production path: a real
:class:`~taskd.handlers.base.SubtaskContext` with its cancel scope, deadline, HTTP clients and
checkpoint) and returns what the attempt came to as a :class:`HandlerOutcome`. Checkpoints go
to a :class:`CheckpointRecorder`, which keeps them and answers as the fenced database write
would while the lease is held::

    outcome = await run_handler("resize", {"image": "cat.png"})
    assert outcome.verdict == "completed" and outcome.result == {...}

    again = await run_handler(resize, {"image": "cat.png"}, attempt=2, state=outcome.state)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from taskd.errors import ConfigError
from taskd.executor.runner import OutcomeSink, Runner
from taskd.handlers.base import CheckpointStore
from taskd.handlers.clients import HttpClients, http_clients
from taskd.handlers.registry import HandlerRegistry
from taskd.metrics import Metrics
from taskd.settings import QueueSettings, Settings
from taskd.types import JSON, ClaimedSubtask, ErrorOccurrence, Outcome, Verdict

EXECUTOR_ID = "taskd-testing"


@dataclass
class CheckpointRecorder:
    """Stands where the daemon's store takes checkpoints: keeps every state a handler
    checkpoints, in order, and answers True (the lease is held). With ``lease_lost``, it
    answers False, as the fenced write does once the lease was lost: ``ctx.checkpoint`` then
    raises :class:`taskd.errors.LeaseLost`.
    """

    lease_lost: bool = False
    states: list[JSON] = field(default_factory=list)

    async def checkpoint(
        self, executor_id: str, subtask_id: int, attempt: int, state: JSON
    ) -> bool:
        if self.lease_lost:
            return False
        # A copy through JSON, as the database keeps it: later changes to the handler's own
        # object do not show here, and a state that is not JSON fails as it would in the daemon.
        self.states.append(json.loads(json.dumps(state, allow_nan=False)))
        return True


class OutcomeList(list[tuple[str, Outcome]]):
    """An outcome sink for the runner (where the daemon has its completer): keeps
    ``(queue, outcome)`` in the order they were reported."""

    def add(self, queue: str, outcome: Outcome) -> None:
        self.append((queue, outcome))

    def outcome_of(self, subtask_id: int, attempt: int) -> Outcome | None:
        """The outcome reported for this attempt of the subtask, if any.

        Raises :class:`AssertionError` when more than one was (the runner reports once).
        """
        mine = [o for _, o in self if (o.subtask_id, o.attempt) == (subtask_id, attempt)]
        assert len(mine) <= 1, f"more than one outcome for one attempt: {mine}"
        return mine[0] if mine else None


def build_runner(
    registry: HandlerRegistry,
    queues: Mapping[str, QueueSettings],
    checkpoints: CheckpointStore,
    sink: OutcomeSink,
    http: HttpClients,
    *,
    metrics: Metrics | None = None,
    executor_id: str = EXECUTOR_ID,
    thread_limiter: anyio.CapacityLimiter | None = None,
) -> Runner:
    """The daemon's :class:`~taskd.executor.runner.Runner` for ``queues``, reporting to
    ``sink``, checkpointing to ``checkpoints`` (a :class:`CheckpointRecorder`, or a real
    :class:`~taskd.queue.store.Store` for tests on a database)."""
    return Runner(registry, queues, checkpoints, sink,
                  metrics if metrics is not None else Metrics(), http,
                  executor_id=executor_id,
                  thread_limiter=thread_limiter or anyio.CapacityLimiter(4))


@dataclass(frozen=True)
class HandlerOutcome:
    """What one attempt came to.

    ``verdict``: ``completed``, ``failed`` (permanent error or attempts used up), ``retry``
    (after ``delay`` seconds of backoff), ``snooze`` (``RetryLater``: after ``delay``, the
    attempt not spent) or None when the lease was lost (no outcome is recorded then).
    ``result`` is the handler's result as stored (JSON values); ``error`` the text stored on
    the subtask (``"<ExceptionType>: <message>"``) and ``error_type`` the exception's type
    name; ``checkpoints`` every state checkpointed during the attempt and ``state`` what the
    next attempt would find in ``ctx.state``.
    """

    verdict: Verdict | None
    result: JSON | None
    error: str | None
    error_type: str | None
    delay: float
    checkpoints: list[JSON]
    state: JSON | None
    outcome: Outcome | None

    @property
    def completed(self) -> bool:
        return self.verdict == "completed"


async def run_handler(
    kind_or_callable: str | Callable[..., Any],
    payload: dict[str, JSON],
    *,
    attempt: int = 1,
    state: JSON | None = None,
    settings: Settings | None = None,
    queue: str = "standard",
    max_attempts: int | None = None,
    attempt_timeout: float | None = None,
    recorder: CheckpointRecorder | None = None,
    http: HttpClients | None = None,
) -> HandlerOutcome:
    """Run one attempt of a handler as the daemon does; return what it came to.

    ``kind_or_callable``: a kind, looked up as the daemon would (built-ins, entry points, the
    ``handlers`` setting of ``settings``), or the handler function itself. ``settings``
    (default: built from the environment as the daemon's are) gives the handlers and the
    options of ``queue`` (``timeout``, ``retry_base``, ``base_url``...); ``max_attempts``
    defaults to the queue's and ``attempt_timeout`` (seconds from now) to the queue's
    ``timeout``.
    ``http`` (default: clients opened for this call) gives ``ctx.http`` and ``ctx.session``.
    Raises :class:`taskd.errors.ConfigError` for a kind nothing is registered for.
    """
    settings = settings if settings is not None else Settings()
    queue_settings = settings.queues.get(queue) or QueueSettings()
    registry, kind = _registry(settings, kind_or_callable)
    recorder = recorder if recorder is not None else CheckpointRecorder()
    subtask = ClaimedSubtask(
        id=1, task_id=1, queue=queue, kind=kind, priority=0, payload=payload, state=state,
        attempt=attempt,
        max_attempts=max_attempts if max_attempts is not None else queue_settings.max_attempts,
        run_after=datetime.now(UTC), wait=0.0,
    )
    outcomes = OutcomeList()
    deadline = None if attempt_timeout is None else anyio.current_time() + attempt_timeout

    async def run(clients: HttpClients) -> None:
        runner = build_runner(registry, {queue: queue_settings}, recorder, outcomes, clients)
        await runner.run_one(subtask, deadline)

    if http is not None:
        await run(http)
    else:
        async with http_clients(shards=1) as clients:
            await run(clients)
    return _outcome(outcomes, recorder, state)


def _registry(
    settings: Settings, kind_or_callable: str | Callable[..., Any]
) -> tuple[HandlerRegistry, str]:
    registry = HandlerRegistry.load(settings)
    if isinstance(kind_or_callable, str):
        if registry.get(kind_or_callable) is None:
            raise ConfigError(f"no handler for kind {kind_or_callable!r}; registered kinds: "
                              + ", ".join(registry.kinds()))
        return registry, kind_or_callable
    fn = kind_or_callable
    kind = "test." + getattr(fn, "__name__", type(fn).__name__).strip("<>")
    registry.register(kind, fn, "settings", f"{fn.__module__}:{kind}")
    return registry, kind


def _outcome(
    outcomes: OutcomeList, recorder: CheckpointRecorder, state: JSON | None
) -> HandlerOutcome:
    outcome = outcomes[-1][1] if outcomes else None
    failure: ErrorOccurrence | None = outcome.failure if outcome is not None else None
    error_type = failure.error_type if failure is not None else None
    if outcome is not None and outcome.verdict == "snooze" and outcome.error is not None:
        error_type = outcome.error.partition(":")[0]  # RetryLater (or a subclass)
    return HandlerOutcome(
        verdict=outcome.verdict if outcome is not None else None,
        result=outcome.result if outcome is not None else None,
        error=outcome.error if outcome is not None else None,
        error_type=error_type,
        delay=outcome.delay if outcome is not None else 0.0,
        checkpoints=list(recorder.states),
        state=recorder.states[-1] if recorder.states else state,
        outcome=outcome,
    )
