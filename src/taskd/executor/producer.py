"""The producer, one per queue: wait for free slots and a wake-up, claim a batch, hand it on.

Claims happen only while the queue has free capacity (which the scaler may move) and the claim
gate is open. Claimed subtasks go to the producer's :class:`~taskd.executor.workers.WorkerPool`,
whose workers run them through the :class:`~taskd.executor.runner.Runner`, which reports each
outcome to the completer. The subtasks of one claim share its deadline (the claim's time plus
the queue's timeout), and one timer per claim, not one per subtask, expires those still running
when it passes: a timer per subtask cost a measurable share of a no-op (docs/benchmarks.md).

A claim resumes after the last subtask the one before took, where it can (see ``_claim``):
the claim index's head holds an entry for every row claimed since the last VACUUM.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from taskd.errors import ConfigError, DatabaseError
from taskd.executor.capacity import Capacity
from taskd.executor.claimer import Claimer
from taskd.executor.completer import Completer
from taskd.executor.condition import Condition
from taskd.executor.gate import ClaimGate
from taskd.executor.notifier import ListenLender
from taskd.executor.runner import Runner
from taskd.executor.running import RunningSet, RunningSubtask
from taskd.executor.tracing import Tracing
from taskd.executor.wakeup import Wakeup
from taskd.executor.workers import WorkerPool
from taskd.metrics import Metrics
from taskd.queue.controls import rate_limit_wait, register_queues
from taskd.queue.store import DEFAULT_POISON_AFTER, Store
from taskd.settings import QueueSettings, Settings
from taskd.testsignals import TestSignal
from taskd.types import ClaimedSubtask

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    """One queue's producer. Raises :class:`ConfigError` for a value it cannot work with.

    ``batch_max``: the most subtasks one claim statement takes. ``batch_whole``: limits up to
    this are claimed whole; larger ones by halves (see :meth:`Producer._batch_size`).
    ``refill_delay``: how long a claim waits for more slots to free up when few are free.
    ``idle_worker_seconds``: how long a worker with nothing to run lives on.
    ``full_claim_interval``: how often a claim starts from the claim index's head anyway.
    ``poison_after``: a subtask in one fewer crashes of its executor is a suspect, which the
    claim leaves to the quarantine. ``poll_interval``: after a short claim, how long the
    producer waits for a wake-up before it claims anyway; infinite in the daemon, whose
    :class:`~taskd.executor.poller.Poller` polls for every queue in one statement.
    """

    queue: str
    settings: QueueSettings
    lease_timeout: float
    poll_interval: float
    batch_max: int = 1000
    batch_whole: int = 250
    refill_delay: float = 0.005
    idle_worker_seconds: float = 30.0
    full_claim_interval: float = 1.0
    poison_after: int = DEFAULT_POISON_AFTER

    def __post_init__(self) -> None:
        for name in ("lease_timeout", "poll_interval", "idle_worker_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"producer {self.queue}: {name} must be > 0 seconds")
        if not 1 <= self.batch_whole <= self.batch_max:
            raise ConfigError(f"producer {self.queue}: batch_whole must be 1..batch_max")
        if self.refill_delay < 0 or self.full_claim_interval < 0:
            raise ConfigError(f"producer {self.queue}: refill_delay and full_claim_interval "
                              "must be >= 0 seconds")

    @classmethod
    def from_settings(cls, settings: Settings, queue: str) -> ProducerConfig:
        """The daemon's producer: it waits for the notifier or the poller, never polls."""
        return cls(queue, settings.queues[queue], lease_timeout=settings.lease_timeout,
                   poll_interval=math.inf, poison_after=settings.poison_after)


@dataclass
class ProducerSignals:
    """What tests may wait for: how many claims' deadlines the timer holds, at each change."""

    timed_claims: TestSignal[int] = field(default_factory=TestSignal)


class Producer:
    def __init__(
        self,
        config: ProducerConfig,
        store: Store,
        executor_id: str,
        capacity: Capacity,
        wakeup: Wakeup,
        gate: ClaimGate,
        completer: Completer,
        running: RunningSet,
        runner: Runner,
        metrics: Metrics,
        *,
        lender: ListenLender | None = None,
        tracing: Tracing | None = None,
        claimer: Claimer | None = None,
    ) -> None:
        """``claimer``: claims with other queues' in one statement (the daemon's); None:
        each claim its own statement. A queue with a rate limit or a ``cluster_max`` claims
        on its own either way."""
        self.config = config
        self.tracing = tracing
        self.queue = config.queue
        self.store = store
        self.executor_id = executor_id
        self.capacity = capacity
        self.wakeup = wakeup
        self.gate = gate
        self.completer = completer
        self.running = running
        self.lender = lender
        settings = config.settings
        self.claimer = (claimer if settings.rate is None and settings.cluster_max is None
                        else None)
        self.signals = ProducerSignals()
        self.pool = WorkerPool(runner, self._done, name=f"taskd producer {self.queue} worker",
                               idle_seconds=config.idle_worker_seconds)
        # Where the next claim resumes: the last subtask claimed (see _claim).
        self._resume_after: ClaimedSubtask | None = None
        self._full_claim_at = -math.inf
        self._wakeups_seen = 0
        self._claiming = anyio.CancelScope()
        self.log = logging.LoggerAdapter(log, {"queue": self.queue})
        # Running or ready entries by their claim's deadline, in claim order (the timeout is
        # the queue's, so deadlines only grow); a claim's set empties as its subtasks end.
        self._expiring: dict[float, set[RunningSubtask]] = {}
        self._expiring_added = Condition()  # wakes the timer when it waits for a claim
        self._claimed = metrics.subtasks_claimed.labels(self.queue)
        self._rate = config.settings.rate
        self._rate_limited = metrics.claims_rate_limited.labels(self.queue)
        self._rate_claim_again = False  # see _rate_limited_wait

    def stop_claiming(self) -> None:
        """Claim nothing more; running handlers go on. Idempotent."""
        self._claiming.cancel()

    async def run(self) -> None:
        async with anyio.create_task_group() as timer:
            timer.start_soon(self._expire_loop, name=f"taskd producer {self.queue} timeouts")
            async with anyio.create_task_group() as runs:
                try:
                    with self._claiming:
                        await self._claim_loop(runs)
                finally:
                    self.pool.close()
            # Leaving the task group waited for every handler this producer started.
            timer.cancel_scope.cancel()

    async def _expire_loop(self) -> None:
        """At each claim's deadline, expire its subtasks that have not ended."""
        while True:
            if not self._expiring:
                await self._expiring_added.wait()
                continue
            deadline = next(iter(self._expiring))
            await anyio.sleep_until(deadline)
            # None when they all ended while this slept: nothing to cut short.
            for entry in self._expiring.pop(deadline, ()):
                entry.expire()
            self.signals.timed_claims.signal(len(self._expiring))

    async def _claim_loop(self, runs: anyio.abc.TaskGroup) -> None:
        backoff = 0.1
        while True:
            if not self.capacity.free():
                await self.capacity.wait_for_free()
            batch = self._batch_size()
            if self.capacity.free() < min(batch, self.capacity.limit // 4):
                # A few ms for more slots to free up: one claim for many, not one per slot.
                with anyio.move_on_after(self.config.refill_delay):
                    await self.capacity.wait_for_free(batch)
            async with self.gate.passing():
                if not self.completer.has_room:  # claims must not run ahead of the writes
                    await self.completer.wait_for_room()
                want = min(self.capacity.free(), batch)
                try:
                    # Shielded: a claim cancelled mid-flight could commit and lose its rows.
                    with anyio.CancelScope(shield=True):
                        claimed = await self._claim(want)
                except DatabaseError as exc:
                    self.log.warning("claim failed, retrying in %.1fs: %s", backoff, exc)
                    claimed = None
                else:
                    if claimed:
                        self._hand_on(claimed, runs)
            if claimed is None:
                await self.wakeup.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if claimed:
                self._rate_claim_again = False
            if len(claimed) < want:
                if self._rate is not None and await self._rate_limited_wait():
                    continue
                await self.wakeup.wait(self.config.poll_interval)

    async def _rate_limited_wait(self) -> bool:
        """After a short claim of a rate-limited queue: when the window is used up, count it
        and sleep until it frees (its oldest claims a period old, computed by the database;
        wake-ups cannot make room in it). Returns True when the producer should claim again
        now (it slept, or looks once more), False to wait for a wake-up or the poll. A failed
        look is left to the poll."""
        assert self._rate is not None
        try:
            wait = await rate_limit_wait(self.store, self.queue, self._rate)
            if wait is None:  # no control row (a queue added after the start): make one
                await register_queues(self.store, {self.queue: self._rate})
                return True
        except DatabaseError as exc:
            self.log.warning("rate limit check failed: %s", exc)
            return False
        if wait <= 0:
            # Room now: the backlog ran out, or a claim grew a period old between the claim
            # and this look. One more claim at once tells them apart; after that, the poll.
            self._rate_claim_again = not self._rate_claim_again
            return self._rate_claim_again
        self._rate_claim_again = False
        self._rate_limited.inc()
        await anyio.sleep(min(wait, self._rate.period))
        return True

    def _hand_on(self, claimed: list[ClaimedSubtask], runs: anyio.abc.TaskGroup) -> None:
        """Count the claimed subtasks as running, time them, and give them to the workers."""
        self.capacity.take(len(claimed))
        self._claimed.inc(len(claimed))
        # The queue's timeout runs from the claim, as the lease does: one clock reading per
        # batch, not one per subtask.
        deadline = anyio.current_time() + self.config.settings.timeout
        entries = [self.running.add(subtask, deadline) for subtask in claimed]
        self._expiring.setdefault(deadline, set()).update(entries)
        self._expiring_added.notify()
        self.signals.timed_claims.signal(len(self._expiring))
        self.pool.submit(entries, runs)

    def _done(self, entry: RunningSubtask) -> None:
        """A subtask ended (its outcome, if any, is with the completer): free its slot."""
        self.running.remove(entry.subtask.id)
        self.capacity.release()
        expiring = self._expiring.get(entry.deadline)
        if expiring is not None:
            expiring.discard(entry)
            if not expiring:
                del self._expiring[entry.deadline]
                self.signals.timed_claims.signal(len(self._expiring))

    async def _claim(self, want: int) -> list[ClaimedSubtask]:
        """Claim up to ``want`` subtasks, in claim order.

        A claim resumes after the last subtask of the one before (``Store.claim_subtasks``'s
        ``after``), which spares it the claim index's head: an entry for every row claimed
        since the last VACUUM, whose cost grows with their number. Rows can become ready
        before that point without a claim looking there: a task of higher priority, a
        rescued or retried subtask, a row another transaction held locked. So a claim starts
        from the head after every wake-up (each submit sends one), once
        ``full_claim_interval`` has passed since the last that did, and whenever the rows
        after the point run out: such a row waits at most that interval more, and only while
        a backlog keeps every claim full.
        """
        after = self._resume_after
        if after is not None and (
            self.wakeup.sets != self._wakeups_seen
            or anyio.current_time() - self._full_claim_at >= self.config.full_claim_interval
        ):
            after = None
        if after is None:
            self._starting_from_head()
        claimed = await self._claim_batch(want, after)
        if after is not None and len(claimed) < want:
            self._resume_after = None  # should this claim fail, the next starts from the head
            self._starting_from_head()
            try:
                earlier = await self._claim_batch(want - len(claimed), None)
            except DatabaseError as exc:
                self.log.warning("claim failed: %s", exc)
                return claimed  # committed: these run
            self._resume_after = earlier[-1] if earlier else (claimed[-1] if claimed else None)
            return earlier + claimed
        self._resume_after = claimed[-1] if claimed else None
        return claimed

    def _starting_from_head(self) -> None:
        self._full_claim_at = anyio.current_time()
        self._wakeups_seen = self.wakeup.sets

    async def _claim_batch(
        self, want: int, after: ClaimedSubtask | None
    ) -> list[ClaimedSubtask]:
        # Just after a notification: on the listening connection, if it is on offer.
        lender = self.lender
        conn = lender.borrow() if lender is not None else None
        try:
            def claim() -> Awaitable[list[ClaimedSubtask]]:
                if conn is None and self.claimer is not None:
                    return self.claimer.claim(self.queue, want, after)
                return self.store.claim_subtasks(
                    self.queue, self.executor_id, want, self.config.lease_timeout,
                    cluster_max=self.config.settings.cluster_max, rate_limit=self._rate,
                    after=after, conn=conn,
                    poison_after=self.config.poison_after,
                )

            if self.tracing is None:
                return await claim()
            return await self.tracing.claim(self.queue, self.store, claim)
        finally:
            if lender is not None and conn is not None:
                lender.give_back()

    def _batch_size(self) -> int:
        """The most one claim takes: the limit, up to ``batch_whole``; half the limit when
        that is more; never more than ``batch_max``. The same through the claimer.

        Claims of the whole limit are best for small limits; for large ones, handlers sat
        idle while each claim ran, and half a large limit lets one claim's subtasks run while
        the next is claimed. Up to 1,000 a statement spreads PostgreSQL's fixed cost per
        statement over more rows (docs/benchmarks.md). Through the claimer a small limit was
        claimed by halves too: each half a producer's round (wake, claim, hand on), so 50
        queues of 40 slots drained at 0.73-0.75 x one queue of 2,000 (whole: 0.89-0.97), and
        a daemon with the two default queues, one busy, made two claims and two completions
        where one would do (docs/scaling.md, docs/steady-state.md).
        """
        limit = self.capacity.limit
        config = self.config
        return min(config.batch_max, limit, max(config.batch_whole, limit // 2))
