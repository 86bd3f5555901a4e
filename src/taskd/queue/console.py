"""The operators' console's database access (``taskd api``, under ``/console``).

Reads: the task list by filter and cursor, a task's subtasks with their errors' stack traces,
the aggregated errors and the failed subtasks of each, the audit log. Writes: the actions an
admin takes (retry or cancel one task, change its priority, bulk retry or cancel by filter,
pause or resume a queue), each together with its row in ``console_audit``. The overview reuses
:mod:`taskd.queue.status`, :mod:`~taskd.queue.controls`, :mod:`~taskd.queue.schedules` and
:mod:`~taskd.queue.notifications`. The console's own queries are in ``queries/console.sql``.

Errors: :class:`taskd.errors.TaskNotFound`, :class:`~taskd.errors.TaskFinished`,
:class:`~taskd.errors.NothingToRetry`, :class:`~taskd.errors.InvalidInput`,
:class:`~taskd.errors.QueueNotFound` and the
database errors of :mod:`taskd.queue.connection`.

Just over 400 lines: every read and write of the console, one function a page or action.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from taskd.errors import NothingToRetry, TaskFinished, TaskNotFound
from taskd.queue.connection import Conn, run_query
from taskd.queue.controls import QueueControl, change_on, list_queue_controls
from taskd.queue.notifications import NotificationOverview, notification_overview
from taskd.queue.schedules import ScheduleRow, list_schedules
from taskd.queue.status import ExecutorRow, QueueRow, read_executors
from taskd.queue.store import Store
from taskd.queue.tasks import check_priority, set_priority_on
from taskd.types import JSON, Task

# Tasks per transaction in a bulk action: each batch is short, so executors and the API keep
# going while an operator retries thousands of tasks.
BULK_BATCH = 500
MAX_ID = 2**63 - 1

Sort = Literal["created", "priority"]
AuditAction = Literal["retry_task", "cancel_task", "set_priority", "retry_failed",
                      "cancel_pending", "pause_queue", "resume_queue"]


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which tasks a page or a bulk action is about; None is "any"."""

    status: str | None = None
    queue: str | None = None
    kind: str | None = None
    user_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None

    def params(self) -> dict[str, Any]:
        return asdict(self)

    def described(self) -> dict[str, str]:
        """The filter's set fields as text, for the audit log and the confirmation."""
        return {k: v.isoformat() if isinstance(v, datetime) else str(v)
                for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts: after this task (and this priority, sorting by it)."""

    id: int
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class SubtaskRow:
    id: int
    status: str
    attempt: int
    max_attempts: int
    crashes: int
    locked_by: str | None
    payload: dict[str, JSON]
    state: JSON | None
    result: JSON | None
    error: str | None
    run_after: datetime
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error_id: int | None
    stack_trace: str | None


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    id: int
    error_type: str
    error_message: str
    count: int
    queue: str | None
    kind: str | None
    first_occurred_at: datetime
    last_occurred_at: datetime
    stack_trace: str | None


@dataclass(frozen=True, slots=True)
class FailedSubtask:
    id: int
    task_id: int
    queue: str
    kind: str
    attempt: int
    completed_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    actor: str
    action: str
    target: dict[str, JSON]
    row_count: int
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class BulkCount:
    """What a bulk action would touch: ``tasks`` tasks with ``subtasks`` subtasks, none newer
    than ``max_id`` (the action is bounded by it, so tasks submitted after the count are not
    touched)."""

    max_id: int
    tasks: int
    subtasks: int


@dataclass(frozen=True, slots=True)
class BulkReport:
    """What a bulk action did, and its audit row."""

    audit_id: int
    tasks: int
    subtasks: int
    batches: int


@dataclass(frozen=True, slots=True)
class QueueOverview:
    """A queue as the console's overview shows it; ``limit`` is the sum of the live
    executors' concurrency limits for it (None when no live executor serves it);
    ``control``: its pause and rate limit (None when the database does not know it)."""

    row: QueueRow
    limit: int | None
    running: int
    control: QueueControl | None = None


@dataclass(frozen=True, slots=True)
class Overview:
    """The overview page: queues, executors, schedules, and the notifications' backlog
    (``notifications`` is None when none is undelivered or dead)."""

    queues: list[QueueOverview]
    executors: list[ExecutorRow]
    generated_at: datetime | None = None
    schedules: list[ScheduleRow] = field(default_factory=list)
    notifications: NotificationOverview | None = None


async def _queues(store: Store) -> list[QueueRow]:
    """:func:`taskd.queue.status.read_queues` without the pending timeout's clock
    (``oldest_unstarted_tasks``, which ``taskd status`` shows): with a million finished
    subtasks its plan costs about a second, too much for a page that refreshes every few
    seconds."""
    rows = await store.fetch_rows("queue_overview", {})
    return [
        QueueRow(
            queue=r["queue"], ready=int(r["ready"]), scheduled=int(r["scheduled"]),
            processing=int(r["processing"]),
            completed_last_hour=int(r["completed_last_hour"]),
            failed_last_hour=int(r["failed_last_hour"]),
            rate_per_minute={"1m": r["rate_1m"], "5m": r["rate_5m"], "15m": r["rate_15m"]},
            oldest_pending_seconds=r["oldest_pending_seconds"],
        )
        for r in rows
    ]


def _idle(queue: str) -> QueueRow:
    return QueueRow(queue=queue, ready=0, scheduled=0, processing=0, completed_last_hour=0,
                    failed_last_hour=0, rate_per_minute={"1m": 0.0, "5m": 0.0, "15m": 0.0},
                    oldest_pending_seconds=None)


async def overview(store: Store, *, dead_after: float) -> Overview:
    """Queues (backlog, running, limit, rate, oldest waiting, pause, rate limit), executors,
    schedules and the notifications' backlog."""
    executors = await read_executors(store, dead_after)
    queues = await _queues(store)
    controls = {c.queue: c for c in await list_queue_controls(store)}
    # A paused queue is listed even when idle, so that it can be seen and resumed.
    listed = {q.queue for q in queues}
    queues += [_idle(name) for name, c in controls.items() if c.paused and name not in listed]
    queues.sort(key=lambda q: q.queue)
    result = []
    for q in queues:
        limits = [e.queues[q.queue].limit for e in executors
                  if e.alive and q.queue in e.queues]
        known = [x for x in limits if x is not None]
        result.append(QueueOverview(row=q, limit=sum(known) if known else None,
                                    running=q.processing, control=controls.get(q.queue)))
    notes = await notification_overview(store)
    return Overview(queues=result, executors=executors, generated_at=await store.database_now(),
                    schedules=await list_schedules(store),
                    notifications=notes if notes.undelivered or notes.dead else None)


async def list_tasks(
    store: Store, flt: TaskFilter, *, sort: Sort = "created", after: Cursor | None = None,
    limit: int = 50,
) -> list[Task]:
    """A page of tasks matching ``flt``, newest (or highest priority) first, after ``after``."""
    params = {**flt.params(), "before_id": after.id if after else None, "limit": limit}
    if sort == "priority":
        params["before_priority"] = after.priority if after else None
        return await store.fetch_as("console_list_tasks_by_priority", params, Task)
    return await store.fetch_as("console_list_tasks", params, Task)


async def get_task(store: Store, task_id: int) -> Task:
    """Raises :class:`TaskNotFound`."""
    rows = await store.fetch_as("console_task", {"id": task_id}, Task)
    if not rows:
        raise TaskNotFound(f"task {task_id} not found")
    return rows[0]


async def list_subtasks(
    store: Store, task_id: int, *, after_id: int = 0, limit: int = 100
) -> list[SubtaskRow]:
    """A page of the task's subtasks in id order, each with its error's latest stack trace."""
    return await store.fetch_as("console_subtasks",
                                {"task_id": task_id, "after_id": after_id, "limit": limit},
                                SubtaskRow)


async def list_errors(
    store: Store, *, before: tuple[datetime, int] | None = None, limit: int = 50
) -> list[ErrorEntry]:
    """Aggregated errors, newest first, after the cursor (last_occurred_at, id)."""
    return await store.fetch_as("console_errors", {
        "before_at": before[0] if before else None, "before_id": before[1] if before else None,
        "limit": limit,
    }, ErrorEntry)


async def get_error(store: Store, error_id: int) -> ErrorEntry | None:
    rows = await store.fetch_as("console_error", {"id": error_id}, ErrorEntry)
    return rows[0] if rows else None


async def error_subtasks(store: Store, error_id: int, *, limit: int = 50) -> list[FailedSubtask]:
    """The failed subtasks whose error this is, newest first."""
    return await store.fetch_as("console_error_subtasks", {"id": error_id, "limit": limit},
                                FailedSubtask)


async def audit_log(store: Store, *, limit: int = 100) -> list[AuditEntry]:
    """The latest actions, newest first."""
    return await store.fetch_as("console_audit_list", {"limit": limit}, AuditEntry)


# -- actions --------------------------------------------------------------------------------


async def _audit(
    conn: Conn, actor: str, action: AuditAction, target: dict[str, Any], row_count: int,
    *, finished: bool = True,
) -> int:
    rows = await run_query(conn, "console_audit_start", {
        "actor": actor, "action": action, "target": Jsonb(target), "row_count": row_count,
        "finished": finished,
    })
    return int(rows[0]["id"])


async def retry_task(store: Store, task_id: int, *, actor: str) -> int:
    """The task's failed subtasks back to pending (no quota is taken: an admin's retry), and
    the audit row; returns how many. Raises :class:`TaskNotFound` or
    :class:`NothingToRetry`."""

    async def work(conn: Conn) -> int:
        rows = await run_query(conn, "console_lock_task", {"id": task_id})
        if not rows:
            raise TaskNotFound(f"task {task_id} not found")
        if rows[0]["failed"] == 0:
            raise NothingToRetry(f"task {task_id} has no failed subtasks")
        retried = await run_query(conn, "retry_failed_subtasks", {"task_id": task_id})
        await run_query(conn, "api_notify_queue", {"queue": rows[0]["queue"]})
        await _audit(conn, actor, "retry_task", {"task_id": task_id}, len(retried))
        return len(retried)

    return await store.in_transaction(work)


async def cancel_task(store: Store, task_id: int, *, actor: str) -> tuple[int, int]:
    """Cancel the task's pending subtasks and ask running ones to stop, with the audit row:
    (cancelled, asked to stop). Raises :class:`TaskNotFound` or :class:`TaskFinished`."""

    async def work(conn: Conn) -> tuple[int, int]:
        rows = await run_query(conn, "console_lock_task", {"id": task_id})
        if not rows:
            raise TaskNotFound(f"task {task_id} not found")
        status = rows[0]["status"]
        if status in ("completed", "failed", "cancelled"):
            raise TaskFinished(f"task {task_id} has already ended ({status})", status=status)
        [done] = await run_query(conn, "cancel_task", {"task_id": task_id})
        cancelled, stopping = int(done["cancelled"]), int(done["requested"])
        await _audit(conn, actor, "cancel_task",
                     {"task_id": task_id, "asked_to_stop": stopping}, cancelled + stopping)
        return cancelled, stopping

    return await store.in_transaction(work)


async def set_priority(store: Store, task_id: int, priority: int, *, actor: str) -> int:
    """:func:`taskd.queue.tasks.set_task_priority` with its audit row; returns how many
    subtasks moved. Raises :class:`InvalidInput`, :class:`TaskNotFound`,
    :class:`TaskFinished`."""
    check_priority(priority)

    async def work(conn: Conn) -> int:
        moved = await set_priority_on(conn, task_id, priority)
        await _audit(conn, actor, "set_priority",
                     {"task_id": task_id, "priority": priority}, moved)
        return moved

    return await store.in_transaction(work)


async def change_queue(
    store: Store, action: Literal["pause_queue", "resume_queue"], queue: str, *, actor: str,
    configured: Collection[str] = (),
) -> bool:
    """Pause or resume ``queue`` (:mod:`taskd.queue.controls`) with its audit row, in one
    transaction; returns False (and writes nothing) when it already was paused / was not
    paused. Raises :class:`taskd.errors.QueueNotFound` (nothing written)."""

    async def work(conn: Conn) -> bool:
        params: dict[str, object] = {"paused_by": actor} if action == "pause_queue" else {}
        changed = await change_on(conn, action, queue, params, configured)
        if changed:
            await _audit(conn, actor, action, {"queue": queue}, 1)
        return changed

    return await store.in_transaction(work)


async def count_bulk(store: Store, flt: TaskFilter, *, max_id: int = MAX_ID) -> BulkCount:
    """How many tasks of ``flt`` (its status must be ``failed`` or ``pending``) a bulk action
    would touch, and their subtasks."""
    [row] = await store.fetch_rows("console_count_tasks", {**flt.params(), "max_id": max_id})
    return BulkCount(max_id=int(row["max_id"]), tasks=int(row["tasks"]),
                     subtasks=int(row["subtasks"]))


async def bulk_action(
    store: Store, action: Literal["retry_failed", "cancel_pending"], flt: TaskFilter,
    *, max_id: int, actor: str, batch: int = BULK_BATCH,
) -> BulkReport:
    """Retry every failed task / cancel every pending task of ``flt`` with an id of at most
    ``max_id``, ``batch`` tasks per transaction, as one audited operation: its audit row is
    written first and brought up to date with each batch (``finished_at`` stays NULL if the
    operation is cut short). ``flt.status`` is ignored: the action says which tasks."""
    query = ("console_retry_failed_batch" if action == "retry_failed"
             else "console_cancel_pending_batch")
    target: dict[str, Any] = {"filter": flt.described(), "max_id": max_id, "tasks": 0}
    audit_id = await store.in_transaction(
        lambda conn: _audit(conn, actor, action, target, 0, finished=False))
    params = {**flt.params(), "max_id": max_id, "batch": batch}
    before = max_id + 1 if max_id < MAX_ID else MAX_ID
    tasks = subtasks = batches = 0
    while True:
        step = {**params, "before_id": before}

        async def work(conn: Conn, step: dict[str, Any] = step, tasks: int = tasks,
                       ) -> dict[str, Any]:
            [row] = await run_query(conn, query, step)
            done = row["last_id"] is None
            await run_query(conn, "console_audit_progress", {
                "id": audit_id, "row_count": int(row["subtasks"]),
                "target": Jsonb({"tasks": tasks + int(row["tasks"])}), "finished": done,
            })
            return row

        row = await store.in_transaction(work)
        if row["last_id"] is None:
            break
        batches += 1
        tasks += int(row["tasks"])
        subtasks += int(row["subtasks"])
        before = int(row["last_id"])
    return BulkReport(audit_id=audit_id, tasks=tasks, subtasks=subtasks, batches=batches)
