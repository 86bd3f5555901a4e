"""StatsCollector against a real database: the cluster-wide gauges, and carrying on after
database errors."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import psycopg
import pytest

from taskd.cli.status import queue_control
from taskd.executor.stats import StatsCollector
from taskd.metrics import Metrics
from taskd.queue import maintenance
from taskd.queue.status import read_status
from taskd.queue.store import Store
from taskd.types import Outcome
from tests import factories
from tests.factories import wait_until
from tests.integration.test_status import arrange_cluster

pytestmark = pytest.mark.anyio

AnyConn = psycopg.AsyncConnection[Any]


def gauge(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_collect_sets_depth_oldest_and_executors(store: Store) -> None:
    await arrange_cluster(store)
    metrics = Metrics()
    collector = StatsCollector(store, metrics, 15, pool_max=10,
                               pending_timeouts={"standard": 600.0, "lumina": 0.0})
    await collector.collect()
    depth = {
        (q, s): gauge(metrics, "taskd_queue_depth", queue=q, status=s)
        for q in ("standard", "lumina") for s in ("ready", "scheduled", "processing")
    }
    assert depth == {
        ("standard", "ready"): 4, ("standard", "scheduled"): 1, ("standard", "processing"): 2,
        ("lumina", "ready"): 0, ("lumina", "scheduled"): 3, ("lumina", "processing"): 0,
    }
    oldest = gauge(metrics, "taskd_queue_oldest_pending_seconds", queue="standard")
    assert oldest is not None and 0 <= oldest < 60
    assert gauge(metrics, "taskd_queue_oldest_pending_seconds", queue="lumina") == 0
    executors = {s: gauge(metrics, "taskd_executors", status=s)
                 for s in ("running", "stopping", "stopped", "dead")}
    assert executors == {"running": 2, "stopping": 0, "stopped": 0, "dead": 1}
    assert gauge(metrics, "taskd_db_pool_connections", state="max") == 10
    used = gauge(metrics, "taskd_db_pool_connections", state="used")
    idle = gauge(metrics, "taskd_db_pool_connections", state="idle")
    assert used is not None and idle is not None and used + idle >= 1
    assert gauge(metrics, "taskd_db_pool_requests_waiting") == 0


async def test_a_drained_queue_goes_to_zero_not_stale(store: Store) -> None:
    task_id = await factories.submit(store, 2, queue="drain")
    metrics = Metrics()
    collector = StatsCollector(store, metrics, 15, pool_max=4)
    await collector.collect()
    assert gauge(metrics, "taskd_queue_depth", queue="drain", status="ready") == 2
    claimed = await store.claim_subtasks("drain", "x", 2, 60)
    await store.record_outcomes("x", [Outcome(c.id, c.attempt, "completed") for c in claimed])
    assert (await store.get_task(task_id)).status == "completed"  # type: ignore[union-attr]
    await collector.collect()
    assert gauge(metrics, "taskd_queue_depth", queue="drain", status="ready") == 0
    assert gauge(metrics, "taskd_queue_depth", queue="drain", status="processing") == 0
    assert gauge(metrics, "taskd_queue_oldest_pending_seconds", queue="drain") == 0


async def test_the_oldest_unstarted_task_is_what_the_pending_timeout_measures(
    store: Store, conn: AnyConn
) -> None:
    waiting = await factories.submit(store, 2, queue="waiting")
    await factories.submit(store, 2, queue="moving")
    # Both runnable for 100 s; one of "moving"'s subtasks has started, so its task never times
    # out and does not count, however old its other subtask is.
    await conn.execute("UPDATE taskd.subtasks SET run_after = now() - interval '100 seconds'")
    await conn.execute("UPDATE taskd.tasks SET created_at = now() - interval '100 seconds'")
    await store.claim_subtasks("moving", "x", 1, 60)
    metrics = Metrics()
    collector = StatsCollector(store, metrics, 15, pool_max=4)
    await collector.collect()
    age = gauge(metrics, "taskd_queue_oldest_unstarted_seconds", queue="waiting")
    assert age is not None and 100 <= age < 160, age
    assert gauge(metrics, "taskd_queue_oldest_unstarted_seconds", queue="moving") == 0
    # The rule agrees: the waiting task times out at a 90 s timeout, the moving one never.
    assert await maintenance.fail_unstarted_tasks(store, "waiting", 90.0) == [waiting]
    assert await maintenance.fail_unstarted_tasks(store, "moving", 90.0) == []


async def test_run_logs_database_errors_and_carries_on(
    store: Store, conn: AnyConn, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    collector = StatsCollector(store, metrics, 0.05, pool_max=4,
                               pending_timeouts={"standard": 600.0})
    # The stats query fails while its table is missing, then works again.
    await conn.execute("ALTER TABLE taskd.executors RENAME TO executors_away")
    caplog.set_level(logging.WARNING, logger="taskd.executor.stats")
    async with anyio.create_task_group() as tg:
        tg.start_soon(collector.run)
        await wait_until(
            lambda: sum("stats query failed" in r.getMessage() for r in caplog.records) >= 2
        )
        await factories.submit(store, 3)
        await conn.execute("ALTER TABLE taskd.executors_away RENAME TO executors")
        await wait_until(
            lambda: gauge(metrics, "taskd_queue_depth", queue="standard", status="ready") == 3
        )
        tg.cancel_scope.cancel()
    assert gauge(metrics, "taskd_queue_pending_timeout_seconds", queue="standard") == 600


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


@pytest.mark.slow
async def test_stats_query_never_scans_finished_rows(conn: AnyConn) -> None:
    # 200,000 finished rows and a small backlog: the query must read the backlog only.
    task = await factories.fetch_one(
        conn, "INSERT INTO taskd.tasks (queue, kind, total) VALUES ('standard', 'noop', 100000)"
              " RETURNING id")
    await conn.execute(
        "INSERT INTO taskd.subtasks (task_id, queue, kind, status, completed_at)"
        " SELECT %s, 'standard', 'noop', 'completed', now() - interval '2 hours'"
        " FROM generate_series(1, 200000)", (task,))
    await factories.insert_subtasks(conn, 5, task_id=task)
    await conn.execute("ANALYZE taskd.subtasks")
    from taskd.queue.queries import query

    cur = await conn.execute(b"EXPLAIN (FORMAT JSON) " + query("stats_snapshot").as_bytes(None))
    row = await cur.fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    scans = [n for n in _plan_nodes(plan[0]["Plan"]) if n.get("Relation Name") == "subtasks"]
    assert scans, plan
    assert all(n["Node Type"] != "Seq Scan" for n in scans), [n["Node Type"] for n in scans]


async def test_storage_gauges_follow_churn_and_vacuum(store: Store, conn: AnyConn) -> None:
    # Claim and complete 50 subtasks: every claim and completion leaves a dead row version.
    await factories.submit(store, 50, queue="churn")
    claimed = await store.claim_subtasks("churn", "x", 50, 60)
    await store.record_outcomes("x", [Outcome(c.id, c.attempt, "completed") for c in claimed])
    metrics = Metrics()
    collector = StatsCollector(store, metrics, 15, pool_max=4)

    async def dead() -> float:
        await collector.collect()
        return gauge(metrics, "taskd_table_dead_tuples", table="subtasks") or 0.0

    # The statistics reach the views when each backend flushes them (within about a second).
    await wait_until(lambda: _at_least(dead(), 50), within=15, message="dead tuples counted")
    assert (gauge(metrics, "taskd_table_live_tuples", table="subtasks") or 0) >= 50
    assert (gauge(metrics, "taskd_table_size_bytes", table="subtasks") or 0) >= 8192
    claim_index = gauge(metrics, "taskd_index_size_bytes", table="subtasks",
                        index="subtasks_claim_idx")
    assert claim_index is not None and claim_index >= 8192
    assert gauge(metrics, "taskd_index_size_bytes", table="tasks", index="tasks_pkey")
    # This collector's own session runs the query: at least one active connection.
    assert (gauge(metrics, "taskd_db_connections", state="active") or 0) >= 1
    before = gauge(metrics, "taskd_table_vacuums", table="subtasks") or 0.0
    await conn.execute("VACUUM taskd.subtasks")

    async def vacuumed() -> bool:
        await collector.collect()
        return (gauge(metrics, "taskd_table_vacuums", table="subtasks") or 0) == before + 1

    await wait_until(vacuumed, within=15, message="the vacuum counted")
    age = gauge(metrics, "taskd_table_seconds_since_vacuum", table="subtasks")
    assert age is not None and 0 <= age < 15, age


async def _at_least(value: Any, floor: float) -> bool:
    return bool(await value >= floor)


async def test_storage_query_reads_no_table(conn: AnyConn) -> None:
    # Statistics views and file sizes only: the plan touches no taskd relation.
    from taskd.queue.queries import query

    cur = await conn.execute(b"EXPLAIN (FORMAT JSON) " + query("table_health").as_bytes(None))
    row = await cur.fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    relations = {n["Relation Name"] for n in _plan_nodes(plan[0]["Plan"])
                 if "Relation Name" in n}
    assert relations and not relations & {"subtasks", "tasks", "executors"}, relations


async def test_unique_key_duplicates_from_sql_are_counted_once_across_daemons(
    store: Store, conn: AnyConn
) -> None:
    """SQL submissions pass no daemon: the duplicates their unique keys turn away are counted
    in the database, and every daemon's statistics pass exports the same totals."""
    submit = ("SELECT taskd.submit_task(%s, 'noop', '[{}]'::jsonb, unique_key => %s)")
    first = await factories.fetch_one(conn, submit, "standard", "order-1")
    for _ in range(3):
        assert await factories.fetch_one(conn, submit, "standard", "order-1") == first
    await factories.fetch_one(conn, submit, "lumina", "order-2")
    await factories.fetch_one(conn, submit, "lumina", "order-2")
    # A duplicate in a transaction rolled back never happened.
    async with conn.transaction(force_rollback=True):
        await conn.execute(submit, ["standard", "order-1"])
    metrics, other = Metrics(), Metrics()
    await StatsCollector(store, metrics, 15, pool_max=4).collect()
    assert gauge(metrics, "taskd_unique_duplicates_total", queue="standard") == 3
    assert gauge(metrics, "taskd_unique_duplicates_total", queue="lumina") == 1
    # Folded into the totals: a second daemon reads the same, and the deltas are gone.
    assert await factories.fetch_one(
        conn, "SELECT count(*) FROM taskd.queue_counter_deltas") == 0
    collector = StatsCollector(store, other, 15, pool_max=4)
    await collector.collect()
    assert gauge(other, "taskd_unique_duplicates_total", queue="standard") == 3
    await factories.fetch_one(conn, submit, "standard", "order-1")
    await collector.collect()
    await collector.collect()
    assert gauge(other, "taskd_unique_duplicates_total", queue="standard") == 4
    # A task of its own, not a duplicate: nothing counted.
    await factories.fetch_one(conn, submit, "standard", "order-3")
    await collector.collect()
    assert gauge(other, "taskd_unique_duplicates_total", queue="standard") == 4


async def test_tasks_waiting_on_dependencies_are_counted_until_released(
    store: Store, conn: AnyConn
) -> None:
    first = await factories.submit(store, 1, queue="flow")
    after = "SELECT taskd.submit_task('flow', 'noop', '[{}]'::jsonb, after => %s::bigint[])"
    await factories.fetch_one(conn, after, [first])
    await factories.fetch_one(conn, after, [first])
    metrics = Metrics()
    collector = StatsCollector(store, metrics, 15, pool_max=4)
    await collector.collect()
    assert gauge(metrics, "taskd_tasks_waiting_on_dependencies", queue="flow") == 2
    claimed = await store.claim_subtasks("flow", "x", 10, 60)
    assert [c.task_id for c in claimed] == [first]
    await store.record_outcomes("x", [Outcome(c.id, c.attempt, "completed") for c in claimed])
    await collector.collect()
    assert gauge(metrics, "taskd_tasks_waiting_on_dependencies", queue="flow") == 0
    assert gauge(metrics, "taskd_queue_depth", queue="flow", status="ready") == 2


async def test_taskd_status_shows_dependencies_and_duplicates(
    store: Store, conn: AnyConn
) -> None:
    first = await factories.submit(store, 1, queue="flow")
    await factories.fetch_one(conn, "SELECT taskd.submit_task('flow', 'noop', '[{}]'::jsonb,"
                                    " after => %s::bigint[], unique_key => 'u')", [first])
    await factories.fetch_one(conn, "SELECT taskd.submit_task('flow', 'noop', '[{}]'::jsonb,"
                                    " after => %s::bigint[], unique_key => 'u')", [first])
    report = await read_status(store, dead_after=30)
    [flow] = [q for q in report.queues if q.queue == "flow"]
    assert (flow.waiting_on_dependencies, flow.unique_duplicates) == (1, 1)
    assert queue_control(flow) == "1 waiting on dependencies; 1 unique duplicates"
    data = report.to_json()
    [row] = [q for q in data["queues"] if q["queue"] == "flow"]
    assert (row["waiting_on_dependencies"], row["unique_duplicates"]) == (1, 1)
