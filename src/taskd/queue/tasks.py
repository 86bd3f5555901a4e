"""Tasks after their submit: listing them and reading one (``taskd tasks``), and steering one:
its priority, for ``taskd tasks priority`` and ``PATCH /v1/tasks/{id}``.

The rules live in the database (``taskd.set_task_priority``, which SQL clients call too); this
module turns its errors into taskd's own by SQLSTATE, never by message text.
"""

from __future__ import annotations

from psycopg import errors as pgerrors

from taskd.errors import InvalidInput, TaskFinished, TaskNotFound
from taskd.queue.connection import Conn, run_query
from taskd.queue.store import Store
from taskd.types import Task

MIN_PRIORITY = -1000
MAX_PRIORITY = 1000


async def set_task_priority(store: Store, task_id: int, priority: int) -> int:
    """Give the task ``priority``, and its pending and processing subtasks with it, so that
    they move in the claim order at once; wake the queue's executors. Returns how many
    subtasks moved.

    Raises :class:`InvalidInput` for a priority outside -1000..1000, :class:`TaskNotFound`,
    and :class:`TaskFinished` when the task has already ended.
    """
    check_priority(priority)
    return await store.in_transaction(lambda conn: set_priority_on(conn, task_id, priority))


def check_priority(priority: object) -> None:
    """Raises :class:`InvalidInput` unless ``priority`` is an int in -1000..1000."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
        MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise InvalidInput(f"priority {priority!r} is outside {MIN_PRIORITY}..{MAX_PRIORITY}",
                           field="priority")


async def set_priority_on(conn: Conn, task_id: int, priority: int) -> int:
    """:func:`set_task_priority` inside the caller's transaction on ``conn`` (the console
    writes its audit row in the same one)."""
    try:
        rows = await run_query(conn, "set_task_priority",
                               {"task_id": task_id, "priority": priority})
    except pgerrors.NoDataFound as exc:
        raise TaskNotFound(f"task {task_id} not found") from exc
    except pgerrors.ObjectNotInPrerequisiteState as exc:
        status = exc.diag.message_detail or "ended"
        raise TaskFinished(
            f"task {task_id} has already ended ({status}); its priority cannot change",
            status=status,
        ) from exc
    return int(rows[0]["moved"])


async def list_tasks(
    store: Store,
    *,
    status: str | None = None,
    queue: str | None = None,
    before_id: int | None = None,
    limit: int = 20,
) -> list[Task]:
    """Tasks newest first, filtered by status and queue; ``before_id`` pages backwards."""
    return await store.fetch_as("list_tasks", {
        "status": status, "queue": queue, "before_id": before_id, "limit": limit,
    }, Task)


async def waits_for(store: Store, task_id: int) -> list[int]:
    """The unfinished tasks that ``task_id`` still waits for (its ``after``), in id order."""
    rows = await store.fetch_rows("task_waits_for", {"task_id": task_id})
    return [int(r["depends_on"]) for r in rows]


async def subtask_counts(store: Store, task_id: int) -> dict[str, int]:
    """A task's subtasks by status (``ready``, ``scheduled`` and ``waiting`` for its
    dependencies instead of ``pending``)."""
    rows = await store.fetch_rows("task_subtask_counts", {"task_id": task_id})
    return {r["status"]: int(r["count"]) for r in rows}


async def first_failure(store: Store, task_id: int) -> tuple[int, str | None] | None:
    """The first failed subtask of the task, in id order: ``(subtask id, error)``; None when
    none failed."""
    rows = await store.fetch_rows("task_first_failure", {"task_id": task_id})
    return (int(rows[0]["id"]), rows[0]["error"]) if rows else None
