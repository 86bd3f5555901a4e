"""The pending timeout's reads are bounded by the unstarted tasks, not by every unfinished one:
a long run of started-but-unfinished tasks at a queue's head (a backlog's big tasks part-way
done, long external jobs) is read past by neither the statistics pass nor the rescuer."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from taskd.queue import maintenance
from taskd.queue.queries import query
from taskd.queue.status import oldest_unstarted
from taskd.queue.store import Store
from tests import factories
from tests.plans import plan_nodes

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

AnyConn = psycopg.AsyncConnection[Any]

STARTED = 20_000

FILL = [
    """INSERT INTO taskd.tasks (id, queue, kind, status, total, created_at, updated_at,
                             first_subtask_id, last_subtask_id)
       OVERRIDING SYSTEM VALUE
       SELECT g, 'standard', 'noop', 'processing', 1,
              now() - interval '300 s' + g * interval '1 ms', now(), g, g
         FROM generate_series(1, %(n)s::bigint) g""",
    """INSERT INTO taskd.subtasks (id, task_id, queue, kind, status, payload, attempt,
                                locked_by, lease_expires_at, run_after, created_at,
                                started_at, updated_at)
       OVERRIDING SYSTEM VALUE
       SELECT t.id, t.id, 'standard', 'noop', 'processing', '{}', 1, 'gone',
              now() + interval '1 hour', t.created_at, t.created_at, now(), now()
         FROM taskd.tasks t""",
    "SELECT setval(pg_get_serial_sequence('taskd.tasks', 'id'), %(n)s::bigint)",
    "SELECT setval(pg_get_serial_sequence('taskd.subtasks', 'id'), %(n)s::bigint)",
]


def buffers(plan: dict[str, Any]) -> int:
    """Shared buffers the statement touched (its top node counts its children's)."""
    return int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


async def test_a_long_run_of_started_tasks_is_not_read_past(store: Store, conn: AnyConn) -> None:
    for statement in FILL:
        await conn.execute(statement, {"n": STARTED})
    waiting = await factories.submit(store, 2)
    await conn.execute("UPDATE taskd.tasks SET created_at = now() - interval '100 s'"
                       " WHERE id = %s", (waiting,))
    await conn.execute("UPDATE taskd.subtasks SET run_after = now() - interval '100 s'"
                       " WHERE task_id = %s", (waiting,))
    await conn.execute("VACUUM ANALYZE taskd.tasks")
    await conn.execute("VACUUM ANALYZE taskd.subtasks")

    # The answers: the one unstarted task, found behind 20,000 started ones.
    age = (await oldest_unstarted(store, ["standard"]))["standard"]
    assert 100 <= age < 160, age
    assert await maintenance.fail_unstarted_tasks(store, "standard", 3600.0) == []

    # The cost: a few pages, where reading past the started tasks touched 758 (statistics)
    # and 20,483 (the pending timeout) here.
    for name, params in (
        ("oldest_unstarted_tasks", {"queues": ["standard"]}),
        ("fail_unstarted_tasks", {"queue": "standard", "pending_timeout": 90.0, "limit": 100,
                                  "now": None}),
    ):
        await conn.execute("BEGIN")
        try:
            cur = await conn.execute(
                b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query(name).as_bytes(None),
                params)
            row = await cur.fetchone()
        finally:
            await conn.execute("ROLLBACK")  # fail_unstarted_tasks writes
        assert row is not None
        plan = (row[0] if isinstance(row[0], list) else json.loads(row[0]))[0]["Plan"]
        assert buffers(plan) < 200, (name, buffers(plan), json.dumps(plan)[:3000])
    assert [n for n in plan_nodes(plan) if n["Node Type"] == "Seq Scan"] == []

    assert await maintenance.fail_unstarted_tasks(store, "standard", 90.0) == [waiting]


async def test_a_retried_task_is_pending_again_only_if_nothing_of_it_ever_started(
    store: Store, conn: AnyConn
) -> None:
    never = await factories.submit(store, 2)
    ran = await factories.submit(store, 2, queue="other")
    timed_out = await maintenance.fail_unstarted_tasks(
        store, "standard", 60.0, now=await _later(conn, 120))
    assert timed_out == [never]
    claimed = await store.claim_subtasks("other", "x", 1, 60)
    await conn.execute("UPDATE taskd.subtasks SET status = 'failed', locked_by = NULL,"
                       " lease_expires_at = NULL, completed_at = now() WHERE task_id = %s",
                       (ran,))
    assert len(claimed) == 1
    for task in (never, ran):
        assert (await store.get_task(task)).status == "failed"  # type: ignore[union-attr]
        assert await store.retry_task(task) == 2
    assert (await store.get_task(never)).status == "pending"  # type: ignore[union-attr]
    assert (await store.get_task(ran)).status == "processing"  # type: ignore[union-attr]
    # The pending timeout finds the one nobody started again (its clock restarted at the retry).
    assert await maintenance.fail_unstarted_tasks(
        store, "standard", 60.0, now=await _later(conn, 120)) == [never]
    assert await maintenance.fail_unstarted_tasks(
        store, "other", 60.0, now=await _later(conn, 120)) == []


async def _later(conn: AnyConn, seconds: float) -> Any:
    cur = await conn.execute("SELECT now() + make_interval(secs => %s)", (seconds,))
    row = await cur.fetchone()
    assert row is not None
    return row[0]
