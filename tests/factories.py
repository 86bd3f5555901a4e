"""Row factories with overridable fields, for arranging tests."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
from psycopg.types.json import Jsonb

from taskd.queue.store import Store

AnyConn = psycopg.AsyncConnection[Any]

# claim_subtasks's parameters for a claim from the head of the claim index (not resuming
# after an earlier claim), for tests that run the statement themselves.
CLAIM_FROM_HEAD = {"after_priority": None, "after_run_after": None, "after_id": None,
                   "suspect_after": 2,
                   "rate_limit": None, "rate_period": None}


async def submit(
    store: Store,
    count: int = 1,
    *,
    queue: str = "standard",
    kind: str = "noop",
    payload: dict[str, Any] | None = None,
    **options: Any,
) -> int:
    """A task of ``count`` subtasks through the real submit path; returns the task id."""
    payloads = [dict(payload or {}, n=i) for i in range(count)]
    return await store.submit(queue, kind, payloads, **options)


async def insert_subtasks(
    conn: AnyConn, count: int = 1, *, task_id: int | None = None, **fields: Any
) -> list[int]:
    """Insert subtasks directly with any column overridden (status, attempt, run_after...).

    Creates a task for them unless ``task_id`` is given. Returns the subtask ids.
    """
    queue = fields.setdefault("queue", "standard")
    kind = fields.setdefault("kind", "noop")
    if task_id is None:
        cur = await conn.execute(
            "INSERT INTO taskd.tasks (queue, kind, total) VALUES (%s, %s, %s) RETURNING id",
            (queue, kind, count),
        )
        row = await cur.fetchone()
        assert row is not None
        task_id = int(row[0])
    fields.setdefault("payload", {})
    columns = ["task_id", *fields]
    values = [task_id, *(Jsonb(v) if isinstance(v, (dict, list)) else v for v in fields.values())]
    ids = []
    for _ in range(count):
        cur = await conn.execute(
            psycopg.sql.SQL("INSERT INTO taskd.subtasks ({}) VALUES ({}) RETURNING id").format(
                psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, columns)),
                psycopg.sql.SQL(", ").join(psycopg.sql.Placeholder() * len(values)),
            ),
            values,
        )
        row = await cur.fetchone()
        assert row is not None
        ids.append(int(row[0]))
    if ids:  # as submit_task does: the task records its subtasks' id range
        await conn.execute(
            "UPDATE taskd.tasks SET first_subtask_id = least(first_subtask_id, %s),"
            " last_subtask_id = greatest(last_subtask_id, %s) WHERE id = %s",
            (min(ids), max(ids), task_id),
        )
    return ids


async def insert_error(
    conn: AnyConn, error_type: str, message: str, *, count: int = 1, **fields: Any
) -> None:
    """An error_logs row with any column overridden (stack_trace, queue, kind, times...)."""
    columns = ["error_type", "error_message", "count", *fields]
    await conn.execute(
        psycopg.sql.SQL("INSERT INTO taskd.error_logs ({}) VALUES ({})").format(
            psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, columns)),
            psycopg.sql.SQL(", ").join(psycopg.sql.Placeholder() * len(columns)),
        ),
        [error_type, message, count, *fields.values()],
    )


async def fetch_one(conn: AnyConn, query: str, *params: Any) -> Any:
    cur = await conn.execute(query, params)  # type: ignore[arg-type]
    row = await cur.fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


async def table_counts(conn: AnyConn) -> dict[str, int]:
    """Row counts of every taskd table, to show that rejected input wrote nothing."""
    counts = {}
    for table in ("tasks", "subtasks", "executors", "error_logs", "accounts", "quota_ledger"):
        counts[table] = await fetch_one(conn, f"SELECT count(*) FROM taskd.{table}")  # noqa: S608
    return counts


async def wait_until(condition: Callable[[], object], within: float = 10.0,
                     message: str = "condition") -> None:
    """Poll a condition another task or process makes true (where there is no event to await);
    ``condition`` may return an awaitable, e.g. a query. Fail the test after ``within`` s."""
    with anyio.move_on_after(within):
        while True:
            held = condition()
            if inspect.isawaitable(held):
                held = await held
            if held:
                return
            await anyio.sleep(0.005)
    raise AssertionError(f"{message} not met within {within:g} s")
