"""The completer: writes outcomes in batches, fenced, and aggregates errors.

Handlers hand their outcome over with :meth:`Completer.add` and move on; the completer flushes
when a batch is full or a few milliseconds after the first outcome arrived. A database outage
delays the write (retried with backoff), never loses it; an outcome whose lease was lost in the
meantime is dropped by the fence and counted.

The backlog of outcomes not yet written is bounded: producers wait in :meth:`wait_for_room`
before each claim. A handler's slot is free as soon as its outcome is handed over, so without
the bound claims ran ahead of the writes (15,000 outcomes waiting in one daemon draining
noops), each waiting outcome a subtask whose lease no heartbeat extends and which a crash
would run again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import anyio
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from taskd.errors import DatabaseError
from taskd.executor.changed import Changed
from taskd.metrics import Metrics
from taskd.queue.store import Store
from taskd.types import ErrorOccurrence, Outcome

log = logging.getLogger(__name__)

T = TypeVar("T")

FINISHED_LABEL = {"completed": "completed", "failed": "failed", "retry": "retried",
                  "snooze": "snoozed", "cancelled": "cancelled"}


class _Pending(NamedTuple):  # one per subtask: a third of a frozen dataclass's cost
    queue: str
    outcome: Outcome
    error: ErrorOccurrence | None


class Completer:
    """Batches outcomes and writes them with one statement per batch."""

    def __init__(
        self,
        store: Store,
        executor_id: str,
        metrics: Metrics,
        *,
        batch_size: int = 1000,
        flush_delay: float = 0.002,
        max_backoff: float = 5.0,
        max_backlog: int | None = None,
    ) -> None:
        self.store = store
        self.executor_id = executor_id
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_delay = flush_delay
        self.max_backoff = max_backoff
        # Four batches: one being written, the next gathering, and room to spare.
        self.max_backlog = max_backlog if max_backlog is not None else 4 * batch_size
        self._buffer: list[_Pending] = []
        self._arrived = anyio.Event()
        self._room = Changed()  # for producers waiting in wait_for_room()
        # One flush at a time: a flush called while another writes waits for that write, so
        # that "flushed" means written (shutdown flushes while run() may be mid-write).
        self._flushing = anyio.Lock()

    def add(self, queue: str, outcome: Outcome, error: ErrorOccurrence | None = None) -> None:
        """Queue an outcome for writing; never blocks."""
        self._buffer.append(_Pending(queue, outcome, error))
        self._arrived.set()

    @property
    def backlog(self) -> int:
        """Outcomes handed over and not yet taken for a write."""
        return len(self._buffer)

    async def wait_for_room(self) -> None:
        """Return once the backlog is below ``max_backlog``; producers call it before a claim."""
        while len(self._buffer) >= self.max_backlog:
            await self._room.wait()

    async def run(self) -> None:
        while True:
            await self._arrived.wait()
            if len(self._buffer) < self.batch_size:
                await anyio.sleep(self.flush_delay)  # let a batch gather
            await self.flush()

    async def flush(self) -> None:
        """Write everything buffered, and wait for a write in flight; retries through database
        outages until it succeeds."""
        async with self._flushing:
            while self._buffer:
                if len(self._buffer) <= self.batch_size:
                    batch, self._buffer = self._buffer, []
                else:  # in place: a copy of the rest for every batch was quadratic
                    batch = self._buffer[: self.batch_size]
                    del self._buffer[: self.batch_size]
                if len(self._buffer) < self.max_backlog:
                    self._room.notify()
                await self._write(batch)
            self._arrived = anyio.Event()

    async def _until_written(
        self, n: int, write: Callable[..., Awaitable[T]], *args: Any
    ) -> T:
        """``await write(*args)``, tried again with backoff through a database outage until it
        succeeds: the outcomes wait here until the database is back. The first try runs
        bare; tenacity's retrying costs ~29 us to build and enter, twice a batch."""
        def failed(exc: BaseException | None) -> None:
            log.warning("writing %d outcomes failed, retrying: %s", n, exc)

        try:
            return await write(*args)
        except DatabaseError as exc:
            failed(exc)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DatabaseError),
            wait=wait_random_exponential(multiplier=0.05, max=self.max_backoff),
            before_sleep=lambda state: failed(
                state.outcome.exception() if state.outcome else None),
            sleep=anyio.sleep,
            reraise=True,
        )
        return await retrying(write, *args)

    async def _write(self, batch: list[_Pending]) -> None:
        applied = await self._until_written(
            len(batch), self.store.record_outcomes, self.executor_id, [p.outcome for p in batch]
        )
        errors = [p.error for p in batch if p.error is not None and p.outcome.subtask_id in applied]
        if errors:
            await self._until_written(len(errors), self.store.record_errors, errors)
        finished: Counter[tuple[str, str]] = Counter()
        for p in batch:
            if p.outcome.subtask_id in applied:
                finished[p.queue, p.outcome.outcome] += 1
                if p.error is not None:
                    self.metrics.errors.labels(p.queue, p.error.error_type).inc()
            else:
                self.metrics.leases_lost.labels(p.queue).inc()
                log.warning(
                    "outcome dropped: lease lost",
                    extra={"subtask_id": p.outcome.subtask_id, "attempt": p.outcome.attempt,
                           "queue": p.queue},
                )
        # One increment per queue and outcome in the batch, not one per subtask.
        for (queue, outcome), n in finished.items():
            label = FINISHED_LABEL.get(outcome, outcome)
            self.metrics.subtasks_finished.labels(queue, label).inc(n)
