"""The completer: writes outcomes in batches, fenced, and aggregates errors.

Handlers hand their outcome over with :meth:`Completer.add` and move on; the completer flushes
when a batch is full or a few milliseconds after the first outcome arrived. A database outage
delays the write (retried with backoff), never loses it; an outcome whose lease was lost in the
meantime is dropped by the fence and counted.

The backlog of outcomes not yet written is bounded: producers wait in :meth:`wait_for_room`
before each claim. A handler's slot is free as soon as its outcome is handed over, so without
the bound claims ran ahead of the writes (docs/benchmarks.md), each waiting outcome a subtask
whose lease no heartbeat extends and which a crash would run again.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import anyio

from taskd.errors import ConfigError, DatabaseError
from taskd.executor.condition import Condition
from taskd.executor.tracing import Tracing
from taskd.metrics import Metrics
from taskd.queue.store import Store
from taskd.retries import retry_after_failure
from taskd.types import Outcome

log = logging.getLogger(__name__)

FINISHED_LABEL = {"completed": "completed", "failed": "failed", "retry": "retried",
                  "snooze": "snoozed", "cancelled": "cancelled"}


@dataclass(frozen=True, slots=True)
class CompleterConfig:
    """``batch_size``: outcomes per statement. ``flush_delay``: how long the first outcome
    waits for a batch to gather. ``max_backoff``: the longest wait between tries through a
    database outage. ``max_backlog``: outcomes waiting to be written before producers stop
    claiming (default four batches: one being written, the next gathering, room to spare).
    Raises :class:`ConfigError` for a value it cannot work with."""

    batch_size: int = 1000
    flush_delay: float = 0.002
    max_backoff: float = 5.0
    max_backlog: int = 0  # 0: 4 * batch_size

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("completer: batch_size must be >= 1")
        if self.flush_delay < 0 or self.max_backoff <= 0:
            raise ConfigError("completer: flush_delay must be >= 0 and max_backoff > 0 seconds")
        if self.max_backlog < 0:
            raise ConfigError("completer: max_backlog must be >= 0")

    @property
    def backlog_limit(self) -> int:
        return self.max_backlog or 4 * self.batch_size


class Completer:
    """Batches outcomes and writes them with one statement per batch."""

    def __init__(
        self, store: Store, executor_id: str, metrics: Metrics,
        config: CompleterConfig | None = None, *, tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        self.tracing = tracing
        self.executor_id = executor_id
        self.metrics = metrics
        self.config = config or CompleterConfig()
        self._buffer: list[tuple[str, Outcome]] = []
        self._arrived = anyio.Event()
        self._room = Condition()  # for producers waiting in wait_for_room()
        # One flush at a time: a flush called while another writes waits for that write, so
        # that "flushed" means written (shutdown flushes while run() may be mid-write).
        self._flushing = anyio.Lock()

    def add(self, queue: str, outcome: Outcome) -> None:
        """Queue an outcome for writing; never blocks."""
        self._buffer.append((queue, outcome))
        self._arrived.set()

    @property
    def backlog(self) -> int:
        """Outcomes handed over and not yet taken for a write."""
        return len(self._buffer)

    @property
    def has_room(self) -> bool:
        """Whether the backlog is below the limit (a claim may go ahead)."""
        return len(self._buffer) < self.config.backlog_limit

    async def wait_for_room(self) -> None:
        """Return once the backlog is below the limit; producers call it before a claim
        (when :attr:`has_room` is False: the check alone costs no coroutine)."""
        while not self.has_room:
            await self._room.wait()

    async def run(self) -> None:
        while True:
            await self._arrived.wait()
            if len(self._buffer) < self.config.batch_size:
                await anyio.sleep(self.config.flush_delay)  # let a batch gather
            await self.flush()

    async def flush(self) -> None:
        """Write everything buffered, and wait for a write in flight; retries through database
        outages until it succeeds."""
        size = self.config.batch_size
        async with self._flushing:
            while self._buffer:
                if len(self._buffer) <= size:
                    batch, self._buffer = self._buffer, []
                else:  # in place: a copy of the rest for every batch was quadratic
                    batch = self._buffer[:size]
                    del self._buffer[:size]
                if len(self._buffer) < self.config.backlog_limit:
                    self._room.notify()
                await self._write(batch)
            self._arrived = anyio.Event()

    async def _write(self, batch: list[tuple[str, Outcome]]) -> None:
        outcomes = [outcome for _, outcome in batch]

        def failed(exc: BaseException) -> None:
            log.warning("writing %d outcomes failed, retrying: %s", len(batch), exc)

        async def record() -> set[int]:
            return await self.store.record_outcomes(self.executor_id, outcomes)

        async def written() -> set[int]:
            # The outcomes wait here until the database is back.
            return await retry_after_failure(
                record,
                lambda exc: isinstance(exc, DatabaseError),
                tries=None, wait_base=0.05, wait_max=self.config.max_backoff,
                on_failure=failed,
            )

        if self.tracing is None:
            applied = await written()
        else:
            with self.tracing.record_span(len(batch)):
                applied = await written()
        finished: Counter[tuple[str, str]] = Counter()
        for queue, outcome in batch:
            if outcome.subtask_id in applied:
                finished[queue, outcome.verdict] += 1
                if outcome.failure is not None:
                    self.metrics.errors.labels(queue, outcome.failure.error_type).inc()
            else:
                self.metrics.leases_lost.labels(queue).inc()
                log.warning(
                    "outcome dropped: lease lost",
                    extra={"subtask_id": outcome.subtask_id, "attempt": outcome.attempt,
                           "queue": queue},
                )
        # One increment per queue and outcome in the batch, not one per subtask.
        for (queue, verdict), n in finished.items():
            self.metrics.subtasks_finished.labels(queue, FINISHED_LABEL[verdict]).inc(n)
