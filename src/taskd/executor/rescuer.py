"""The rescuer: expired leases, dead executors, pending timeouts, retention.

Any executor may run it; a transaction-level advisory lock keeps it to one at a time across the
cluster. Work is done in LIMIT-sized batches; errors are logged and the next pass carries on.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from taskd.errors import ConfigError, DatabaseError
from taskd.metrics import Metrics
from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from taskd.types import RescueReport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RescuerConfig:
    """``interval``: seconds between passes (jittered). ``executor_dead_after``: a heartbeat
    older marks its executor dead. ``retention``: finished rows older are deleted. Each pass
    works in batches of ``batch_size``, at most ``max_batches`` per kind of work, so a pass
    stays short. Raises :class:`ConfigError` for a value it cannot work with."""

    interval: float
    executor_dead_after: float
    retention: float
    batch_size: int = 1000
    max_batches: int = 20

    def __post_init__(self) -> None:
        if min(self.interval, self.executor_dead_after, self.retention) <= 0:
            raise ConfigError("rescuer: interval, executor_dead_after and retention must be "
                              "> 0 seconds")
        if self.batch_size < 1 or self.max_batches < 1:
            raise ConfigError("rescuer: batch_size and max_batches must be >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> RescuerConfig:
        return cls(settings.rescue_interval, settings.executor_dead_after, settings.retention)


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
            await anyio.sleep(self.config.interval * random.uniform(0.8, 1.2))

    async def rescue_once(self) -> RescueReport:
        """One pass, if no other executor is running one."""
        async with self.store.rescuer_lock() as acquired:
            if not acquired:
                return RescueReport()
            batch_size, max_batches = self.config.batch_size, self.config.max_batches
            by_queue: Counter[str] = Counter()
            statuses: Counter[str] = Counter()
            for _ in range(max_batches):
                rows = await self.store.rescue_expired_leases(limit=batch_size)
                for row in rows:
                    by_queue[row["queue"]] += 1
                    statuses[row["status"]] += 1
                if len(rows) < batch_size:
                    break
            for queue, n in by_queue.items():
                self.metrics.leases_rescued.labels(queue).inc(n)
            dead = await self.store.mark_dead_executors(self.config.executor_dead_after)
            for executor_id in dead:
                log.warning("executor marked dead", extra={"dead_executor": executor_id})
            timed_out = 0
            for queue, settings in self.queues.items():
                if settings.pending_timeout <= 0:
                    continue
                for _ in range(max_batches):
                    n = await self.store.fail_pending_timeouts(
                        queue, settings.pending_timeout, limit=batch_size
                    )
                    timed_out += n
                    if n < batch_size:
                        break
            deleted_subtasks = deleted_tasks = 0
            for _ in range(max_batches):
                subtasks, tasks = await self.store.delete_finished(
                    self.config.retention, limit=batch_size
                )
                deleted_subtasks += subtasks
                deleted_tasks += tasks
                if subtasks < batch_size and tasks < batch_size:
                    break
            return RescueReport(
                returned=statuses["pending"], failed=statuses["failed"],
                dead_executors=tuple(dead), timed_out=timed_out,
                deleted_subtasks=deleted_subtasks, deleted_tasks=deleted_tasks,
                by_queue=dict(by_queue),
            )
