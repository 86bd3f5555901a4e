"""The completer against a real database: flushes, batches and the metrics they count."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest

from taskd.executor.completer import Completer, CompleterConfig
from taskd.metrics import Metrics
from taskd.queue import Outcome
from taskd.queue.store import Store
from tests.factories import fetch_one, submit, wait_until

pytestmark = pytest.mark.anyio

EXECUTOR = "completer-test"
LEASE = 60.0


@asynccontextmanager
async def holding_row(database_url: str, subtask_id: int) -> AsyncIterator[Any]:
    """A connection of its own holding the subtask's row locked (a write to it waits), until
    it rolls back or leaves."""
    async with await psycopg.AsyncConnection.connect(database_url) as holder:
        await holder.execute("SELECT 1 FROM taskd.subtasks WHERE id = %s FOR UPDATE",
                             [subtask_id])
        yield holder


async def a_write_waits_for_a_lock(conn: Any) -> None:
    await wait_until(lambda: fetch_one(conn, """
        SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'"""),
        message="run()'s write waiting for the row")


async def test_a_flush_waits_for_the_write_already_in_flight(
    database_url: str, store: Store, conn: Any
) -> None:
    # Shutdown flushes while run() may be writing: "flushed" must mean written.
    await submit(store, 1)
    [claimed] = await store.claim_subtasks("standard", EXECUTOR, 1, LEASE)
    completer = Completer(store, EXECUTOR, Metrics())
    seen_after_flush: list[Any] = []
    # Hold the row so that run()'s write waits in the database.
    async with holding_row(database_url, claimed.id) as holder:
        async with anyio.create_task_group() as tg:
            tg.start_soon(completer.run)
            completer.add("standard", Outcome(claimed.id, claimed.attempt, "completed", "{}"))
            await a_write_waits_for_a_lock(conn)

            async def flush() -> None:
                await completer.flush()
                seen_after_flush.append(await fetch_one(
                    conn, "SELECT status FROM taskd.subtasks WHERE id = %s", claimed.id))

            tg.start_soon(flush)
            await holder.rollback()  # let the write through
            await wait_until(lambda: seen_after_flush, message="flush returned")
            tg.cancel_scope.cancel()
    assert seen_after_flush == ["completed"]


async def test_outcomes_are_counted_by_queue_and_outcome_once_written(
    store: Store, conn: Any
) -> None:
    await submit(store, 3)
    claimed = await store.claim_subtasks("standard", EXECUTOR, 3, LEASE)
    metrics = Metrics()
    completer = Completer(store, EXECUTOR, metrics)
    completer.add("standard", Outcome(claimed[0].id, 1, "completed", "{}"))
    completer.add("standard", Outcome(claimed[1].id, 1, "completed", "{}"))
    completer.add("standard", Outcome(claimed[2].id, 1, "failed", error="no"))
    completer.add("standard", Outcome(claimed[2].id + 1000, 1, "completed", "{}"))  # not held
    await completer.flush()

    def finished(outcome: str) -> float | None:
        return metrics.registry.get_sample_value(
            "taskd_subtasks_finished_total", {"queue": "standard", "outcome": outcome})

    assert (finished("completed"), finished("failed")) == (2.0, 1.0)
    assert metrics.registry.get_sample_value(
        "taskd_leases_lost_total", {"queue": "standard"}) == 1.0
    assert await fetch_one(conn, "SELECT completed, failed FROM taskd.tasks") == (2, 1)


async def test_a_failed_write_is_logged_and_retried_until_it_lands(
    database_url: str, store: Store, conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await submit(store, 1)
    [claimed] = await store.claim_subtasks("standard", EXECUTOR, 1, LEASE)
    # A real failure: the row is held, and this store's statements time out after 0.2 s.
    impatient = await Store.open(database_url, statement_timeout=0.2)
    completer = Completer(impatient, EXECUTOR, Metrics(), CompleterConfig(max_backoff=0.2))
    try:
        async with await psycopg.AsyncConnection.connect(database_url) as holder:
            await holder.execute("SELECT 1 FROM taskd.subtasks WHERE id = %s FOR UPDATE",
                                 [claimed.id])
            async with anyio.create_task_group() as tg:
                tg.start_soon(completer.run)
                completer.add("standard", Outcome(claimed.id, claimed.attempt, "completed"))
                await wait_until(lambda: sum(
                    "writing 1 outcomes failed, retrying" in r.getMessage()
                    for r in caplog.records) >= 2, message="two failed tries, both logged")
                await holder.rollback()  # the database answers again
                await wait_until(lambda: fetch_one(
                    conn, "SELECT status = 'completed' FROM taskd.subtasks WHERE id = %s",
                    claimed.id), message="the outcome written")
                tg.cancel_scope.cancel()
    finally:
        await impatient.close()
    assert "canceling statement due to statement timeout" in caplog.text


async def test_producers_wait_for_room_while_the_backlog_is_full_and_batches_keep_order(
    store: Store, conn: Any
) -> None:
    await submit(store, 5)
    claimed = await store.claim_subtasks("standard", EXECUTOR, 5, LEASE)
    completer = Completer(store, EXECUTOR, Metrics(),
                          CompleterConfig(batch_size=2, max_backlog=3))
    for subtask in claimed:
        completer.add("standard", Outcome(subtask.id, subtask.attempt, "completed", "{}"))
    assert completer.backlog == 5
    written: list[int] = []
    write = completer._write

    async def recording(batch: Any) -> None:
        written.extend(outcome.subtask_id for _, outcome in batch)
        await write(batch)

    completer._write = recording  # type: ignore[method-assign]
    room = anyio.Event()

    async def wait_for_room() -> None:
        await completer.wait_for_room()
        room.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_for_room)
        await anyio.wait_all_tasks_blocked()
        assert not room.is_set()  # 5 outcomes waiting, room below 3
        await completer.flush()  # 2, 2, then 1: the waiter has room after the first
        with anyio.fail_after(10):
            await room.wait()
    assert completer.backlog == 0
    assert written == [s.id for s in claimed]
    assert await fetch_one(
        conn, "SELECT count(*) FROM taskd.subtasks WHERE status = 'completed'") == 5


async def test_run_writes_outcomes_added_during_a_write_and_after_the_buffer_emptied(
    database_url: str, store: Store, conn: Any
) -> None:
    """An outcome added while a write is in flight, and one added after everything was
    written (the wake-up made anew), are written all the same."""
    await submit(store, 3)
    first, second, third = await store.claim_subtasks("standard", EXECUTOR, 3, LEASE)
    completer = Completer(store, EXECUTOR, Metrics())

    async def status(subtask_id: int) -> Any:
        return await fetch_one(conn, "SELECT status FROM taskd.subtasks WHERE id = %s",
                               subtask_id)

    async def is_completed(subtask_id: int) -> bool:
        return await status(subtask_id) == "completed"

    async with holding_row(database_url, first.id) as holder:
        async with anyio.create_task_group() as tg:
            tg.start_soon(completer.run)
            completer.add("standard", Outcome(first.id, first.attempt, "completed", "{}"))
            await a_write_waits_for_a_lock(conn)
            completer.add("standard", Outcome(second.id, second.attempt, "completed", "{}"))
            await holder.rollback()
            await wait_until(lambda: is_completed(second.id),
                             message="the outcome added during the write written")
            assert completer.backlog == 0
            completer.add("standard", Outcome(third.id, third.attempt, "completed", "{}"))
            await wait_until(lambda: is_completed(third.id),
                             message="the outcome added after the buffer emptied written")
            tg.cancel_scope.cancel()
    assert await status(first.id) == "completed"
