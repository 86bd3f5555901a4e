"""A task's subtasks are found by its id range (migration 0006): there is no index on
subtasks.task_id and no foreign key. Task-scoped statements see their own subtasks and no
others, even where two tasks' ranges overlap; they read the primary key, never the whole table;
deleting a task deletes its subtasks; a role with EXECUTE on submit_task alone can submit."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from taskd.queue.store import Store
from tests.factories import fetch_one, insert_subtasks, submit
from tests.plans import explain, plan_nodes

pytestmark = pytest.mark.anyio


async def _interleaved(conn: Any) -> tuple[int, list[int], list[int]]:
    """Two tasks whose subtasks' ids alternate, as concurrent submits can leave them."""
    first = await fetch_one(conn, "INSERT INTO taskd.tasks (queue, kind, total)"
                                  " VALUES ('standard', 'noop', 3) RETURNING id")
    second = await fetch_one(conn, "INSERT INTO taskd.tasks (queue, kind, total)"
                                   " VALUES ('standard', 'noop', 3) RETURNING id")
    ids: dict[int, list[int]] = {first: [], second: []}
    for _ in range(3):
        for task in (first, second):
            ids[task] += await insert_subtasks(conn, 1, task_id=task)
    return first, ids[first], ids[second]


async def test_submit_records_the_id_range_of_its_subtasks(store: Store, conn: Any) -> None:
    task = await submit(store, 5)
    first, last, ids = await fetch_one(
        conn, "SELECT t.first_subtask_id, t.last_subtask_id,"
              " (SELECT array_agg(id ORDER BY id) FROM taskd.subtasks WHERE task_id = t.id)"
              " FROM taskd.tasks t WHERE t.id = %s", task)
    assert (first, last) == (ids[0], ids[-1]) and len(ids) == 5


async def test_task_scoped_statements_see_only_their_own_subtasks_where_ranges_overlap(
    store: Store, conn: Any
) -> None:
    first, mine, theirs = await _interleaved(conn)
    assert min(theirs) < max(mine)  # the ranges overlap
    assert [s.id for s in await store.list_subtasks(first)] == mine
    assert [s.id for s in await store.list_subtasks(first, after_id=mine[0])] == mine[1:]
    await conn.execute("UPDATE taskd.subtasks SET status = 'failed', completed_at = now()"
                       " WHERE id = ANY(%s)", ([mine[0], theirs[0]],))
    assert await store.retry_task(first) == 1
    assert await store.cancel_task(first) == (3, 0)
    statuses = dict(await (await conn.execute(
        "SELECT id, status FROM taskd.subtasks ORDER BY id")).fetchall())
    assert [statuses[i] for i in mine] == ["cancelled"] * 3
    assert [statuses[i] for i in theirs] == ["failed", "pending", "pending"]


async def test_deleting_a_task_deletes_its_subtasks_and_no_others(conn: Any) -> None:
    first, mine, theirs = await _interleaved(conn)
    assert min(theirs) < max(mine)  # the ranges overlap
    await conn.execute("DELETE FROM taskd.tasks WHERE id = %s", (first,))
    left = [r[0] for r in await (await conn.execute(
        "SELECT id FROM taskd.subtasks ORDER BY id")).fetchall()]
    assert left == theirs


async def test_retention_deletes_finished_tasks_with_their_subtasks(
    store: Store, conn: Any
) -> None:
    done, running = await submit(store, 3), await submit(store, 2)
    await conn.execute("UPDATE taskd.subtasks SET status = 'completed', completed_at = now()"
                       " WHERE task_id = %s OR id = (SELECT min(id) FROM taskd.subtasks"
                       " WHERE task_id = %s)", (done, running))
    await conn.execute("UPDATE taskd.tasks SET completed_at = now() - interval '2 hours'"
                       " WHERE id = %s", (done,))
    # The task statement alone: its subtasks go with it, not through their own retention.
    deleted = await store.fetch_rows("delete_finished_tasks",
                                     {"retention": 3600, "limit": 100, "now": None})
    assert [r["id"] for r in deleted] == [done]
    counts = dict(await (await conn.execute(
        "SELECT task_id, count(*) FROM taskd.subtasks GROUP BY task_id")).fetchall())
    assert counts == {running: 2}


TASK_SCOPED = {
    # name: the parameters it takes
    "cancel_task": {"task_id": 1},
    "retry_failed_subtasks": {"task_id": 1},
    "list_subtasks": {"task_id": 1, "after_id": 0, "limit": 100},
    "api_list_subtasks": {"task_id": 1, "after_id": 0, "limit": 100, "status": None},
    "api_count_subtasks": {"task_id": 1, "status": None},
    "api_task_detail": {"id": 1, "results_limit": 100, "urls_limit": 1000},
    "task_subtask_counts": {"task_id": 1},
    "delete_finished_tasks": {"retention": 0.0, "limit": 100, "now": None},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASK_SCOPED))
async def test_task_scoped_statements_read_the_primary_key_not_the_table(
    conn: Any, name: str
) -> None:
    await conn.execute("""
        INSERT INTO taskd.tasks (queue, kind, total, status, completed, first_subtask_id,
                                 last_subtask_id)
        SELECT 'standard', 'noop', 1000, 'pending', 0, (g - 1) * 1000 + 1, g * 1000
          FROM generate_series(1, 200) AS g;
        INSERT INTO taskd.subtasks (task_id, queue, kind, status, attempt, completed_at)
        SELECT 1 + (g - 1) / 1000, 'standard', 'noop',
               CASE WHEN g % 2 = 0 THEN 'failed' ELSE 'completed' END, 1, now()
          FROM generate_series(1, 100000) AS g;
        -- half of them failed: the console's subtasks_failed_idx is no shortcut either
        -- and a backlog as long: the claim index is no shortcut to one task's rows
        INSERT INTO taskd.subtasks (task_id, queue, kind)
        SELECT 1 + (g - 1) / 1000, 'standard', 'noop' FROM generate_series(100001, 200000) AS g;
        ANALYZE taskd.subtasks;
        ANALYZE taskd.tasks;
    """)
    plan = await explain(conn, name, TASK_SCOPED[name])
    on_subtasks = [n for n in plan_nodes(plan) if n.get("Relation Name") == "subtasks"
                   and n["Node Type"].endswith("Scan")]
    assert on_subtasks, json.dumps(plan)
    assert all(n.get("Index Name") == "subtasks_pkey" for n in on_subtasks), json.dumps(plan)


def test_a_role_with_execute_on_submit_task_alone_can_submit(database_url: str) -> None:
    """submit_task runs as its owner: no INSERT on tasks or subtasks, no USAGE on sequences."""
    role = f"t{uuid.uuid4().hex[:8]}_submitter"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            admin.execute(sql.SQL("GRANT USAGE ON SCHEMA taskd TO {}").format(
                sql.Identifier(role)))
            admin.execute(sql.SQL(
                "GRANT EXECUTE ON FUNCTION taskd.submit_task(text, text, jsonb, text, integer,"
                " jsonb, integer, timestamptz, text, text, text, bigint[], text, text[])"
                " TO {}").format(
                sql.Identifier(role)))
            with psycopg.connect(database_url, user=role, autocommit=True) as submitter:
                row = submitter.execute(
                    "SELECT taskd.submit_task('standard', 'noop', '[{}, {}]',"
                    " notify_url => 'https://hooks.example/taskd')").fetchone()
                assert row is not None
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    submitter.execute("INSERT INTO taskd.tasks (queue, kind, total)"
                                      " VALUES ('standard', 'noop', 1)")
            assert admin.execute("SELECT total, last_subtask_id - first_subtask_id + 1"
                                 " FROM taskd.tasks WHERE id = %s", row).fetchone() == (2, 2)
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
