"""The rescuer's statements on a real database: the pending timeout is a rule about tasks.

A task that nobody started within ``pending_timeout`` of becoming runnable fails as a whole;
a task with any subtask started never does. Time moves through the ``now`` parameter (the
database clock plus an offset).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest

from taskd.queue import Outcome, Store, maintenance
from taskd.queue.accounts import ApiStore, NewTask
from tests.factories import fetch_one, submit

pytestmark = pytest.mark.anyio

TIMEOUT = 600.0
MESSAGE = "timed out waiting: nobody started it within 600 s"


async def statuses(conn: Any, task_id: int) -> list[str]:
    cur = await conn.execute(
        "SELECT s.status FROM taskd.subtasks s JOIN taskd.tasks t ON s.task_id = t.id"
        " WHERE t.id = %s ORDER BY s.id", (task_id,))
    return [status for (status,) in await cur.fetchall()]


async def after(store: Store, seconds: float) -> datetime:
    return await store.database_now() + timedelta(seconds=seconds)


async def test_a_task_nobody_started_fails_as_a_whole_and_is_counted(
    store: Store, conn: Any
) -> None:
    task = await submit(store, 3)
    assert await maintenance.fail_unstarted_tasks(
        store, "standard", TIMEOUT, now=await after(store, TIMEOUT - 5)) == []
    assert await maintenance.fail_unstarted_tasks(
        store, "standard", TIMEOUT, now=await after(store, TIMEOUT + 5)) == [task]
    assert await statuses(conn, task) == ["failed"] * 3
    row = await fetch_one(conn, "SELECT status, failed FROM taskd.tasks WHERE id = %s", task)
    assert row == ("failed", 3)
    errors = await fetch_one(conn, "SELECT DISTINCT error FROM taskd.subtasks")
    assert errors == MESSAGE
    logged = await fetch_one(conn, "SELECT error_type, error_message, count, queue, kind"
                                   " FROM taskd.error_logs")
    assert logged == ("PendingTimeout", MESSAGE, 1, "standard", "noop")


async def test_a_task_with_any_subtask_started_is_never_timed_out(
    store: Store, conn: Any
) -> None:
    # Three of six done, the backlog tail waiting: it is progressing.
    task = await submit(store, 6)
    claimed = await store.claim_subtasks("standard", "e1", 3, 60)
    await store.record_outcomes("e1", [Outcome(c.id, c.attempt, "completed") for c in claimed])
    far = await after(store, 10 * TIMEOUT)
    assert await maintenance.fail_unstarted_tasks(store, "standard", TIMEOUT, now=far) == []
    assert await statuses(conn, task) == ["completed"] * 3 + ["pending"] * 3


async def test_a_retry_of_a_started_subtask_keeps_its_task_safe(store: Store, conn: Any) -> None:
    # An attempt failed, its retry waits its backoff: the task started long ago.
    task = await submit(store, 1, max_attempts=5)
    [claimed] = await store.claim_subtasks("standard", "e1", 1, 60)
    await store.record_outcomes("e1", [Outcome(claimed.id, 1, "retry", error="x", delay=1)])
    far = await after(store, 10 * TIMEOUT)
    assert await maintenance.fail_unstarted_tasks(store, "standard", TIMEOUT, now=far) == []
    assert await statuses(conn, task) == ["pending"]


async def test_a_task_scheduled_ahead_waits_from_when_it_becomes_runnable(
    store: Store, conn: Any
) -> None:
    task = await submit(store, 2, delay=20)
    # Due in 20 s: not failed 600 s after its creation, only 600 s after it became due.
    assert await maintenance.fail_unstarted_tasks(
        store, "standard", TIMEOUT, now=await after(store, TIMEOUT + 5)) == []
    assert await maintenance.fail_unstarted_tasks(
        store, "standard", TIMEOUT, now=await after(store, TIMEOUT + 25)) == [task]


async def test_a_retried_task_starts_its_clock_again_at_the_retry(
    store: Store, conn: Any
) -> None:
    task = await submit(store, 2)
    # Its subtasks were created long ago (as if it had timed out and been retried just now).
    await conn.execute("UPDATE taskd.tasks SET created_at = now() - interval '1 hour'")
    await conn.execute("UPDATE taskd.subtasks SET created_at = now() - interval '1 hour',"
                       " status = 'failed', completed_at = now() - interval '50 minutes'")
    assert await store.retry_task(task) == 2
    assert await maintenance.fail_unstarted_tasks(
        store, "standard", TIMEOUT, now=await after(store, TIMEOUT - 5)) == []
    assert await maintenance.fail_unstarted_tasks(
        store, "standard", TIMEOUT, now=await after(store, TIMEOUT + 5)) == [task]


async def test_other_queues_and_timeouts_off_are_left_alone(store: Store) -> None:
    await submit(store, 1, queue="lumina", kind="lumina")
    far = await after(store, 10 * TIMEOUT)
    assert await maintenance.fail_unstarted_tasks(store, "standard", TIMEOUT, now=far) == []


async def test_a_timed_out_api_task_is_refunded_once_even_when_passes_race(
    store: Store, conn: Any
) -> None:
    api = ApiStore(store)
    await api.put_account("alice", is_member=True, quota_remaining=1)
    created = await api.create_task(NewTask(
        user_id="alice", name="", kind="noop", queue="standard", priority=0, params={},
        payloads=[{}, {}]))
    far = await after(store, TIMEOUT + 5)
    found: list[list[int]] = []

    async def one_pass() -> None:
        found.append(await maintenance.fail_unstarted_tasks(store, "standard", TIMEOUT, now=far))

    async with anyio.create_task_group() as tg:  # two daemons' passes at once
        tg.start_soon(one_pass)
        tg.start_soon(one_pass)
    assert sorted(found, key=len) == [[], [created.task_id]]
    assert await fetch_one(conn, "SELECT quota_remaining FROM taskd.accounts") == 1
    refunds = await fetch_one(conn, "SELECT count(*) FROM taskd.quota_ledger"
                                    " WHERE reason = 'refund'")
    assert refunds == 1
    assert await fetch_one(conn, "SELECT count FROM taskd.error_logs") == 1
