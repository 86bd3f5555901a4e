"""The producer, one per queue: wait for free slots and a wake-up, claim a batch, run it.

Claims happen only while the queue has free capacity (which the scaler may move) and the claim
gate is open. Shutdown, a cancelled task, a lost lease or the queue's timeout can stop exactly
one handler: stopping its entry cancels the scope the handler runs in. A worker runs subtasks
back to back in one scope until one is cut short (then the next ones get a new scope): a
scope entered and left per subtask cost ~3 us of the daemon's ~16 us per no-op. The subtasks
of one claim share its deadline (the claim's time plus the queue's timeout), and one timer per
claim, not one per subtask, cancels those still running when it passes: a timer per scope cost
~3 us a subtask (scheduled on entry, cancelled on exit, sifted through the event loop's heap).

Subtasks run on worker tasks that live on between subtasks: an anyio task costs ~14 us to start
and finish, a third of what a no-op subtask costs the daemon. Claimed subtasks wait in a ready
queue; whoever takes one while more wait makes sure one more worker is on its way (waking a
parked one, or starting one), so a handler that blocks never holds up the next subtask, and
handlers that finish at once run back to back on one worker. A worker parked for
``idle_worker_seconds`` ends.

A claim resumes after the last subtask the one before took, where it can (see ``_claim``):
the claim index's head holds an entry for every row claimed since the last VACUUM.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING

import anyio

from taskd.errors import DatabaseError
from taskd.executor.capacity import Capacity
from taskd.executor.changed import Changed
from taskd.executor.completer import Completer
from taskd.executor.gate import ClaimGate
from taskd.executor.notifier import ListenLender
from taskd.executor.runner import RunResult, run_subtask, timed_out
from taskd.executor.running import RunningSet, RunningSubtask
from taskd.executor.wakeup import Wakeup
from taskd.handlers.base import SubtaskContext
from taskd.handlers.clients import HttpClients
from taskd.metrics import Metrics
from taskd.queue.store import Store
from taskd.settings import QueueSettings
from taskd.types import ClaimedSubtask, Outcome

if TYPE_CHECKING:
    from taskd.handlers.registry import HandlerRegistry

log = logging.getLogger(__name__)


class Producer:
    def __init__(
        self,
        queue: str,
        settings: QueueSettings,
        store: Store,
        executor_id: str,
        capacity: Capacity,
        wakeup: Wakeup,
        gate: ClaimGate,
        completer: Completer,
        running: RunningSet,
        registry: HandlerRegistry,
        http: HttpClients,
        metrics: Metrics,
        *,
        lease_timeout: float,
        poll_interval: float,
        thread_limiter: anyio.CapacityLimiter,
        batch_max: int = 1000,
        batch_whole: int = 250,
        refill_delay: float = 0.005,
        idle_worker_seconds: float = 30.0,
        full_claim_interval: float = 1.0,
        lender: ListenLender | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.store = store
        self.executor_id = executor_id
        self.capacity = capacity
        self.wakeup = wakeup
        self.gate = gate
        self.completer = completer
        self.running = running
        self.registry = registry
        self.http = http
        self.metrics = metrics
        self.lease_timeout = lease_timeout
        self.poll_interval = poll_interval
        self.thread_limiter = thread_limiter
        self.batch_max = batch_max
        self.batch_whole = batch_whole
        self.refill_delay = refill_delay
        self.idle_worker_seconds = idle_worker_seconds
        self.full_claim_interval = full_claim_interval
        self.lender = lender
        # Where the next claim resumes: the last subtask claimed (see _claim).
        self._floor: ClaimedSubtask | None = None
        self._full_claim_at = -math.inf
        self._wakeups_seen = 0
        self.released: list[tuple[int, int]] = []  # (id, attempt) stopped by shutdown
        self._claiming = anyio.CancelScope()
        self.log = logging.LoggerAdapter(log, {"queue": queue})
        self._ready: deque[RunningSubtask] = deque()  # claimed, not yet taken by a worker
        self._parked: deque[anyio.Event] = deque()  # one per idle worker
        self._coming = 0  # workers woken or started that have not looked at _ready yet
        self._closing = False
        self._workers = 0
        # Running or ready entries by their claim's deadline, in claim order (the timeout is
        # the queue's, so deadlines only grow); a claim's set empties as its subtasks end.
        self._expiring: dict[float, set[RunningSubtask]] = {}
        self._expiring_added = Changed()  # wakes the timer when it waits for a claim
        self._worker_name = f"taskd producer {queue} worker"
        # Metric children and loggers looked up once, not per subtask.
        self._claimed = metrics.subtasks_claimed.labels(queue)
        self._wait = metrics.subtask_wait.labels(queue)
        self._duration = metrics.subtask_duration.labels(queue)
        self._leases_lost = metrics.leases_lost.labels(queue)
        self._loggers: dict[str, logging.Logger] = {}
        self._scope_class: type[anyio.CancelScope] | None = None

    def stop_claiming(self) -> None:
        """Claim nothing more; running handlers go on. Idempotent."""
        self._claiming.cancel()

    @property
    def workers(self) -> int:
        """Worker tasks alive, running or parked."""
        return self._workers

    @property
    def timed_claims(self) -> int:
        """Claims with subtasks not yet ended, whose deadline the timer waits for."""
        return len(self._expiring)

    @property
    def parked_workers(self) -> int:
        """Worker tasks waiting for a subtask."""
        return len(self._parked)

    async def run(self) -> None:
        async with anyio.create_task_group() as timer:
            timer.start_soon(self._expire_loop, name=f"taskd producer {self.queue} timeouts")
            async with anyio.create_task_group() as runs:
                try:
                    with self._claiming:
                        await self._claim_loop(runs)
                finally:
                    # Parked workers end; busy ones end once the ready queue is empty.
                    self._closing = True
                    while self._parked:
                        self._coming += 1
                        self._parked.popleft().set()
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

    async def _claim_loop(self, runs: anyio.abc.TaskGroup) -> None:
        backoff = 0.1
        while True:
            await self.capacity.wait_for_free()
            batch = self._batch_size()
            if self.capacity.free() < min(batch, self.capacity.limit // 4):
                # A few ms for more slots to free up: one claim for many, not one per slot.
                with anyio.move_on_after(self.refill_delay):
                    await self.capacity.wait_for_free(batch)
            await self.gate.wait_open()
            await self.completer.wait_for_room()  # claims must not run ahead of the writes
            want = min(self.capacity.free(), batch)
            try:
                # Shielded: a claim cancelled mid-flight could commit and lose its rows.
                with anyio.CancelScope(shield=True):
                    claimed = await self._claim(want)
            except DatabaseError as exc:
                self.log.warning("claim failed, retrying in %.1fs: %s", backoff, exc)
                await self.wakeup.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if claimed:
                self.capacity.take(len(claimed))
                self._claimed.inc(len(claimed))
                # The queue's timeout runs from the claim, as the lease does: one clock
                # reading per batch, not one per subtask.
                deadline = anyio.current_time() + self.settings.timeout
                entries = [self.running.add(subtask, deadline) for subtask in claimed]
                self._expiring.setdefault(deadline, set()).update(entries)
                self._expiring_added.notify()
                self._ready.extend(entries)
                self._call_worker(runs)
            if len(claimed) < want:
                await self.wakeup.wait(self.poll_interval)

    async def _claim(self, want: int) -> list[ClaimedSubtask]:
        """Claim up to ``want`` subtasks, in claim order.

        A claim resumes after the last subtask of the one before (``Store.claim_subtasks``'s
        ``after``), which spares it the claim index's head: an entry for every row claimed
        since the last VACUUM, ~1 ms a claim per 100,000 of them. Rows can become ready
        before that point without a claim looking there: a task of higher priority, a
        rescued or retried subtask, a row another transaction held locked. So a claim starts
        from the head after every wake-up (each submit sends one), once ``full_claim_interval``
        has passed since the last that did, and whenever the rows after the point run out:
        such a row waits at most that interval more, and only while a backlog keeps every
        claim full.
        """
        after = self._floor
        if after is not None and (
            self.wakeup.sets != self._wakeups_seen
            or anyio.current_time() - self._full_claim_at >= self.full_claim_interval
        ):
            after = None
        if after is None:
            self._starting_from_head()
        claimed = await self._claim_batch(want, after)
        if after is not None and len(claimed) < want:
            self._floor = None  # should this claim fail, the next starts from the head
            self._starting_from_head()
            try:
                earlier = await self._claim_batch(want - len(claimed), None)
            except DatabaseError as exc:
                self.log.warning("claim failed: %s", exc)
                return claimed  # committed: these run
            self._floor = earlier[-1] if earlier else (claimed[-1] if claimed else None)
            return earlier + claimed
        self._floor = claimed[-1] if claimed else None
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
            return await self.store.claim_subtasks(
                self.queue, self.executor_id, want, self.lease_timeout,
                cluster_max=self.settings.cluster_max, after=after, conn=conn,
            )
        finally:
            if lender is not None and conn is not None:
                lender.give_back()

    def _batch_size(self) -> int:
        """The most one claim takes: the limit, up to ``batch_whole``; half the limit when
        that is more; never more than ``batch_max``.

        Measured with noops: claims of the whole limit are best for small limits (at 10 and
        50, halving cost 35% and 22%), but at 500 and 1,000 one daemon's handlers then sat
        idle while each claim ran (31,000-33,500/s against 38,000-40,000/s with half).
        Half a large limit lets one claim's subtasks run while the next is claimed. Up to
        1,000 a statement: at a limit of 2,000, 2 daemons drained 46,219 / 53,062 / 45,954
        noops/s claiming 1,000 against 33,951 / 46,542 / 44,809 claiming 500 (PostgreSQL's
        fixed cost per statement spread over twice the rows).
        """
        limit = self.capacity.limit
        return min(self.batch_max, limit, max(self.batch_whole, limit // 2))

    def _call_worker(self, runs: anyio.abc.TaskGroup) -> None:
        """Make sure a worker is on its way to the head of the ready queue."""
        if self._coming:
            return
        self._coming += 1
        if self._parked:
            self._parked.popleft().set()
        else:
            self._workers += 1
            runs.start_soon(self._worker, runs, name=self._worker_name)

    async def _worker(self, runs: anyio.abc.TaskGroup) -> None:
        try:
            while True:
                self._coming -= 1
                while self._ready:
                    await self._run_ready(runs)
                if self._closing:
                    return
                parked = anyio.Event()
                self._parked.append(parked)
                with anyio.move_on_after(self.idle_worker_seconds):
                    await parked.wait()
                if not parked.is_set():  # idle for long enough: end
                    self._parked.remove(parked)
                    return
        finally:
            self._workers -= 1

    async def _run_ready(self, runs: anyio.abc.TaskGroup) -> None:
        """Run subtasks from the ready queue, back to back in one cancel scope, until the
        queue is empty or the scope was used: cancelled (a handler stopped or past its
        deadline) or given a deadline by a handler. The next ones get a new scope.

        Stopping a subtask cancels the scope only while its handler runs in it. The
        cancellation ends this scope with the handler; the entry whose handler was running
        is then stopped or timed out here.
        """
        scope_class = self._scope_class
        if scope_class is None:
            # The backend's own class: anyio.CancelScope() looks the backend up on each call.
            scope_class = self._scope_class = type(anyio.CancelScope())
        running: tuple[RunningSubtask, SubtaskContext, float] | None = None
        with scope_class() as scope:
            while self._ready and not scope.cancel_called and scope.deadline == math.inf:
                entry = self._ready.popleft()
                if self._ready:
                    self._call_worker(runs)  # the next one must not wait for this one
                ctx = self._context(entry, scope)
                running = (entry, ctx, time.monotonic())
                await self._run(entry, ctx)
                running = None
        if running is not None:  # this scope's cancellation cut the handler short
            entry, ctx, started = running
            self._cut_short(entry, ctx, time.monotonic() - started)

    def _context(self, entry: RunningSubtask, scope: anyio.CancelScope) -> SubtaskContext:
        subtask = entry.subtask
        return SubtaskContext(
            subtask=subtask,
            queue_settings=self.settings,
            logger=logging.LoggerAdapter(
                self._logger(subtask.kind),
                {"subtask_id": subtask.id, "task_id": subtask.task_id, "queue": self.queue,
                 "attempt": subtask.attempt},
            ),
            http=self.http.client_for(subtask.id),
            session=self.http.session,
            cancel_scope=scope,
            _checkpoint=partial(self.store.checkpoint, self.executor_id, subtask.id,
                                subtask.attempt),
            state=subtask.state,
            deadline=entry.deadline,
        )

    async def _run(self, entry: RunningSubtask, ctx: SubtaskContext) -> None:
        subtask = entry.subtask
        self._wait.observe(max(0.0, subtask.wait))
        try:
            if entry.stop_reason is not None or entry.expired:
                self._cut_short(entry, ctx, 0.0)  # stopped, or past its deadline, while ready
                return
            entry.scope = ctx.cancel_scope
            try:
                result = await run_subtask(self.registry, ctx, thread_limiter=self.thread_limiter,
                                           scope_entered=True)
            finally:
                entry.scope = None
            self._record(entry, result)
        finally:
            self.running.remove(subtask.id)
            self.capacity.release()
            expiring = self._expiring.get(entry.deadline)
            if expiring is not None:
                expiring.discard(entry)
                if not expiring:
                    del self._expiring[entry.deadline]

    def _record(self, entry: RunningSubtask, result: RunResult | None) -> None:
        if result is None:
            self._stopped(entry)
        elif result.outcome is None:
            self._leases_lost.inc()
        else:
            self._duration.observe(result.duration)
            self.completer.add(self.queue, result.outcome, result.error)

    def _cut_short(self, entry: RunningSubtask, ctx: SubtaskContext, duration: float) -> None:
        """The entry's handler was cancelled, or never started: a stop's reason wins over a
        deadline that also passed; a handler that cancelled its own scope is stopped."""
        if entry.stop_reason is None and (
            entry.expired or ctx.cancel_scope.deadline <= anyio.current_time()
        ):
            self._record(entry, timed_out(ctx, duration))
        else:
            self._stopped(entry)

    def _stopped(self, entry: RunningSubtask) -> None:
        subtask = entry.subtask
        if entry.stop_reason == "shutdown":
            self.released.append((subtask.id, subtask.attempt))
        elif entry.stop_reason == "cancelled":
            self.completer.add(
                self.queue,
                Outcome(subtask.id, subtask.attempt, "cancelled", error="cancelled on request"),
            )
        elif entry.stop_reason == "lease_lost":
            self._leases_lost.inc()

    def _logger(self, kind: str) -> logging.Logger:
        logger = self._loggers.get(kind)
        if logger is None:
            logger = self._loggers[kind] = logging.getLogger(f"taskd.handler.{kind}")
        return logger
