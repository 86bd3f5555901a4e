"""The operators' view (taskd.queue.status) against arranged rows in a real database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from taskd.queue import maintenance
from taskd.queue.status import list_errors, read_status
from taskd.queue.store import Store
from taskd.queue.tasks import list_tasks, subtask_counts
from taskd.types import ErrorOccurrence, ExecutorInfo, Outcome
from tests import factories

pytestmark = pytest.mark.anyio

DEAD_AFTER = 30.0


@dataclass(frozen=True)
class Cluster:
    standard_task: int
    lumina_task: int


async def arrange_cluster(
    store: Store, *, live: bool = True, dead_holds_lease: bool = False
) -> Cluster:
    """Three executors (exec-a, exec-b live unless ``live`` is false; exec-c dead) and known
    queue contents:

    standard: 10 subtasks; exec-a claimed 4 (2 completed, 1 failed, 1 processing), exec-b
    claimed 2 (1 retried an hour later, 1 processing) -> ready 4, scheduled 1, processing 2,
    completed 2, failed 1 in the last hour (3 finished within the minute).
    lumina: 3 subtasks delayed 600 s -> scheduled 3.
    error_logs: ValueError "bad n" x3 (standard), TimeoutError "slow" x1 (lumina).
    With ``dead_holds_lease``, exec-c claimed one more standard subtask before it died.
    """
    both = {"standard": 10, "lumina": 2}
    for name, host, concurrency in (("exec-a", "host-1", both), ("exec-b", "host-2", both),
                                    ("exec-c", "host-3", {"standard": 5})):
        await store.register_executor(ExecutorInfo(
            id=name, executor_group="default", hostname=host, pid=100, version="0.1.0",
            concurrency=concurrency, metrics_url=f"http://{host}:9464/metrics",
        ))
    standard = await factories.submit(store, 10, queue="standard")
    lumina = await factories.submit(store, 3, queue="lumina", kind="lumina", delay=600)
    a = await store.claim_subtasks("standard", "exec-a", 4, 60)
    b = await store.claim_subtasks("standard", "exec-b", 2, 60)
    if dead_holds_lease:
        await store.claim_subtasks("standard", "exec-c", 1, 60)
    applied = await store.record_outcomes("exec-a", [
        Outcome(a[0].id, a[0].attempt, "completed", result_json='{"ok": true}'),
        Outcome(a[1].id, a[1].attempt, "completed", result_json='{"ok": true}'),
        Outcome(a[2].id, a[2].attempt, "failed", error="ValueError: bad n",
                failure=ErrorOccurrence("ValueError", "bad n", queue="standard", kind="noop",
                                        count=3)),
    ])
    assert len(applied) == 3
    applied = await store.record_outcomes("exec-b", [
        Outcome(b[0].id, b[0].attempt, "retry", error="TimeoutError: slow", delay=3600,
                failure=ErrorOccurrence("TimeoutError", "slow", queue="lumina", kind="lumina")),
    ])
    assert len(applied) == 1
    # Move the clock past executor_dead_after: all three die; two heartbeat and come back.
    now = await store.database_now()
    dead = await maintenance.mark_dead_executors(store, DEAD_AFTER, now=now + timedelta(seconds=60))
    assert sorted(dead) == ["exec-a", "exec-b", "exec-c"]
    if live:
        for name in ("exec-a", "exec-b"):
            status = await store.heartbeat_executor(name, both, {"standard": 1})
            assert status == "running"
    return Cluster(standard, lumina)


async def test_status_reports_exactly_the_arranged_cluster(store: Store) -> None:
    await arrange_cluster(store)
    report = await read_status(store, dead_after=DEAD_AFTER)

    by_id = {e.id: e for e in report.executors}
    assert sorted(by_id) == ["exec-a", "exec-b", "exec-c"]
    assert [(e.status, e.alive, e.leases) for e in report.executors] == [
        ("running", True, 1), ("running", True, 1), ("dead", False, 0),
    ]
    assert by_id["exec-a"].queues["standard"].limit == 10
    assert by_id["exec-a"].queues["standard"].running == 1
    assert by_id["exec-a"].queues["lumina"].running == 0
    assert by_id["exec-c"].queues["standard"].limit == 5
    assert by_id["exec-b"].hostname == "host-2"

    queues = {q.queue: q for q in report.queues}
    standard, lumina = queues["standard"], queues["lumina"]
    assert (standard.ready, standard.scheduled, standard.processing) == (4, 1, 2)
    assert (standard.completed_last_hour, standard.failed_last_hour) == (2, 1)
    assert standard.rate_per_minute == {"1m": 3.0, "5m": 0.6, "15m": 0.2}
    assert standard.oldest_pending_seconds is not None
    assert 0 <= standard.oldest_pending_seconds < 60
    assert (lumina.ready, lumina.scheduled, lumina.processing) == (0, 3, 0)
    assert lumina.oldest_pending_seconds is None
    assert lumina.completed_last_hour == 0

    assert [(e.error_type, e.message, e.count) for e in report.errors] == [
        ("ValueError", "bad n", 3), ("TimeoutError", "slow", 1),
    ]
    assert report.database.server_version
    assert report.database.size_bytes > 0
    assert report.database.connections >= 1
    assert report.database.schema_version is not None and report.database.schema_version >= 1
    assert report.problems == []
    assert report.healthy


async def test_no_live_executor_with_pending_work_needs_attention(store: Store) -> None:
    await arrange_cluster(store, live=False)
    report = await read_status(store, dead_after=DEAD_AFTER)
    codes = sorted((p.code, p.queue or p.executor) for p in report.problems)
    # exec-a and exec-b died holding their processing subtasks' leases.
    assert codes == [
        ("dead_executor_holds_leases", "exec-a"), ("dead_executor_holds_leases", "exec-b"),
        ("no_live_executor", "lumina"), ("no_live_executor", "standard"),
    ]
    assert not report.healthy


async def test_dead_executor_holding_leases_needs_attention(store: Store) -> None:
    await arrange_cluster(store, dead_holds_lease=True)
    report = await read_status(store, dead_after=DEAD_AFTER)
    assert [(p.code, p.executor) for p in report.problems] == [
        ("dead_executor_holds_leases", "exec-c"),
    ]
    assert "holds 1 leases" in report.problems[0].message


async def test_running_executor_with_a_stale_heartbeat_is_not_live(store: Store) -> None:
    # It died with no peer left to mark it dead: its row still says running.
    await store.register_executor(ExecutorInfo("lonely", "default", "h", 1, "0.1.0"))
    await factories.submit(store, 2)
    now = await store.database_now()
    await store.heartbeat_executor("lonely", {"standard": 10}, {},
                                   now=now - timedelta(seconds=120))
    report = await read_status(store, dead_after=DEAD_AFTER)
    assert [(e.status, e.alive) for e in report.executors] == [("running", False)]
    assert [p.code for p in report.problems] == ["no_live_executor"]
    # The same executor heartbeating now serves the queue its concurrency names.
    await store.heartbeat_executor("lonely", {"standard": 10}, {})
    assert (await read_status(store, dead_after=DEAD_AFTER)).healthy


async def test_a_queue_is_served_only_by_executors_that_name_it(store: Store) -> None:
    """Executor groups route work: a live executor whose group does not serve a queue (its
    concurrency does not name it) leaves that queue's backlog unserved, and status says so."""
    await store.register_executor(ExecutorInfo("gpu-1", "gpu", "h1", 1, "0.1.0",
                                               concurrency={"render": 4}))
    await store.register_executor(ExecutorInfo("gpu-2", "gpu", "h2", 1, "0.1.0",
                                               concurrency={"render": 4}))
    await store.register_executor(ExecutorInfo("cpu-1", "default", "h3", 1, "0.1.0",
                                               concurrency={"render": 2, "standard": 10}))
    await store.register_executor(ExecutorInfo("idle", "spare", "h4", 1, "0.1.0"))
    await factories.submit(store, 2, queue="render")
    report = await read_status(store, dead_after=DEAD_AFTER)
    render = {q.queue: q for q in report.queues}["render"]
    assert render.groups == ["default", "gpu"]
    assert sorted(render.executors) == ["cpu-1", "gpu-1", "gpu-2"]
    assert report.healthy
    await factories.submit(store, 3, queue="batch")
    report = await read_status(store, dead_after=DEAD_AFTER)
    batch = {q.queue: q for q in report.queues}["batch"]
    assert (batch.groups, batch.executors) == ([], [])
    assert [(p.code, p.queue) for p in report.problems] == [("no_live_executor", "batch")]
    assert "no live executor serves it" in report.problems[0].message
    data = report.to_json()
    assert {q["queue"]: q["groups"] for q in data["queues"]} == {
        "batch": [], "render": ["default", "gpu"]}


async def test_status_counts_tasks_and_subtasks_by_status(store: Store) -> None:
    await arrange_cluster(store)
    report = await read_status(store, dead_after=DEAD_AFTER)
    assert report.tasks == {"pending": 1, "processing": 1, "completed": 0, "failed": 0,
                            "cancelled": 0}
    # standard: 4 ready + 1 scheduled, 2 processing, 2 completed, 1 failed; lumina: 3 pending.
    assert report.subtasks == {"pending": 8, "processing": 2, "completed": 2, "failed": 1,
                               "cancelled": 0}
    data = report.to_json()
    assert data["tasks"] == report.tasks and data["subtasks"] == report.subtasks


async def test_empty_database_is_healthy(store: Store) -> None:
    report = await read_status(store, dead_after=DEAD_AFTER)
    assert (report.executors, report.queues, report.errors, report.problems) == ([], [], [], [])
    data = report.to_json()
    assert sorted(data) == [
        "database", "errors", "executors", "format", "generated_at", "healthy",
        "notifications", "problems", "queues", "schedules", "storage", "subtasks", "tasks",
    ]
    assert data["notifications"] == {"undelivered": 0, "dead": 0,
                                     "oldest_undelivered_seconds": None}
    zero = {"pending": 0, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0}
    assert data["tasks"] == zero and data["subtasks"] == zero


async def test_status_json_shape_is_stable(store: Store) -> None:
    await arrange_cluster(store)
    data = (await read_status(store, dead_after=DEAD_AFTER)).to_json()
    assert data["format"] == 1 and data["healthy"] is True
    executor = data["executors"][0]
    assert sorted(executor) == [
        "alive", "group", "heartbeat_age_seconds", "hostname", "id", "leases", "metrics_url",
        "pid", "queues", "started_at", "status", "version",
    ]
    assert executor["queues"]["standard"] == {"limit": 10, "running": 1}
    assert sorted(data["queues"][0]) == [
        "completed_last_hour", "executors", "failed_last_hour", "groups",
        "oldest_pending_seconds", "oldest_unstarted_seconds", "paused", "paused_at",
        "paused_by", "processing", "queue", "rate_limit", "rate_per_minute",
        "rate_window_used", "ready", "scheduled", "unique_duplicates",
        "waiting_on_dependencies",
    ]
    assert sorted(data["errors"][0]) == [
        "count", "error_type", "first_occurred_at", "kind", "last_occurred_at", "message",
        "queue",
    ]
    assert sorted(data["database"]) == [
        "connections", "max_connections", "oldest_transaction_seconds", "schema_version",
        "server_version", "size_bytes", "subtasks_dead_tuples",
    ]
    storage = data["storage"]
    assert sorted(storage) == ["connections", "tables"]
    assert {"tasks", "subtasks", "executors"} <= set(storage["tables"])
    subtasks = storage["tables"]["subtasks"]
    assert sorted(subtasks) == [
        "dead_tuples", "indexes", "live_tuples", "size_bytes", "table", "vacuum_age_seconds",
        "vacuums",
    ]
    assert "subtasks_claim_idx" in subtasks["indexes"]
    assert storage["connections"].get("active", 0) >= 1


async def test_errors_newest_first_and_by_queue(store: Store, conn: Any) -> None:
    await factories.insert_error(conn, "A", "first", stack_trace="tb-a", queue="q1")
    await factories.insert_error(conn, "B", "second", queue="q2")
    rows = await list_errors(store)
    assert [(e.error_type, e.stack_trace) for e in rows] == [("B", None), ("A", "tb-a")]
    assert [e.error_type for e in await list_errors(store, queue="q1")] == ["A"]


async def test_tasks_list_filters_and_counts(store: Store) -> None:
    first = await factories.submit(store, 2, queue="standard")
    second = await factories.submit(store, 3, queue="lumina", kind="lumina", delay=600)
    assert [t.id for t in await list_tasks(store)] == [second, first]
    assert [t.id for t in await list_tasks(store, queue="standard")] == [first]
    assert [t.id for t in await list_tasks(store, before_id=second)] == [first]
    assert [t.id for t in await list_tasks(store, status="completed")] == []
    claimed = await store.claim_subtasks("standard", "x", 1, 60)
    await store.record_outcomes("x", [Outcome(claimed[0].id, 1, "failed", error="boom")])
    assert await subtask_counts(store, first) == {"failed": 1, "ready": 1}
    assert await subtask_counts(store, second) == {"scheduled": 3}
    assert [t.id for t in await list_tasks(store, status="processing")] == [first]
