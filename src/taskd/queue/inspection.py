"""Reading what was submitted: for :func:`taskd.testing.assert_submitted`, on a service's own
connection (sync or async psycopg, inside its open transaction) or a
:class:`~taskd.queue.store.Store`; and the submitters' traceparents, for the executor's
tracing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

from taskd.queue.connection import run_query, translate_error, translated_errors
from taskd.queue.queries import query
from taskd.queue.store import Store
from taskd.types import JSON

# More tasks of one kind than a test looks through is a test that should filter by queue.
LIMIT = 1000


@dataclass(frozen=True, slots=True)
class SubmittedTask:
    """A task as its submitter gave it: where, what, and its subtasks' payloads in order."""

    id: int
    queue: str
    kind: str
    priority: int
    name: str
    params: dict[str, JSON]
    user_id: str | None
    traceparent: str | None
    payloads: list[dict[str, JSON]]


def _params(kind: str, queue: str | None) -> dict[str, Any]:
    return {"kind": kind, "queue": queue, "limit": LIMIT}


def submitted_tasks(
    conn: psycopg.Connection[Any], kind: str, queue: str | None = None
) -> list[SubmittedTask]:
    """The tasks of ``kind`` (on ``queue`` when given) that ``conn`` sees, oldest first."""
    cur = conn.cursor(row_factory=class_row(SubmittedTask))
    try:
        cur.execute(query("testing_submitted_tasks"), _params(kind, queue))
    except psycopg.Error as exc:
        raise translate_error(exc) from exc
    return cur.fetchall()


async def submitted_tasks_async(
    conn: psycopg.AsyncConnection[Any] | Store, kind: str, queue: str | None = None
) -> list[SubmittedTask]:
    """:func:`submitted_tasks` on an async connection or a store."""
    if isinstance(conn, Store):
        return await conn.fetch_as("testing_submitted_tasks", _params(kind, queue),
                                   SubmittedTask)
    async with translated_errors():
        return await run_query(conn, "testing_submitted_tasks", _params(kind, queue),
                               class_row(SubmittedTask))


async def task_traceparents(store: Store, task_ids: Iterable[int]) -> dict[int, str]:
    """The traceparents of these tasks, for those that have one (one query)."""
    ids = list(task_ids)
    if not ids:
        return {}
    rows = await store.fetch_rows("task_traceparents", {"task_ids": ids})
    return {row["id"]: row["traceparent"] for row in rows}
