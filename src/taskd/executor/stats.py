"""Cluster-wide gauges from the database, refreshed every ``stats_interval``, not per scrape.

One cheap query (``stats_snapshot``: unfinished rows only, through the partial indexes) sets
``taskd_queue_depth{queue,status}`` (status ready, scheduled, processing),
``taskd_queue_oldest_pending_seconds{queue}``, ``taskd_executors{status}`` and
``taskd_queue_paused{queue}`` (which the backlog alerts leave out); a second, bounded
one ``taskd_queue_oldest_unstarted_seconds{queue}`` (the pending timeout's clock); the pool's own
statistics set ``taskd_db_pool_connections{state}`` (idle, used, max) and
``taskd_db_pool_requests_waiting``. A third reads only statistics views and file sizes
(``table_health``) for the storage gauges: ``taskd_table_{live,dead}_tuples``,
``taskd_table_size_bytes``, ``taskd_index_size_bytes``, ``taskd_table_seconds_since_vacuum``,
``taskd_table_vacuums`` and ``taskd_db_connections{state}``. A fourth folds the per-queue
counters that submissions keep in the database (SQL submissions pass no daemon) and sets
``taskd_unique_duplicates_total{queue}`` to their totals, and a fifth (a small table's join)
``taskd_tasks_waiting_on_dependencies{queue}``: every daemon exports the same cluster-wide
values.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

import anyio

from taskd.errors import TaskdError
from taskd.metrics import Metrics
from taskd.queue.health import (
    UNIQUE_DUPLICATES,
    StorageHealth,
    queue_counters,
    stats_snapshot,
    storage_health,
    tasks_waiting_on_dependencies,
)
from taskd.queue.status import oldest_unstarted
from taskd.queue.store import Store

log = logging.getLogger(__name__)

DEPTH_STATUSES = ("ready", "scheduled", "processing")
EXECUTOR_STATUSES = ("running", "stopping", "stopped", "dead")


class StatsCollector:
    """Refreshes the cluster-wide gauges every ``interval`` seconds (with 10 % jitter).

    ``pending_timeouts`` (queue -> seconds, 0 = off) sets
    ``taskd_queue_pending_timeout_seconds``, which the oldest-pending alert compares against.
    """

    def __init__(
        self, store: Store, metrics: Metrics, interval: float, pool_max: int, *,
        pending_timeouts: Mapping[str, float] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0 seconds")
        self.store = store
        self.metrics = metrics
        self.interval = interval
        self.pool_max = pool_max
        self.pending_timeouts = dict(pending_timeouts or {})
        self._queues_seen: set[str] = set(self.pending_timeouts)
        self._states_seen: set[str] = set()
        # The database's totals that the counters were last set to (a counter only goes up:
        # it is raised by the difference).
        self._duplicates: dict[str, int] = {}
        self._waiting_seen: set[str] = set()

    async def run(self) -> None:
        """Collect until cancelled; database errors are logged and the next round tries again."""
        for queue, seconds in self.pending_timeouts.items():
            self.metrics.queue_pending_timeout.labels(queue).set(seconds)
        while True:
            try:
                # A query that hangs must not stop the gauges for good.
                with anyio.fail_after(max(self.interval, 5.0)):
                    await self.collect()
            except (TaskdError, TimeoutError) as exc:
                log.warning("stats query failed: %s", exc or type(exc).__name__)
            self.collect_pool()
            await anyio.sleep(self.interval * random.uniform(0.9, 1.1))

    async def collect(self) -> None:
        """Run the stats query once and set the queue and executor gauges.

        Queues seen before that now have no unfinished rows are set to 0, not left stale.
        Raises DatabaseError / DatabaseUnavailable from the store.
        """
        snapshot = await stats_snapshot(self.store)
        self._queues_seen |= (set(snapshot.depth) | set(snapshot.oldest_pending)
                              | set(snapshot.paused))
        unstarted = await oldest_unstarted(self.store, sorted(self._queues_seen))
        for queue in self._queues_seen:
            for status in DEPTH_STATUSES:
                self.metrics.queue_depth.labels(queue, status).set(
                    snapshot.depth.get(queue, {}).get(status, 0)
                )
            self.metrics.queue_oldest_pending.labels(queue).set(
                snapshot.oldest_pending.get(queue, 0.0)
            )
            self.metrics.queue_oldest_unstarted.labels(queue).set(unstarted.get(queue, 0.0))
            self.metrics.queue_paused.labels(queue).set(int(snapshot.paused.get(queue, False)))
        for status in sorted(set(EXECUTOR_STATUSES) | set(snapshot.executors)):
            self.metrics.executors.labels(status).set(snapshot.executors.get(status, 0))
        self.set_storage(await storage_health(self.store))
        # Last: the tables of version 17 need roles.sql re-run; until then only these fail.
        await self.collect_flow()
        self.collect_pool()

    async def collect_flow(self) -> None:
        """Set the job flow's gauge and counter: tasks waiting on dependencies (a queue that
        had some and has none now goes to 0) and unique keys' duplicates (folded first).
        Raises DatabaseError from the store."""
        waiting = await tasks_waiting_on_dependencies(self.store)
        self._waiting_seen |= set(waiting)
        for queue in self._waiting_seen:
            self.metrics.tasks_waiting_on_dependencies.labels(queue).set(waiting.get(queue, 0))
        self.set_counters((await queue_counters(self.store, fold=True)).get(UNIQUE_DUPLICATES, {}))

    def set_counters(self, duplicates: dict[str, int]) -> None:
        """Raise ``taskd_unique_duplicates_total`` to the database's totals. A queue's series
        appears with its first total, not at 0 then the total, so a daemon's start adds no
        false increase to rate()."""
        for queue, total in duplicates.items():
            seen = self._duplicates.get(queue, 0)
            if total > seen:
                self.metrics.unique_duplicates.labels(queue).inc(total - seen)
                self._duplicates[queue] = total

    def set_storage(self, storage: StorageHealth) -> None:
        """Set the storage gauges; a connection state no longer seen goes to 0."""
        m = self.metrics
        for t in storage.tables.values():
            m.table_live_tuples.labels(t.table).set(t.live_tuples)
            m.table_dead_tuples.labels(t.table).set(t.dead_tuples)
            m.table_size.labels(t.table).set(t.size_bytes)
            m.table_vacuum_age.labels(t.table).set(t.vacuum_age_seconds)
            m.table_vacuums.labels(t.table).set(t.vacuums)
            for index, size in t.indexes.items():
                m.index_size.labels(t.table, index).set(size)
        self._states_seen |= set(storage.connections)
        for state in self._states_seen:
            m.db_connections.labels(state).set(storage.connections.get(state, 0))

    def collect_pool(self) -> None:
        """Set the pool gauges from the pool's own counters (no query)."""
        stats = self.store.pool.get_stats()
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        self.metrics.db_pool_connections.labels("idle").set(idle)
        self.metrics.db_pool_connections.labels("used").set(max(0, size - idle))
        self.metrics.db_pool_connections.labels("max").set(self.pool_max)
        self.metrics.db_pool_waiting.set(stats.get("requests_waiting", 0))
