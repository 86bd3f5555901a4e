"""The Scaler component alone against a real PostgreSQL: real Store, real Capacity objects,
an injected clock, and waits on conditions rather than sleeps."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import anyio
import pytest

from taskd.errors import InvalidInput
from taskd.executor.capacity import Capacity
from taskd.metrics import Metrics
from taskd.queue import ExecutorInfo, Outcome, Store, scaling
from taskd.scaler import Scaler
from taskd.settings import QueueSettings
from tests.factories import fetch_one, insert_subtasks, submit, wait_until
from tests.plans import explain, plan_nodes

pytestmark = pytest.mark.anyio

LEASE = 30.0
EXECUTOR = "scaler-test-1"
# Small numbers so that each step is visible: 2 -> 4 -> 6 -> 8 and back.
SMALL = QueueSettings(initial=2, max=8, step=2, scale_up_interval=10.0,
                      scale_down_interval=20.0)


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def register(store: Store, concurrency: dict[str, int]) -> None:
    await store.register_executor(
        ExecutorInfo(EXECUTOR, "default", "host-a", 1, "test", concurrency)
    )


async def row_concurrency(conn: Any) -> dict[str, int]:
    value: dict[str, int] = await fetch_one(
        conn, "SELECT concurrency FROM taskd.executors WHERE id = %s", EXECUTOR
    )
    return value


def adjustments(metrics: Metrics, queue: str, direction: str) -> float:
    value = metrics.registry.get_sample_value(
        "taskd_scaler_adjustments_total", {"queue": queue, "direction": direction}
    )
    return value or 0.0


def limit_gauge(metrics: Metrics, queue: str) -> float | None:
    return metrics.registry.get_sample_value(
        "taskd_queue_concurrency_limit", {"queue": queue}
    )


async def test_ready_backlog_counts_each_queue_in_one_query(store: Store, conn: Any) -> None:
    await submit(store, 5)
    await submit(store, 3, delay=3600)  # scheduled, not ready
    await submit(store, 4, queue="images")
    await insert_subtasks(conn, 2, status="processing", locked_by="e9", attempt=1)
    await insert_subtasks(conn, 2, status="completed", attempt=1)
    backlog = await scaling.ready_backlog(store, {"standard": 100, "images": 100, "empty": 100})
    assert backlog == {"standard": 5, "images": 4, "empty": 0}
    # Counting stops at the cap: past 2 * max + 1 no decision changes.
    assert await scaling.ready_backlog(store, {"standard": 3, "images": 100}) == {
        "standard": 3, "images": 4,
    }
    # The database clock decides what is ready; a later `now` sees the scheduled ones too.
    later = await store.database_now() + timedelta(hours=2)
    assert await scaling.ready_backlog(store, {"standard": 100}, now=later) == {"standard": 8}
    assert await scaling.ready_backlog(store, {}) == {}


async def test_ready_backlog_rejects_a_cap_below_one(store: Store) -> None:
    with pytest.raises(InvalidInput, match="'standard'"):
        await scaling.ready_backlog(store, {"standard": 0})


async def test_record_concurrency_writes_the_executor_row(store: Store, conn: Any) -> None:
    await register(store, {"standard": 2})
    assert await scaling.record_concurrency(store, EXECUTOR, {"standard": 6, "images": 1})
    assert await row_concurrency(conn) == {"standard": 6, "images": 1}
    assert not await scaling.record_concurrency(store, "nobody", {"standard": 6})


async def test_steps_up_to_max_then_back_to_initial(
    store: Store, conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskd.scaler")
    await register(store, {"standard": 2})
    task_id = await submit(store, 100)
    clock = FakeClock()
    capacity = Capacity(SMALL.initial)
    metrics = Metrics()
    scaler = Scaler(store, {"standard": capacity}, {"standard": SMALL}, 10.0, metrics, EXECUTOR,
                    clock=clock)

    limits = []
    for _ in range(5):
        decisions = await scaler.check_once()
        limits.append(capacity.limit)
        assert decisions["standard"].limit == capacity.limit
        clock.advance(SMALL.scale_up_interval)
    assert limits == [4, 6, 8, 8, 8]
    assert adjustments(metrics, "standard", "up") == 3
    assert limit_gauge(metrics, "standard") == 8
    assert await row_concurrency(conn) == {"standard": 8}
    # Counting stopped at 2 * max + 1 = 17 rows, and the log says so.
    assert ("queue standard scaled up to 4: backlog 17 > 2 * 2: 2 -> 4"
            " (backlog counted up to 17)") in caplog.messages

    # The backlog drains: 3 ready left, under 8 / 2.
    await conn.execute(
        "UPDATE taskd.subtasks SET status = 'cancelled', completed_at = now()"
        " WHERE task_id = %s AND id NOT IN (SELECT id FROM taskd.subtasks WHERE task_id = %s"
        " ORDER BY id LIMIT 3)", (task_id, task_id),
    )
    limits = []
    for _ in range(4):
        await scaler.check_once()
        limits.append(capacity.limit)
        clock.advance(SMALL.scale_down_interval)
    # 8 -> 6 (3 < 4), then 3 is not < 6 / 2: the limit holds there.
    assert limits == [6, 6, 6, 6]
    await conn.execute("UPDATE taskd.subtasks SET status = 'cancelled', completed_at = now()"
                       " WHERE status = 'pending'")
    limits = []
    for _ in range(3):
        await scaler.check_once()
        limits.append(capacity.limit)
        clock.advance(SMALL.scale_down_interval)
    assert limits == [4, 2, 2]
    assert adjustments(metrics, "standard", "down") == 3
    assert limit_gauge(metrics, "standard") == 2
    assert await row_concurrency(conn) == {"standard": 2}


async def test_each_direction_waits_for_its_interval(store: Store) -> None:
    await submit(store, 100)
    clock = FakeClock()
    capacity = Capacity(SMALL.initial)
    scaler = Scaler(store, {"standard": capacity}, {"standard": SMALL}, 10.0, Metrics(),
                    EXECUTOR, clock=clock)
    await scaler.check_once()
    assert capacity.limit == 4
    clock.advance(SMALL.scale_up_interval - 0.5)
    decisions = await scaler.check_once()
    assert capacity.limit == 4
    assert "scale_up_interval 10s" in decisions["standard"].reason
    clock.advance(0.5)
    await scaler.check_once()
    assert capacity.limit == 6


async def test_queues_scale_independently_from_one_backlog_query(
    store: Store, conn: Any
) -> None:
    await register(store, {})
    await submit(store, 50, queue="images")
    capacities = {"standard": Capacity(2), "images": Capacity(2)}
    metrics = Metrics()
    scaler = Scaler(store, capacities, {"standard": SMALL, "images": SMALL}, 10.0, metrics,
                    EXECUTOR, clock=FakeClock())
    decisions = await scaler.check_once()
    assert (capacities["standard"].limit, capacities["images"].limit) == (2, 4)
    assert decisions["standard"].direction is None
    assert "already at initial 2" in decisions["standard"].reason
    assert limit_gauge(metrics, "standard") == 2 and limit_gauge(metrics, "images") == 4
    assert await row_concurrency(conn) == {"standard": 2, "images": 4}


async def test_lowering_the_limit_never_stops_running_work(store: Store) -> None:
    # Eight handlers hold slots while the backlog vanishes; scaling down must leave them be.
    clock = FakeClock()
    capacity = Capacity(8)
    settings = QueueSettings(initial=2, max=8, step=6, scale_down_interval=1.0)
    scaler = Scaler(store, {"standard": capacity}, {"standard": settings}, 10.0, Metrics(),
                    EXECUTOR, clock=clock)
    finish = anyio.Event()
    finished: list[int] = []

    async def handler(n: int) -> None:
        try:
            await finish.wait()
            finished.append(n)
        finally:
            capacity.release()

    async with anyio.create_task_group() as tg:
        capacity.take(8)
        for n in range(8):
            tg.start_soon(handler, n)
        await scaler.check_once()
        assert (capacity.limit, capacity.running, capacity.free()) == (2, 8, 0)
        finish.set()
    assert sorted(finished) == list(range(8))
    assert (capacity.running, capacity.free()) == (0, 2)


async def test_run_checks_every_interval_and_publishes_limits(
    store: Store, conn: Any
) -> None:
    await register(store, {"standard": 2})
    await submit(store, 100)
    clock = FakeClock()
    capacity = Capacity(SMALL.initial)
    metrics = Metrics()
    scaler = Scaler(store, {"standard": capacity}, {"standard": SMALL}, 0.02, metrics,
                    EXECUTOR, clock=clock)
    checked = scaler.signals.checked
    checked.arm()
    async with anyio.create_task_group() as tg:
        tg.start_soon(scaler.run)
        await checked.wait()
        assert capacity.limit == 4
        # The injected clock has not moved: more checks, no second scale-up.
        for _ in range(4):
            await checked.wait()
        assert capacity.limit == 4
        clock.advance(SMALL.scale_up_interval)
        await wait_until(lambda: capacity.limit == 6)
        # The check that moved the limit writes the row before it signals; let one finish.
        checked.taken()
        await checked.wait()
        tg.cancel_scope.cancel()
    assert await row_concurrency(conn) == {"standard": 6}
    assert adjustments(metrics, "standard", "up") == 2


async def test_database_errors_are_logged_and_the_next_check_carries_on(
    database_url: str, conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault: another session holds an exclusive lock, so the backlog query runs into
    # its statement timeout. While it lasts no limit moves; after it the scaler goes on.
    store = await Store.open(database_url, statement_timeout=0.2)
    try:
        await register(store, {"standard": 2})
        await submit(store, 100)
        capacity = Capacity(SMALL.initial)
        scaler = Scaler(store, {"standard": capacity}, {"standard": SMALL}, 0.02, Metrics(),
                        EXECUTOR, clock=FakeClock())
        scaler.signals.checked.arm()
        scaler.signals.failed.arm()
        async with anyio.create_task_group() as tg:
            async with conn.transaction():
                await conn.execute("LOCK TABLE taskd.subtasks IN ACCESS EXCLUSIVE MODE")
                tg.start_soon(scaler.run)
                for _ in range(2):
                    await scaler.signals.failed.wait()
                assert capacity.limit == 2 and scaler.signals.checked.taken() == []
            await scaler.signals.checked.wait()
            tg.cancel_scope.cancel()
        assert capacity.limit == 4
        assert "scaler check failed" in caplog.text
    finally:
        await store.close()


async def test_a_failed_row_write_is_retried_at_the_next_check(
    database_url: str, conn: Any
) -> None:
    store = await Store.open(database_url, statement_timeout=0.2)
    try:
        await register(store, {"standard": 2})
        await submit(store, 100)
        capacity = Capacity(SMALL.initial)
        scaler = Scaler(store, {"standard": capacity}, {"standard": SMALL}, 10.0, Metrics(),
                        EXECUTOR, clock=FakeClock())
        async with conn.transaction():
            await conn.execute("LOCK TABLE taskd.executors IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(Exception, match="statement timeout"):
                await scaler.check_once()
        assert capacity.limit == 4  # the limit moved; only the row is behind
        assert await row_concurrency(conn) == {"standard": 2}
        await scaler.check_once()  # nothing to change, but the row is brought up to date
        assert await row_concurrency(conn) == {"standard": 4}
    finally:
        await store.close()


async def test_processing_rows_are_not_backlog(store: Store) -> None:
    # Only ready pending rows are backlog: claimed (processing) rows do not hold a limit up.
    task_id = await submit(store, 20)
    claimed = await store.claim_subtasks("standard", "e1", 20, LEASE)
    capacity = Capacity(8)
    scaler = Scaler(store, {"standard": capacity}, {"standard": SMALL}, 10.0, Metrics(),
                    EXECUTOR, clock=FakeClock())
    await scaler.check_once()
    assert capacity.limit == 6
    # Back to pending (retry now): 20 ready > 2 * 6.
    await store.record_outcomes("e1", [Outcome(c.id, 1, "retry", delay=0) for c in claimed])
    assert len(await store.list_subtasks(task_id)) == 20
    await scaler.check_once()
    assert capacity.limit == 8


async def test_bad_construction_is_named(store: Store) -> None:
    with pytest.raises(InvalidInput, match="'images'"):
        Scaler(store, {"images": Capacity(1)}, {"standard": SMALL}, 1.0, Metrics(), EXECUTOR)
    with pytest.raises(InvalidInput, match="interval"):
        Scaler(store, {}, {}, 0.0, Metrics(), EXECUTOR)


@pytest.mark.slow
async def test_backlog_query_reads_the_claim_index_not_the_table(
    store: Store, conn: Any
) -> None:
    # 300,000 pending rows of one queue; an empty queue beside it must not cost a table scan.
    await conn.execute("""
        INSERT INTO taskd.tasks (queue, kind, total) VALUES ('standard', 'noop', 100000);
        INSERT INTO taskd.subtasks (task_id, queue, kind)
        SELECT 1, 'standard', 'noop' FROM generate_series(1, 300000);
    """)
    await conn.execute("VACUUM ANALYZE taskd.subtasks")
    params = {"queues": ["standard", "lumina"], "caps": [101, 101], "now": None}
    plan = await explain(conn, "scaler_ready_backlog", params, analyze=True)
    on_subtasks = [n for n in plan_nodes(plan) if n.get("Relation Name") == "subtasks"]
    assert on_subtasks and all(n.get("Index Name") == "subtasks_claim_idx"
                               for n in on_subtasks), json.dumps(plan)
    # Each queue stopped at its cap: at most 101 rows read per queue.
    assert all(n["Actual Rows"] <= 101 for n in on_subtasks), json.dumps(plan)
    assert await scaling.ready_backlog(store, {"standard": 101, "lumina": 101}) == {
        "standard": 101, "lumina": 0,
    }
