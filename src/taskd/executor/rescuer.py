"""The rescuer: expired leases, dead executors, pending timeouts, retention.

Any executor may run it; a transaction-level advisory lock keeps it to one at a time across the
cluster. Work is done in LIMIT-sized batches; errors are logged and the next pass carries on.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping

import anyio

from taskd.errors import DatabaseError
from taskd.metrics import Metrics
from taskd.queue.store import Store
from taskd.settings import QueueSettings
from taskd.types import RescueReport

log = logging.getLogger(__name__)


class Rescuer:
    def __init__(
        self,
        store: Store,
        queues: Mapping[str, QueueSettings],
        metrics: Metrics,
        *,
        interval: float,
        executor_dead_after: float,
        retention: float,
        batch_size: int = 1000,
        max_batches: int = 20,
    ) -> None:
        self.store = store
        self.queues = queues
        self.metrics = metrics
        self.interval = interval
        self.executor_dead_after = executor_dead_after
        self.retention = retention
        self.batch_size = batch_size
        self.max_batches = max_batches  # per kind of work per pass, so a pass stays short

    async def run(self) -> None:
        while True:
            try:
                report = await self.rescue_once()
            except DatabaseError as exc:
                log.warning("rescuer pass failed: %s", exc)
            else:
                if report.returned or report.failed or report.dead_executors or report.timed_out:
                    log.info(
                        "rescued", extra={
                            "returned": report.returned, "failed": report.failed,
                            "dead_executors": list(report.dead_executors),
                            "timed_out": report.timed_out,
                        },
                    )
            # Jitter keeps executors started together from contending for the lock in step.
            await anyio.sleep(self.interval * random.uniform(0.8, 1.2))

    async def rescue_once(self) -> RescueReport:
        """One pass, if no other executor is running one."""
        async with self.store.rescuer_lock() as acquired:
            if not acquired:
                return RescueReport()
            by_queue: Counter[str] = Counter()
            statuses: Counter[str] = Counter()
            for _ in range(self.max_batches):
                rows = await self.store.rescue_expired_leases(limit=self.batch_size)
                for row in rows:
                    by_queue[row["queue"]] += 1
                    statuses[row["status"]] += 1
                if len(rows) < self.batch_size:
                    break
            for queue, n in by_queue.items():
                self.metrics.leases_rescued.labels(queue).inc(n)
            dead = await self.store.mark_dead_executors(self.executor_dead_after)
            for executor_id in dead:
                log.warning("executor marked dead", extra={"dead_executor": executor_id})
            timed_out = 0
            for queue, settings in self.queues.items():
                if settings.pending_timeout <= 0:
                    continue
                for _ in range(self.max_batches):
                    n = await self.store.fail_pending_timeouts(
                        queue, settings.pending_timeout, limit=self.batch_size
                    )
                    timed_out += n
                    if n < self.batch_size:
                        break
            deleted_subtasks = deleted_tasks = 0
            for _ in range(self.max_batches):
                subtasks, tasks = await self.store.delete_finished(
                    self.retention, limit=self.batch_size
                )
                deleted_subtasks += subtasks
                deleted_tasks += tasks
                if subtasks < self.batch_size and tasks < self.batch_size:
                    break
            return RescueReport(
                returned=statuses["pending"], failed=statuses["failed"],
                dead_executors=tuple(dead), timed_out=timed_out,
                deleted_subtasks=deleted_subtasks, deleted_tasks=deleted_tasks,
                by_queue=dict(by_queue),
            )
