"""Read-only views for operators: ``taskd status``, ``taskd errors`` and ``taskd tasks``.

Everything here is read from the database, never from one daemon's memory, so it shows every
executor on every host. Ages are computed by the database clock. The JSON shape produced by
:meth:`StatusReport.to_json` is documented in ``docs/operations.md`` and kept stable: fields are
only ever added.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from taskd.queue.controls import QueueControl, list_queue_controls
from taskd.queue.health import (
    UNIQUE_DUPLICATES,
    StorageHealth,
    queue_counters,
    storage_health,
    tasks_waiting_on_dependencies,
)
from taskd.queue.notifications import notification_overview
from taskd.queue.schedules import list_schedules
from taskd.queue.store import Store

# Bump only for an incompatible change of the JSON shape; adding fields keeps it.
STATUS_FORMAT = 1

ProblemCode = Literal["no_live_executor", "dead_executor_holds_leases", "dead_notifications"]


@dataclass(frozen=True, slots=True)
class QueueSlots:
    """One executor's concurrency limit and running count for one queue."""

    limit: int | None
    running: int


@dataclass(frozen=True, slots=True)
class ExecutorRow:
    """One executor as ``taskd status`` shows it.

    ``alive`` is false when the row says dead, stopped, or its heartbeat is older than
    ``executor_dead_after`` (an executor that died with no peer left to mark it dead).
    """

    id: str
    group: str
    hostname: str
    pid: int
    version: str
    status: str
    alive: bool
    started_at: datetime
    heartbeat_age_seconds: float
    queues: dict[str, QueueSlots]
    leases: int
    metrics_url: str | None


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue's backlog and recent throughput (rates are finished subtasks per minute),
    and the groups and ids of the live executors that serve it."""

    queue: str
    ready: int
    scheduled: int
    processing: int
    completed_last_hour: int
    failed_last_hour: int
    rate_per_minute: dict[str, float]
    oldest_pending_seconds: float | None
    # The oldest task nobody started, since it became runnable: what pending_timeout measures.
    oldest_unstarted_seconds: float | None = None
    groups: list[str] = field(default_factory=list)
    executors: list[str] = field(default_factory=list)
    # Queue controls (taskd queues pause|resume, queues.<name>.rate_limit): a paused queue
    # claims nothing and raises no backlog problem or alert.
    paused: bool = False
    paused_at: datetime | None = None
    paused_by: str | None = None
    rate_limit: str | None = None
    rate_window_used: int = 0
    # Job flow: unfinished tasks that wait for other tasks (after), and the submissions that
    # a unique_key turned into an existing task, since the schema began.
    waiting_on_dependencies: int = 0
    unique_duplicates: int = 0


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """One aggregated error from error_logs."""

    error_type: str
    message: str
    count: int
    queue: str | None
    kind: str | None
    first_occurred_at: datetime
    last_occurred_at: datetime
    stack_trace: str | None = None


@dataclass(frozen=True, slots=True)
class DatabaseRow:
    """The database as the operator sees it."""

    server_version: str
    size_bytes: int
    connections: int
    max_connections: int
    oldest_transaction_seconds: float | None
    subtasks_dead_tuples: int | None
    schema_version: int | None


@dataclass(frozen=True, slots=True)
class Problem:
    """Something that needs an operator's attention; ``taskd status`` then exits with 1."""

    code: ProblemCode
    message: str
    queue: str | None = None
    executor: str | None = None


TASK_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """A schedule as ``taskd status`` shows it: its state, last and next tick (by the
    database clock; none while paused) and its last task's outcome."""

    name: str
    cron: str
    timezone: str
    enabled: bool
    last_tick: datetime | None
    next_tick: datetime | None
    last_task_id: int | None
    last_task_status: str | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Everything ``taskd status`` shows, taken at the database time ``generated_at``.

    ``tasks``: tasks by status; ``subtasks``: subtasks by status (pending and processing counted
    from the rows, the finished ones from their tasks' counters). Every status is a key.
    ``storage``: taskd's tables (row versions, sizes, vacuums) and connections by state.
    """

    generated_at: datetime
    executors: list[ExecutorRow]
    queues: list[QueueRow]
    errors: list[ErrorRow]
    database: DatabaseRow
    problems: list[Problem] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TASK_STATUSES, 0))
    subtasks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TASK_STATUSES, 0))
    storage: StorageHealth = field(default_factory=lambda: StorageHealth({}, {}))
    # Task-end webhooks: undelivered (still being tried), dead (given up), and the oldest
    # undelivered one's age in seconds (None: none).
    notifications: dict[str, float | int | None] = field(default_factory=lambda: {
        "undelivered": 0, "dead": 0, "oldest_undelivered_seconds": None})
    schedules: list[ScheduleStatus] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The documented JSON shape (docs/operations.md); timestamps are ISO 8601 strings."""
        data = asdict(self)
        data = {"format": STATUS_FORMAT, "healthy": self.healthy, **data}
        for error in data["errors"]:
            error.pop("stack_trace", None)
        return _jsonable(data)  # type: ignore[no-any-return]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _slots(concurrency: dict[str, Any], running: dict[str, Any]) -> dict[str, QueueSlots]:
    names = sorted(set(concurrency) | set(running))
    return {
        name: QueueSlots(
            limit=int(concurrency[name]) if name in concurrency else None,
            running=int(running.get(name, 0)),
        )
        for name in names
    }


def serving(executors: list[ExecutorRow], queues: list[QueueRow]) -> list[QueueRow]:
    """``queues`` with the groups and ids of the live executors that serve each: those whose
    ``concurrency`` names the queue (a daemon records there the queues its group serves)."""
    live = [e for e in executors if e.alive]
    return [
        replace(q, groups=sorted({e.group for e in live if q.queue in e.queues}),
                executors=[e.id for e in live if q.queue in e.queues])
        for q in queues
    ]


def find_problems(
    executors: list[ExecutorRow], queues: list[QueueRow]
) -> list[Problem]:
    """What needs attention: unfinished work no live executor serves (a live executor serves
    the queues its ``concurrency`` names), and dead executors that still hold leases.
    """
    problems: list[Problem] = []
    live = [e for e in executors if e.alive]
    for q in queues:
        unfinished = q.ready + q.scheduled + q.processing
        served = any(q.queue in e.queues for e in live)
        if unfinished and not served and not q.paused:
            problems.append(Problem(
                "no_live_executor",
                f"queue {q.queue} has {unfinished} unfinished subtasks and no live executor "
                "serves it",
                queue=q.queue,
            ))
    for e in executors:
        if not e.alive and e.leases:
            problems.append(Problem(
                "dead_executor_holds_leases",
                f"executor {e.id} on {e.hostname} is {e.status} (heartbeat "
                f"{e.heartbeat_age_seconds:.0f}s ago) and holds {e.leases} leases",
                executor=e.id,
            ))
    return problems


async def read_executors(store: Store, dead_after: float) -> list[ExecutorRow]:
    """Executors running, recently stopped or dead, or holding leases; DatabaseError on failure."""
    rows = await store.fetch_rows("executor_overview", {})
    return [
        ExecutorRow(
            id=r["id"], group=r["executor_group"], hostname=r["hostname"], pid=r["pid"],
            version=r["version"], status=r["status"],
            alive=r["status"] in ("running", "stopping")
            and r["heartbeat_age_seconds"] <= dead_after,
            started_at=r["started_at"], heartbeat_age_seconds=r["heartbeat_age_seconds"],
            queues=_slots(r["concurrency"] or {}, r["running"] or {}),
            leases=int(r["leases"]), metrics_url=r["metrics_url"],
        )
        for r in rows
    ]


async def oldest_unstarted(store: Store, queues: list[str]) -> dict[str, float]:
    """Queue -> age in seconds of its oldest task that nobody started, since it became
    runnable (the pending timeout's clock); queues without one are absent."""
    rows = await store.fetch_rows("oldest_unstarted_tasks", {"queues": queues})
    return {r["queue"]: max(0.0, float(r["oldest_seconds"])) for r in rows}


def with_controls(queues: list[QueueRow], controls: list[QueueControl]) -> list[QueueRow]:
    """``queues`` with their controls; a paused or rate-limited queue without work is added."""
    by_name = {c.queue: c for c in controls}
    rows = {q.queue: q for q in queues}
    for c in controls:
        if c.queue not in rows and (c.paused or c.rate_limit is not None):
            rows[c.queue] = QueueRow(c.queue, 0, 0, 0, 0, 0,
                                     {"1m": 0.0, "5m": 0.0, "15m": 0.0}, None)
    out = []
    for name in sorted(rows):
        control = by_name.get(name)
        out.append(rows[name] if control is None else replace(
            rows[name], paused=control.paused, paused_at=control.paused_at,
            paused_by=control.paused_by, rate_limit=control.rate_limit,
            rate_window_used=control.rate_window_used))
    return out


async def read_queues(store: Store) -> list[QueueRow]:
    """Each queue with unfinished work or subtasks finished within the hour, and each paused
    or rate-limited one, with its controls, its tasks waiting on dependencies and its unique
    keys' duplicates."""
    rows = await store.fetch_rows("queue_overview", {})
    unstarted = await oldest_unstarted(store, [r["queue"] for r in rows])
    waiting = await tasks_waiting_on_dependencies(store)
    duplicates = (await queue_counters(store)).get(UNIQUE_DUPLICATES, {})
    queues = with_controls([
        QueueRow(
            queue=r["queue"], ready=int(r["ready"]), scheduled=int(r["scheduled"]),
            processing=int(r["processing"]),
            completed_last_hour=int(r["completed_last_hour"]),
            failed_last_hour=int(r["failed_last_hour"]),
            rate_per_minute={"1m": r["rate_1m"], "5m": r["rate_5m"], "15m": r["rate_15m"]},
            oldest_pending_seconds=r["oldest_pending_seconds"],
            oldest_unstarted_seconds=unstarted.get(r["queue"]),
        )
        for r in rows
    ], await list_queue_controls(store))
    return [replace(q, waiting_on_dependencies=waiting.get(q.queue, 0),
                    unique_duplicates=duplicates.get(q.queue, 0)) for q in queues]


def _error_row(r: dict[str, Any]) -> ErrorRow:
    return ErrorRow(
        error_type=r["error_type"], message=r["error_message"], count=int(r["count"]),
        queue=r["queue"], kind=r["kind"], first_occurred_at=r["first_occurred_at"],
        last_occurred_at=r["last_occurred_at"], stack_trace=r.get("stack_trace"),
    )


async def recent_errors(store: Store, *, since: float = 86400.0, limit: int = 10) -> list[ErrorRow]:
    """The most frequent errors that occurred within ``since`` seconds."""
    rows = await store.fetch_rows("recent_errors", {"since": float(since), "limit": limit})
    return [_error_row(r) for r in rows]


async def list_errors(
    store: Store, *, queue: str | None = None, limit: int = 50
) -> list[ErrorRow]:
    """Aggregated errors, newest first, with their latest stack trace."""
    rows = await store.fetch_rows("list_errors", {"queue": queue, "limit": limit})
    return [_error_row(r) for r in rows]


async def read_database(store: Store) -> tuple[DatabaseRow, datetime]:
    """The database's version, size, connections, oldest transaction, dead tuples; and now()."""
    r = (await store.fetch_rows("database_overview", {}))[0]
    row = DatabaseRow(
        server_version=r["server_version"], size_bytes=int(r["size_bytes"]),
        connections=int(r["connections"]), max_connections=int(r["max_connections"]),
        oldest_transaction_seconds=r["oldest_transaction_seconds"],
        subtasks_dead_tuples=r["subtasks_dead_tuples"], schema_version=r["schema_version"],
    )
    return row, r["now"]


async def read_counts(
    store: Store, queues: list[QueueRow]
) -> tuple[dict[str, int], dict[str, int]]:
    """Tasks by status, and subtasks by status: pending and processing from ``queues`` (counted
    from the rows), the finished from the tasks' counters (over the tasks retention keeps)."""
    tasks = dict.fromkeys(TASK_STATUSES, 0)
    subtasks = dict.fromkeys(TASK_STATUSES, 0)
    for r in await store.fetch_rows("task_counts", {}):
        tasks[r["status"]] = int(r["tasks"])
        for status in ("completed", "failed", "cancelled"):
            subtasks[status] += int(r[status])
    subtasks["pending"] = sum(q.ready + q.scheduled for q in queues)
    subtasks["processing"] = sum(q.processing for q in queues)
    return tasks, subtasks


async def read_status(store: Store, *, dead_after: float, error_limit: int = 10) -> StatusReport:
    """The whole operators' view. Raises DatabaseUnavailable / DatabaseError from the store."""
    database, now = await read_database(store)
    executors = await read_executors(store, dead_after)
    queues = serving(executors, await read_queues(store))
    errors = await recent_errors(store, limit=error_limit)
    tasks, subtasks = await read_counts(store, queues)
    schedules = [ScheduleStatus(r.name, r.cron, r.timezone, r.enabled, r.last_tick, r.next_tick,
                                r.last_task_id, r.last_task_status)
                 for r in await list_schedules(store)]
    outbox = await notification_overview(store)
    problems = find_problems(executors, queues)
    if outbox.dead:
        problems.append(Problem(
            "dead_notifications",
            f"{outbox.dead} task-end notifications are dead (given up): fix the receiver, then "
            "`taskd notifications retry --all-dead`",
        ))
    return StatusReport(
        generated_at=now, executors=executors, queues=queues, errors=errors,
        database=database, problems=problems, tasks=tasks, subtasks=subtasks, schedules=schedules,
        storage=await storage_health(store),
        notifications={"undelivered": outbox.undelivered, "dead": outbox.dead,
                       "oldest_undelivered_seconds": outbox.oldest_undelivered_seconds},
    )
