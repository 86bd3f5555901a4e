"""Run every claimable subtask of a queue in this process, as a daemon would.

For integration tests of a service that submits work: after the code under test submitted,
``await drain(store, "standard")`` claims with the real :class:`~taskd.queue.store.Store`,
runs each subtask with the daemon's :class:`~taskd.executor.runner.Runner` and records every
outcome with the real :class:`~taskd.executor.completer.Completer`, batch after batch, until
nothing is left to claim. A retry whose backoff has not passed yet is not claimable: it stays
pending (the report counts it under ``retry``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import anyio

from taskd.executor.completer import Completer, CompleterConfig
from taskd.executor.runner import Runner
from taskd.handlers.clients import http_clients
from taskd.handlers.registry import HandlerRegistry
from taskd.metrics import Metrics
from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from taskd.types import Outcome

EXECUTOR_ID = "taskd-testing-drain"


@dataclass
class DrainReport:
    """What a drain did: how many attempts it ran, and their outcomes by verdict
    (``completed``, ``failed``, ``retry``, ``snooze``, ``cancelled``)."""

    claimed: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    outcomes: list[Outcome] = field(default_factory=list)


class _Sink:
    def __init__(self, completer: Completer, report: DrainReport) -> None:
        self.completer = completer
        self.report = report

    def add(self, queue: str, outcome: Outcome) -> None:
        self.report.verdicts[outcome.verdict] += 1
        self.report.outcomes.append(outcome)
        self.completer.add(queue, outcome)


async def drain(
    store: Store,
    queue: str = "standard",
    *,
    settings: Settings | None = None,
    within: float = 60.0,
    max_attempts: int = 10_000,
) -> DrainReport:
    """Claim, run and record subtasks of ``queue`` until none is claimable; return a report.

    ``settings`` (default: from the environment, as the daemon's) give the handlers and the
    queue's options (its ``initial`` concurrency is the batch size, its ``timeout`` each
    attempt's). Raises :class:`TimeoutError` after ``within`` seconds and
    :class:`RuntimeError` after ``max_attempts`` attempts (a handler that snoozes for 0 s
    forever), so a test never hangs.
    """
    settings = settings if settings is not None else Settings()
    queue_settings = settings.queues.get(queue) or QueueSettings()
    registry = HandlerRegistry.load(settings)
    metrics = Metrics()
    completer = Completer(store, EXECUTOR_ID, metrics, CompleterConfig())
    report = DrainReport()
    with anyio.fail_after(within):
        async with http_clients(shards=1) as http:
            runner = Runner(registry, {queue: queue_settings}, store, _Sink(completer, report),
                            metrics, http, executor_id=EXECUTOR_ID,
                            thread_limiter=anyio.CapacityLimiter(queue_settings.initial))
            while True:
                claimed = await store.claim_subtasks(
                    queue, EXECUTOR_ID, queue_settings.initial, settings.lease_timeout)
                if not claimed:
                    return report
                report.claimed += len(claimed)
                if report.claimed > max_attempts:
                    raise RuntimeError(f"drain({queue!r}) ran more than {max_attempts} "
                                       "attempts; is a handler snoozing forever?")
                async with anyio.create_task_group() as batch:
                    for subtask in claimed:
                        batch.start_soon(runner.run_one, subtask)
                await completer.flush()
