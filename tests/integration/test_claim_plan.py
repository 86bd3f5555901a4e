"""Plans of the hot statements: the claim uses its partial index, however many finished rows
the table holds, and pooled connections plan every run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskd.queue.queries import query
from taskd.queue.store import Store
from tests.factories import CLAIM_FROM_HEAD
from tests.plans import explain, nested_plans, plan_nodes

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _million_finished_and_500_pending(conn: Any) -> None:
    """A million finished subtasks and 500 pending ones of priorities 0 to 6 (g % 7)."""
    await conn.execute("""
        INSERT INTO taskd.tasks (queue, kind, total, status, completed)
        SELECT 'standard', 'noop', 100000, 'completed', 100000 FROM generate_series(1, 10);
        INSERT INTO taskd.subtasks (task_id, queue, kind, status, attempt, completed_at)
        SELECT 1 + (g % 10), 'standard', 'noop', 'completed', 1, now()
          FROM generate_series(1, 1000000) AS g;
        INSERT INTO taskd.tasks (queue, kind, total) VALUES ('standard', 'noop', 500);
        INSERT INTO taskd.subtasks (task_id, queue, kind, priority)
        SELECT 11, 'standard', 'noop', g % 7 FROM generate_series(1, 500) AS g;
        ANALYZE taskd.subtasks;
        ANALYZE taskd.tasks;
    """)


async def test_claim_uses_partial_index_with_a_million_finished_rows(conn: Any) -> None:
    await _million_finished_and_500_pending(conn)
    params = {"queue": "standard", "executor_id": "e1", "limit": 100, "lease_timeout": 60.0,
              "cluster_max": None, "now": None, **CLAIM_FROM_HEAD}
    plan = await explain(conn, "claim_subtasks", params)
    nodes = plan_nodes(plan)
    on_subtasks = [n for n in nodes if n.get("Relation Name") == "subtasks"]
    assert not [n for n in on_subtasks if n["Node Type"] == "Seq Scan"], json.dumps(plan)
    assert any(n.get("Index Name") == "subtasks_claim_idx" for n in nodes), json.dumps(plan)
    # And the claim really works on that table: 100 rows, highest priority first.
    cur = await conn.execute(query("claim_subtasks"), params)
    claimed = await cur.fetchall()
    assert len(claimed) == 100
    # 71 rows of priority 6 exist among the 500 (g % 7 = 6), then priority 5 fills the batch.
    assert sorted((row[4] for row in claimed), reverse=True) == [6] * 71 + [5] * 29


async def test_the_claim_function_keeps_to_the_index_in_its_generic_plan(conn: Any) -> None:
    """taskd.claim_subtasks (version 27) plans once a session for any arguments: from the
    claim index's head, and from a resume point, its plan never scans the table."""
    await _million_finished_and_500_pending(conn)
    params = {"queue": "standard", "executor_id": "e1", "limit": 100, "lease_timeout": 60.0,
              "now": None, **CLAIM_FROM_HEAD}
    cur = await conn.execute(query("claim_subtasks_plain"), params)
    first = await cur.fetchall()
    # 71 rows of priority 6 exist among the 500 (g % 7 = 6), then priority 5 fills the batch.
    assert [row[4] for row in first] == [6] * 71 + [5] * 29
    last = first[-1]
    resumed = {**params, "after_priority": last[4], "after_run_after": last[9],
               "after_id": last[0]}
    plans = [*await nested_plans(conn, "claim_subtasks_plain", params, "SKIP LOCKED"),
             *await nested_plans(conn, "claim_subtasks_plain", resumed, "SKIP LOCKED")]
    assert len(plans) == 2
    for plan in plans:
        nodes = plan_nodes(plan)
        on_subtasks = [n for n in nodes if n.get("Relation Name") == "subtasks"]
        assert not [n for n in on_subtasks if n["Node Type"] == "Seq Scan"], json.dumps(plan)
        assert any(n.get("Index Name") == "subtasks_claim_idx" for n in nodes), json.dumps(plan)
    cur = await conn.execute("SELECT priority, count(*) FROM taskd.subtasks"
                             " WHERE status = 'processing' GROUP BY 1 ORDER BY 1 DESC")
    # 300 claimed in all, in priority order (g % 7: 71 rows of 6, 5 and 4, 72 of 3).
    assert await cur.fetchall() == [(6, 71), (5, 71), (4, 71), (3, 72), (2, 15)]


async def test_plans_kept_from_a_small_table_keep_to_the_indexes_as_it_grows(conn: Any) -> None:
    """The claim and the completion functions keep the plans of their first call a session
    until the tables' statistics change. Made while subtasks held 3 rows, they found rows by
    sequential scans and kept on as the table grew to 50,000 (17 and 14 ms for 10 rows instead
    of ~1.5 and ~1), until an ANALYZE."""
    params = {"queue": "standard", "executor_id": "e1", "limit": 10, "lease_timeout": 60.0,
              "now": None, **CLAIM_FROM_HEAD}

    async def outcomes(claimed: list[tuple[Any, ...]]) -> dict[str, Any]:
        batch = ",".join(f'{{"id":{r[0]},"attempt":{r[7]},"verdict":"completed"}}'
                         for r in claimed)
        return {"executor_id": "e1", "outcomes": f"[{batch}]", "now": None}

    await conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}, {}, {}]')")
    cur = await conn.execute(query("claim_subtasks_plain"), params)
    await conn.execute(query("record_outcomes"), await outcomes(await cur.fetchall()))
    # No ANALYZE: the plans made on 3 rows stay (the CI server runs without autovacuum).
    await conn.execute("SELECT taskd.submit_task('standard', 'noop', (SELECT jsonb_agg("
                       "jsonb_build_object('n', g)) FROM generate_series(1, 25) AS g))"
                       " FROM generate_series(1, 2000)")
    claim_plans = await nested_plans(conn, "claim_subtasks_plain", params, "")
    cur = await conn.execute(query("claim_subtasks_plain"), params)
    claimed = await cur.fetchall()
    assert len(claimed) == 10
    record_plans = await nested_plans(conn, "record_outcomes", await outcomes(claimed), "")
    assert claim_plans and record_plans
    for plan in claim_plans + record_plans:
        nodes = plan_nodes(plan)
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"
                    and n["Relation Name"] == "subtasks"], json.dumps(plan)


async def test_the_counter_trigger_keeps_the_servers_sequential_scans(conn: Any) -> None:
    """Fired inside the claim and the completion (enable_seqscan = off), the counter trigger
    read tasks through a whole index scan in place of a sequential one, and kept that plan:
    bench ceiling's PostgreSQL CPU a subtask 53-60 -> 61-65 us as dead index entries grew."""
    await conn.execute("SELECT taskd.submit_task('standard', 'noop', (SELECT jsonb_agg("
                       "jsonb_build_object('n', g)) FROM generate_series(1, 1000) AS g))"
                       " FROM generate_series(1, 10)")
    params = {"queue": "standard", "executor_id": "e1", "limit": 1000, "lease_timeout": 60.0,
              "now": None, **CLAIM_FROM_HEAD}
    plans = await nested_plans(conn, "claim_subtasks_plain", params, "")
    cur = await conn.execute("SELECT id, attempt FROM taskd.subtasks WHERE status = 'processing'")
    batch = ",".join(f'{{"id":{i},"attempt":{a},"verdict":"completed"}}'
                     for i, a in await cur.fetchall())
    plans += await nested_plans(conn, "record_outcomes", {
        "executor_id": "e1", "outcomes": f"[{batch}]", "now": None}, "")
    assert len(plans) >= 4  # each function's statement and the trigger's
    for plan in plans:
        assert not [n for n in plan_nodes(plan) if n["Node Type"] == "Index Scan"
                    and "Index Cond" not in n], json.dumps(plan)


async def test_pooled_connections_plan_each_run_and_keep_the_options_given(
    database_url: str,
) -> None:
    # A prepared statement's generic plan joined 250 outcomes to their rows in a nested loop.
    store = await Store.open(f"{database_url} options='-c work_mem=7MB'", statement_timeout=12)
    try:
        async with store.pool.connection() as conn:
            settings = {}
            for name in ("plan_cache_mode", "work_mem", "statement_timeout"):
                cur = await conn.execute(f"SHOW {name}")  # type: ignore[arg-type]
                settings[name] = (await cur.fetchone())[0]
    finally:
        await store.close()
    assert settings == {"plan_cache_mode": "force_custom_plan", "work_mem": "7MB",
                        "statement_timeout": "12s"}
