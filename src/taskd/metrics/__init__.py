"""Prometheus metrics (prefix ``taskd_``), on a registry of their own per daemon.

Names and labels follow DESIGN.md. No label takes unbounded values: ``queue``, ``outcome``,
``direction``, ``status``, ``state``, ``error_type``, and ``table`` / ``index`` (taskd's own
tables and indexes) only.

Counters and histograms export no ``*_created`` series (they doubled the number of series
and no dashboard or alert reads them). :meth:`Metrics.start_queues` creates every labelled
series of the configured queues at 0, so that a dashboard shows 0, not "No data", before the
first event.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from taskd.metrics.histogram import LoopHistogram

#: The ``outcome`` label of ``taskd_subtasks_finished_total`` (one per verdict of the runner).
OUTCOMES = ("completed", "failed", "retried", "snoozed", "cancelled")
#: The ``direction`` label of ``taskd_scaler_adjustments_total``.
DIRECTIONS = ("up", "down")

# Subtask durations span milliseconds (noop) to minutes (external APIs).
DURATION_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)


class Metrics:
    """Every taskd metric; components take one instance in their constructor."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The client library's switch is global: every registry of the process drops them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # The standard process_* (memory, CPU, file descriptors) and python_* (collector,
        # version) metrics, read at scrape time.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.subtasks_claimed = Counter(
            "taskd_subtasks_claimed_total", "Subtasks claimed by this executor.", ["queue"],
            registry=r,
        )
        self.claims_rate_limited = Counter(
            "taskd_claims_rate_limited_total",
            "Claims of this executor that found the queue's rate limit window used up "
            "(cluster-wide rate_limit).", ["queue"], registry=r,
        )
        self.subtasks_finished = Counter(
            "taskd_subtasks_finished_total",
            "Attempts finished by this executor, by outcome "
            "(completed, failed, retried, snoozed, cancelled).",
            ["queue", "outcome"], registry=r,
        )
        self.leases_lost = Counter(
            "taskd_leases_lost_total",
            "Outcomes dropped because this executor no longer held the lease.", ["queue"],
            registry=r,
        )
        self.schedule_ticks = Counter(
            "taskd_schedule_ticks_total",
            "Schedule ticks whose task this daemon created (each tick is created once across "
            "the fleet).", ["schedule"], registry=r,
        )
        self.leases_rescued = Counter(
            "taskd_leases_rescued_total",
            "Expired leases this executor's rescuer returned to pending or failed.", ["queue"],
            registry=r,
        )
        self.scaler_adjustments = Counter(
            "taskd_scaler_adjustments_total", "Concurrency limit changes by the scaler.",
            ["queue", "direction"], registry=r,
        )
        self.errors = Counter(
            "taskd_errors_total", "Handler errors, by exception type.",
            ["queue", "error_type"], registry=r,
        )
        # Observed once per subtask each, from the event loop only (taskd.metrics.histogram).
        self.subtask_duration = LoopHistogram(
            "taskd_subtask_duration_seconds", "Handler run time of one attempt.", ["queue"],
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.subtask_wait = LoopHistogram(
            "taskd_subtask_wait_seconds", "Time from ready (run_after) to started.", ["queue"],
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "taskd_queue_depth", "Subtasks by status (cluster-wide, from the database).",
            ["queue", "status"], registry=r,
        )
        self.queue_oldest_pending = Gauge(
            "taskd_queue_oldest_pending_seconds",
            "Age of the oldest ready subtask (cluster-wide, from the database).", ["queue"],
            registry=r,
        )
        self.queue_oldest_unstarted = Gauge(
            "taskd_queue_oldest_unstarted_seconds",
            "Age of the oldest task nobody has started, since it became runnable: what "
            "pending_timeout measures (cluster-wide, from the database).", ["queue"],
            registry=r,
        )
        self.queue_concurrency_limit = Gauge(
            "taskd_queue_concurrency_limit", "This executor's concurrency limit.", ["queue"],
            registry=r,
        )
        self.queue_running = Gauge(
            "taskd_queue_running", "Subtasks this executor is running.", ["queue"], registry=r,
        )
        self.executors = Gauge(
            "taskd_executors", "Executors by status (cluster-wide, from the database).",
            ["status"], registry=r,
        )
        self.executor_last_heartbeat = Gauge(
            "taskd_executor_last_heartbeat_timestamp_seconds",
            "When this executor last heartbeated successfully (Unix time).", registry=r,
        )
        self.db_pool_connections = Gauge(
            "taskd_db_pool_connections", "Database pool connections by state (idle, used, max).",
            ["state"], registry=r,
        )
        self.db_pool_waiting = Gauge(
            "taskd_db_pool_requests_waiting",
            "Requests waiting for a database pool connection.", registry=r,
        )
        self.queue_paused = Gauge(
            "taskd_queue_paused",
            "1 while the queue is paused (taskd queues pause), else 0 (cluster-wide, from the "
            "database).", ["queue"], registry=r,
        )
        self.queue_pending_timeout = Gauge(
            "taskd_queue_pending_timeout_seconds",
            "The queue's pending_timeout setting (0 = off), for the oldest-pending alert.",
            ["queue"], registry=r,
        )
        # Storage of taskd's tables (cluster-wide, from the statistics views): what decides
        # whether the claim stays fast under churn.
        self.table_live_tuples = Gauge(
            "taskd_table_live_tuples", "Live row versions of a taskd table (estimate).",
            ["table"], registry=r,
        )
        self.table_dead_tuples = Gauge(
            "taskd_table_dead_tuples",
            "Dead row versions of a taskd table that vacuum has not removed yet (estimate).",
            ["table"], registry=r,
        )
        self.table_size = Gauge(
            "taskd_table_size_bytes", "Heap size of a taskd table (main fork).", ["table"],
            registry=r,
        )
        self.index_size = Gauge(
            "taskd_index_size_bytes", "Size of an index of a taskd table.", ["table", "index"],
            registry=r,
        )
        self.table_vacuum_age = Gauge(
            "taskd_table_seconds_since_vacuum",
            "Seconds since the table's last vacuum or autovacuum (since the server started "
            "when none ran since).", ["table"], registry=r,
        )
        self.table_vacuums = Gauge(
            "taskd_table_vacuums",
            "Vacuums and autovacuums of the table since the statistics began.", ["table"],
            registry=r,
        )
        self.db_connections = Gauge(
            "taskd_db_connections",
            "Client sessions of taskd's database by state (active, idle, idle in transaction, "
            "...), all clients, from pg_stat_activity.", ["state"], registry=r,
        )
        self.notification_deliveries = Counter(
            "taskd_notification_deliveries_total", "Task-end webhook deliveries by this daemon, by "
            "outcome: delivered, retried (to be tried again), dead (given up).", ["outcome"],
            registry=r,
        )
        self.notifications = Gauge(
            "taskd_notifications", "Task-end notifications by status: undelivered, dead "
            "(cluster-wide, from the database).", ["status"], registry=r,
        )
        self.notification_oldest_undelivered = Gauge(
            "taskd_notification_oldest_undelivered_seconds",
            "Age of the oldest undelivered task-end notification (0: none; cluster-wide).",
            registry=r,
        )
        # Job flow (issue 28), cluster-wide from the database: every daemon exports the same
        # values, so aggregate them with max, not sum.
        self.tasks_waiting_on_dependencies = Gauge(
            "taskd_tasks_waiting_on_dependencies",
            "Unfinished tasks that wait for other tasks to complete (submitted with after; "
            "cluster-wide, from the database).", ["queue"], registry=r,
        )
        self.unique_duplicates = Counter(
            "taskd_unique_duplicates_total",
            "Submissions that a unique_key turned into the existing task, on every path (SQL, "
            "client, CLI, API; cluster-wide, from the database).", ["queue"], registry=r,
        )
        self.build_info = Gauge(
            "taskd_build_info", "Always 1; labels carry the version.", ["version"], registry=r,
        )

    def start_queues(self, queues: Iterable[str]) -> None:
        """Create the per-queue series of ``queues`` at 0 (counters, ``queue_running``), for
        every outcome and direction."""
        for queue in queues:
            self.subtasks_claimed.labels(queue)
            self.claims_rate_limited.labels(queue)
            self.leases_lost.labels(queue)
            self.leases_rescued.labels(queue)
            for outcome in OUTCOMES:
                self.subtasks_finished.labels(queue, outcome)
            for direction in DIRECTIONS:
                self.scaler_adjustments.labels(queue, direction)
            self.queue_running.labels(queue).set(0)


class Health:
    """What ``/healthz`` and ``/readyz`` answer from; the daemon's components update it.

    ``registered``: the executor row exists. ``last_db_ok``: ``time.monotonic()`` of the last
    query that succeeded (the heartbeat sets it). ``ready_window``: how recent that must be.
    """

    def __init__(self, ready_window: float) -> None:
        self.registered = False
        self.last_db_ok: float | None = None
        self.ready_window = ready_window

    def db_ok(self) -> None:
        import time

        self.last_db_ok = time.monotonic()

    def ready(self) -> bool:
        import time

        return (
            self.registered
            and self.last_db_ok is not None
            and time.monotonic() - self.last_db_ok <= self.ready_window
        )
