"""Queue controls on a real database: pause and resume (the claim returns nothing while
paused), and the rate limit's window counted inside the claim statement.

Pausing an unknown queue is refused with nothing written; submissions are still accepted; the
pause is a row, so it outlives any connection (and daemon); resuming wakes the executors.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import errors as pgerrors

from taskd.errors import InvalidInput, QueueNotFound
from taskd.queue import Store
from taskd.queue.controls import (
    list_queue_controls,
    pause_queue,
    rate_limit_wait,
    register_queues,
    resume_queue,
)
from taskd.queue.maintenance import fail_unstarted_tasks
from taskd.queue.status import oldest_unstarted, read_status
from taskd.settings import RateLimit
from tests.factories import insert_subtasks, submit

pytestmark = pytest.mark.anyio

LEASE = 30.0


async def controls_rows(conn: Any) -> list[tuple[Any, ...]]:
    cur = await conn.execute("SELECT queue, paused FROM taskd.queue_controls ORDER BY queue")
    return list(await cur.fetchall())


async def test_pausing_an_unknown_queue_is_refused_and_writes_nothing(
    store: Store, conn: Any
) -> None:
    with pytest.raises(QueueNotFound, match="unknown queue 'nope'"):
        await pause_queue(store, "nope", by="ops", configured=["standard"])
    with pytest.raises(QueueNotFound, match="unknown queue 'nope'"):
        await resume_queue(store, "nope", configured=["standard"])
    assert await controls_rows(conn) == []
    # Through SQL: the same rule, by SQLSTATE.
    with pytest.raises(pgerrors.NoDataFound, match="unknown queue 'nope'"):
        await conn.execute("SELECT taskd.pause_queue('nope')")
    assert await controls_rows(conn) == []


async def test_a_configured_queue_no_daemon_served_yet_can_be_paused(
    store: Store, conn: Any
) -> None:
    assert await pause_queue(store, "render", by="ops", configured=["render"]) is True
    assert await pause_queue(store, "render", by="ops", configured=["render"]) is False
    [control] = await list_queue_controls(store)
    assert (control.queue, control.paused, control.paused_by) == ("render", True, "ops")
    assert control.paused_at is not None


async def test_paused_by_longer_than_200_characters_is_refused(store: Store, conn: Any) -> None:
    await register_queues(store, {"standard": None})
    with pytest.raises(InvalidInput, match="paused_by is longer than 200 characters"):
        await pause_queue(store, "standard", by="x" * 201)
    assert await controls_rows(conn) == [("standard", False)]


async def test_a_paused_queue_claims_nothing_and_still_takes_submissions(
    store: Store, conn: Any
) -> None:
    await register_queues(store, {"standard": None, "lumina": None})
    await submit(store, 3)
    await pause_queue(store, "standard", by="ops")
    # Accepted while paused: the submit path never looks at the flag.
    task_id = await submit(store, 2)
    assert (await store.get_task(task_id)) is not None
    assert await store.claim_subtasks("standard", "e1", 10, LEASE) == []
    # Other queues go on.
    await submit(store, 1, queue="lumina")
    assert len(await store.claim_subtasks("lumina", "e1", 10, LEASE)) == 1
    # A new connection (a restarted daemon) sees the same: the pause is a row.
    other = await Store.open(conn.info.dsn, min_size=1, max_size=1)
    try:
        assert await other.claim_subtasks("standard", "e2", 10, LEASE) == []
    finally:
        await other.close()
    assert await resume_queue(store, "standard") is True
    assert len(await store.claim_subtasks("standard", "e1", 10, LEASE)) == 5


async def test_the_pause_holds_for_a_capped_claim_too(store: Store) -> None:
    await register_queues(store, {"standard": None})
    await submit(store, 3)
    await pause_queue(store, "standard")
    assert await store.claim_subtasks("standard", "e1", 10, LEASE, cluster_max=5) == []
    assert await store.claim_subtasks(
        "standard", "e1", 10, LEASE, rate_limit=RateLimit(100, 1)) == []


async def test_resume_wakes_the_queues_executors(store: Store, database_url: str) -> None:
    await register_queues(store, {"standard": None})
    await pause_queue(store, "standard")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN taskd")
        await resume_queue(store, "standard")
        with anyio.fail_after(5):
            note = await anext(listener.notifies())
        assert note.payload == "standard"


async def test_sql_clients_pause_with_their_role_recorded(store: Store, conn: Any) -> None:
    await register_queues(store, {"standard": None})
    cur = await conn.execute("SELECT taskd.pause_queue('standard'), current_user")
    changed, role = await cur.fetchone()
    assert changed is True
    [control] = await list_queue_controls(store)
    assert control.paused and control.paused_by == role
    cur = await conn.execute("SELECT taskd.resume_queue('standard')")
    assert await cur.fetchone() == (True,)
    [control] = await list_queue_controls(store)
    assert not control.paused and control.resumed_at is not None


async def test_status_shows_a_paused_queue_and_counts_no_problem_for_its_backlog(
    store: Store,
) -> None:
    await register_queues(store, {"standard": None, "render": None})
    await submit(store, 2, queue="render")  # no live executor serves it: a problem...
    report = await read_status(store, dead_after=30)
    assert [p.queue for p in report.problems] == ["render"]
    await pause_queue(store, "render", by="ops")
    await pause_queue(store, "standard", by="ops")  # no work: still shown
    report = await read_status(store, dead_after=30)
    assert report.problems == []  # ...but not while it is paused
    queues = {q.queue: q for q in report.queues}
    assert queues["render"].paused and queues["render"].paused_by == "ops"
    assert queues["render"].ready == 2
    assert queues["standard"].paused
    assert report.to_json()["queues"][0]["paused"] is True


async def test_a_paused_queue_times_nothing_out_and_its_clock_restarts_at_resume(
    store: Store,
) -> None:
    await register_queues(store, {"standard": None})
    task_id = await submit(store, 1)
    await pause_queue(store, "standard")
    later = await store.database_now() + timedelta(seconds=120)
    assert await fail_unstarted_tasks(store, "standard", 60, now=later) == []
    await resume_queue(store, "standard")
    # Resumed just now: 60 s from the resume, not from the submit.
    assert await fail_unstarted_tasks(store, "standard", 60) == []
    assert (await oldest_unstarted(store, ["standard"]))["standard"] < 5
    assert await fail_unstarted_tasks(store, "standard", 60, now=later) == [task_id]


# -- rate limits -----------------------------------------------------------------------------


async def test_a_claim_takes_no_more_than_the_window_has_left(store: Store) -> None:
    rate = RateLimit(5, 1)
    await register_queues(store, {"standard": rate})
    await submit(store, 20)
    now = await store.database_now()
    window = now.replace(microsecond=0)
    first = await store.claim_subtasks("standard", "e1", 3, LEASE, rate_limit=rate,
                                       now=window + timedelta(seconds=5.1))
    second = await store.claim_subtasks("standard", "e2", 10, LEASE, rate_limit=rate,
                                        now=window + timedelta(seconds=5.5))
    third = await store.claim_subtasks("standard", "e1", 10, LEASE, rate_limit=rate,
                                       now=window + timedelta(seconds=5.9))
    assert (len(first), len(second), len(third)) == (3, 2, 0)
    # The next window of the database clock has room again.
    fourth = await store.claim_subtasks("standard", "e1", 10, LEASE, rate_limit=rate,
                                        now=window + timedelta(seconds=6.0))
    assert len(fourth) == 5
    [control] = await list_queue_controls(store)
    assert control.rate_limit == "5/s"


async def test_without_a_control_row_a_rate_limited_claim_takes_nothing(store: Store) -> None:
    await submit(store, 3)
    rate = RateLimit(5, 1)
    assert await store.claim_subtasks("standard", "e1", 10, LEASE, rate_limit=rate) == []
    assert await rate_limit_wait(store, "standard", rate) is None
    await register_queues(store, {"standard": rate})
    assert len(await store.claim_subtasks("standard", "e1", 10, LEASE, rate_limit=rate)) == 3


async def test_rate_limit_wait_says_when_the_window_has_room(store: Store) -> None:
    rate = RateLimit(2, 60)
    await register_queues(store, {"standard": rate})
    await submit(store, 5)
    assert await rate_limit_wait(store, "standard", rate) == 0
    assert len(await store.claim_subtasks("standard", "e1", 10, LEASE, rate_limit=rate)) == 2
    wait = await rate_limit_wait(store, "standard", rate)
    assert wait is not None and 0 < wait <= 60


async def test_racing_claimers_never_exceed_the_window(store: Store, database_url: str) -> None:
    """Twenty claimers on their own connections, each claiming repeatedly within one window:
    together they take exactly the limit."""
    rate = RateLimit(37, 60)
    await register_queues(store, {"standard": rate})
    await submit(store, 200)
    # One moment inside one window, after every subtask is ready.
    within = (await store.database_now() + timedelta(seconds=60)).replace(second=30)
    stores = [await Store.open(database_url, min_size=1, max_size=1) for _ in range(20)]
    taken: list[int] = []
    try:
        async def claimer(i: int, s: Store) -> None:
            for _ in range(5):
                got = await s.claim_subtasks("standard", f"e{i}", 3, LEASE, rate_limit=rate,
                                             now=within)
                taken.append(len(got))

        async with anyio.create_task_group() as tg:
            for i, s in enumerate(stores):
                tg.start_soon(claimer, i, s)
    finally:
        for s in stores:
            await s.close()
    assert sum(taken) == 37
    assert max(taken) == 3 and len(taken) == 100


async def test_a_queue_without_a_rate_limit_never_locks_or_counts(store: Store, conn: Any) -> None:
    """No rate limit: the claim takes no lock on the control row (a pause holding it does not
    stop the claim) and writes nothing to it."""
    await register_queues(store, {"standard": None})
    await submit(store, 3)
    async with conn.transaction():
        await conn.execute("SELECT * FROM taskd.queue_controls WHERE queue = 'standard' "
                           "FOR UPDATE")
        with anyio.fail_after(5):
            assert len(await store.claim_subtasks("standard", "e1", 10, LEASE)) == 3
    cur = await conn.execute("SELECT rate_window_start, rate_window_count "
                             "FROM taskd.queue_controls")
    assert await cur.fetchone() == (None, 0)


async def test_suspects_of_a_paused_or_rate_limited_queue_wait(store: Store, conn: Any) -> None:
    """A suspected poison pill runs alone (claim_suspect), and still keeps the queue's
    controls: not while paused, not while the window is used up, and it counts in it."""
    rate = RateLimit(1, 3600)
    await register_queues(store, {"standard": rate})
    await insert_subtasks(conn, 2, status="pending", crashes=2)
    await pause_queue(store, "standard")
    assert await store.claim_suspect("e1", ["standard"], LEASE) is None
    await resume_queue(store, "standard")
    window = (await store.database_now()).replace(minute=30, second=0, microsecond=0)
    later = window + timedelta(hours=1)  # ready, and inside one window
    assert await store.claim_suspect("e1", ["standard"], LEASE, now=later) is not None
    assert await store.claim_suspect("e1", ["standard"], LEASE, now=later) is None
    assert await store.claim_suspect(
        "e1", ["standard"], LEASE, now=later + timedelta(hours=1)) is not None
