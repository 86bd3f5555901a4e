"""The rescuer: expired leases, dead executors, pending timeouts, retention.

Every executor runs it, and the fleet shares one pass per round: before a pass a daemon takes
the round (:func:`taskd.queue.maintenance.take_round`, one statement), which only one daemon
gets each ``interval`` by the database clock; the others sleep until the next round is due. N
daemons cost one pass an interval, not N. There is no leader and no lock held across a pass:
a daemon that took the round and then died or froze holds it until the next round is due,
when another takes it; each statement (:mod:`taskd.queue.maintenance`) takes its rows with
SKIP LOCKED, so a pass that overruns into the next one overlaps it harmlessly. Work is done
in LIMIT-sized batches; errors are logged and the next round carries on.

A lease that expired means its executor crashed or froze while running the subtask. That is
not evidence against the subtask: it goes back with its attempt given back and a crash
counted, and only a subtask present in ``poison_after`` crashes fails, as a suspected poison
pill, so that an innocent subtask never fails because a neighbour killed the process.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio

from taskd.errors import ConfigError, DatabaseError
from taskd.metrics import Metrics
from taskd.queue import maintenance
from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from taskd.testsignals import TestSignal
from taskd.types import RescueReport

log = logging.getLogger(__name__)

ROUND = "rescue"  # the maintenance_rounds row the fleet's rescuers share
# Added to the wait for the next round, as a fraction of the interval: the daemons of a fleet
# ask at scattered moments, and the first to ask after it is due takes it.
ROUND_JITTER = 0.2
# The shortest wait, as a fraction of the interval: a daemon that lost the race may have seen
# the round as due (its snapshot predates the winner's commit).
ROUND_MIN_WAIT = 0.05


@dataclass(frozen=True, slots=True)
class RescuerConfig:
    """``interval``: seconds between passes (jittered). ``executor_dead_after``: a heartbeat
    older marks its executor dead. ``retention``: finished rows older are deleted. Each pass
    works in batches of ``batch_size``, at most ``max_batches`` per kind of work, so a pass
    stays short. ``poison_after``: crashes of its executor while running it after which a
    subtask fails as a suspected poison pill. ``executor_id``: recorded as the round's taker.
    Raises :class:`ConfigError` for a value it cannot work with."""

    interval: float
    executor_dead_after: float
    retention: float
    poison_after: int = maintenance.DEFAULT_POISON_AFTER
    batch_size: int = 1000
    max_batches: int = 20
    executor_id: str = ""

    def __post_init__(self) -> None:
        if min(self.interval, self.executor_dead_after, self.retention) <= 0:
            raise ConfigError("rescuer: interval, executor_dead_after and retention must be "
                              "> 0 seconds")
        if min(self.batch_size, self.max_batches, self.poison_after) < 1:
            raise ConfigError("rescuer: batch_size, max_batches and poison_after must be >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> RescuerConfig:
        return cls(settings.rescue_interval, settings.executor_dead_after, settings.retention,
                   poison_after=settings.poison_after, executor_id=settings.executor_id)


@dataclass
class RescuerSignals:
    """What tests may wait for: a pass done (this daemon took the round)."""

    passed: TestSignal[RescueReport] = field(default_factory=TestSignal)


class Rescuer:
    def __init__(
        self,
        config: RescuerConfig,
        store: Store,
        queues: Mapping[str, QueueSettings],
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.store = store
        self.queues = queues
        self.metrics = metrics
        self.signals = RescuerSignals()

    async def run(self) -> None:
        interval = self.config.interval
        while True:
            due = anyio.current_time() + interval
            try:
                taken = await maintenance.take_round(self.store, ROUND, interval,
                                                     self.config.executor_id)
                # At most an interval: a round set far ahead (by hand, or by a daemon with a
                # longer interval) is still asked for.
                due = anyio.current_time() + min(max(taken.next_in, ROUND_MIN_WAIT * interval),
                                                 interval)
                if taken.taken:
                    self._log(await self.rescue_once())
            except DatabaseError as exc:
                log.warning("rescuer pass failed: %s", exc)
            await anyio.sleep_until(due + interval * random.uniform(0, ROUND_JITTER))

    def _log(self, report: RescueReport) -> None:
        self.signals.passed.signal(report)
        if report.returned or report.failed or report.dead_executors or report.timed_out:
            log.info(
                "rescued", extra={
                    "returned": report.returned, "failed": report.failed,
                    "dead_executors": list(report.dead_executors),
                    "timed_out": report.timed_out,
                },
            )

    async def rescue_once(self) -> RescueReport:
        """One pass: expired leases, dead executors, the pending timeout, retention.

        :meth:`run` calls it when this daemon took the round; two passes may still run at once
        (one that overran its round): each statement takes its rows with SKIP LOCKED, and no
        lock is held from one statement to the next.
        """
        by_queue, statuses = await self._rescue_leases()
        dead = await maintenance.mark_dead_executors(self.store, self.config.executor_dead_after)
        for executor_id in dead:
            log.warning("executor marked dead", extra={"dead_executor": executor_id})
        timed_out = await self._fail_unstarted_tasks()
        deleted_subtasks, deleted_tasks = await self._delete_finished()
        return RescueReport(
            returned=statuses["pending"], failed=statuses["failed"],
            dead_executors=tuple(dead), timed_out=timed_out,
            deleted_subtasks=deleted_subtasks, deleted_tasks=deleted_tasks,
            by_queue=dict(by_queue),
        )

    async def _rescue_leases(self) -> tuple[Counter[str], Counter[str]]:
        by_queue: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        for _ in range(self.config.max_batches):
            rows = await maintenance.rescue_expired_leases(
                self.store, poison_after=self.config.poison_after, limit=self.config.batch_size)
            for row in rows:
                by_queue[row["queue"]] += 1
                statuses[row["status"]] += 1
                if row["status"] == "failed":
                    log.warning("subtask failed as poison", extra={
                        "subtask_id": row["id"], "task_id": row["task_id"],
                        "queue": row["queue"], "crashes": self.config.poison_after})
            if len(rows) < self.config.batch_size:
                break
        for queue, n in by_queue.items():
            self.metrics.leases_rescued.labels(queue).inc(n)
        return by_queue, statuses

    async def _fail_unstarted_tasks(self) -> int:
        timed_out = 0
        timeouts = {queue: settings.pending_timeout for queue, settings in self.queues.items()
                    if settings.pending_timeout > 0}
        # One look for every queue first: idle queues then cost one statement, not one each.
        for queue in await maintenance.queues_with_old_unstarted_tasks(self.store, timeouts):
            for _ in range(self.config.max_batches):
                tasks = await maintenance.fail_unstarted_tasks(
                    self.store, queue, timeouts[queue], limit=self.config.batch_size)
                timed_out += len(tasks)
                if tasks:
                    log.warning("tasks timed out waiting: nobody started them", extra={
                        "queue": queue, "task_ids": tasks[:20], "count": len(tasks),
                        "pending_timeout_s": timeouts[queue]})
                if len(tasks) < self.config.batch_size:
                    break
        return timed_out

    async def _delete_finished(self) -> tuple[int, int]:
        deleted_subtasks = deleted_tasks = 0
        for _ in range(self.config.max_batches):
            subtasks, tasks = await maintenance.delete_finished(
                self.store, self.config.retention, limit=self.config.batch_size)
            deleted_subtasks += subtasks
            deleted_tasks += tasks
            if subtasks < self.config.batch_size and tasks < self.config.batch_size:
                break
        return deleted_subtasks, deleted_tasks
