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
from tests.factories import fetch_one, insert_subtasks, submit, wait_until

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
    second = now.replace(microsecond=0) + timedelta(seconds=5)

    async def claim(at: float, want: int = 10) -> int:
        return len(await store.claim_subtasks("standard", "e1", want, LEASE, rate_limit=rate,
                                              now=second + timedelta(seconds=at)))

    assert [await claim(0.1, 3), await claim(0.5), await claim(0.9)] == [3, 2, 0]
    [control] = await list_queue_controls(store)
    assert control.rate_limit == "5/s"


async def test_the_window_slides_across_the_boundary_of_a_second(store: Store, conn: Any) -> None:
    """Aligned windows let 2 x 5 start within 0.2 s of a boundary; a sliding window frees
    each claim's starts exactly one period after it, wherever the second begins."""
    rate = RateLimit(5, 1)
    await register_queues(store, {"standard": rate})
    await submit(store, 20)
    second = (await store.database_now()).replace(microsecond=0) + timedelta(seconds=5)

    async def claim(at: float) -> int:
        return len(await store.claim_subtasks("standard", "e1", 10, LEASE, rate_limit=rate,
                                              now=second + timedelta(seconds=at)))

    assert await claim(0.9) == 5
    assert await claim(1.1) == 0  # a new second, the same window: (0.1, 1.1] holds 5
    assert await claim(1.899) == 0
    assert await claim(1.9) == 5  # the claim at 0.9 is a period old
    assert await claim(2.5) == 0
    assert await claim(2.9) == 5
    cur = await conn.execute("SELECT started_at - %s FROM taskd.subtasks "
                             "WHERE started_at IS NOT NULL ORDER BY 1", [second])
    assert [r[0] for r in await cur.fetchall()] == (
        [timedelta(seconds=0.9)] * 5 + [timedelta(seconds=1.9)] * 5
        + [timedelta(seconds=2.9)] * 5)


async def test_a_claim_that_waited_for_the_lock_starts_after_the_claim_it_waited_for(
    store: Store, database_url: str, conn: Any
) -> None:
    """now() is when a transaction began: a claim that began, then waited for another claim
    to commit, must neither start before it (started_at) nor count before it (the window)."""
    rate = RateLimit(4, 1)
    await register_queues(store, {"standard": rate})
    await submit(store, 10)
    async with await psycopg.AsyncConnection.connect(database_url) as first, \
            await psycopg.AsyncConnection.connect(database_url) as later:
        await later.execute("SELECT now()")  # its transaction, and so its now(), begins here
        # Not committed: the claim holds the queue's row.
        took = await store.claim_subtasks("standard", "e1", 3, LEASE, rate_limit=rate,
                                          conn=first)
        waited: list[Any] = []

        async def claim_later() -> None:
            waited.extend(await store.claim_subtasks(
                "standard", "e2", 10, LEASE, rate_limit=rate, conn=later))

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim_later)
            await wait_until(lambda: fetch_one(conn, """
                SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'"""),
                message="the later claim waiting for the queue's row")
            await first.commit()
        await later.commit()
    assert len(took) == 3 and len(waited) == 1  # the window had one start left
    cur = await conn.execute("SELECT array_agg(DISTINCT started_at) FROM taskd.subtasks "
                             "WHERE started_at IS NOT NULL GROUP BY locked_by ORDER BY locked_by")
    [[first_start]], [[later_start]] = await cur.fetchall()
    assert later_start > first_start
async def test_without_a_control_row_a_rate_limited_claim_takes_nothing(store: Store) -> None:
    await submit(store, 3)
    rate = RateLimit(5, 1)
    assert await store.claim_subtasks("standard", "e1", 10, LEASE, rate_limit=rate) == []
    assert await rate_limit_wait(store, "standard", rate) is None
    await register_queues(store, {"standard": rate})
    assert len(await store.claim_subtasks("standard", "e1", 10, LEASE, rate_limit=rate)) == 3


async def test_rate_limit_wait_says_when_the_window_has_room(store: Store, conn: Any) -> None:
    """Until the oldest claims that hold the window full are a period old."""
    rate = RateLimit(2, 60)
    await register_queues(store, {"standard": rate})
    await submit(store, 5)
    assert await rate_limit_wait(store, "standard", rate) == 0
    await conn.execute("UPDATE taskd.subtasks SET run_after = run_after - interval '1 hour'")
    now = await fetch_one(conn, "SELECT clock_timestamp()")
    assert len(await store.claim_subtasks("standard", "e1", 1, LEASE, rate_limit=rate,
                                          now=now - timedelta(seconds=30))) == 1
    assert await rate_limit_wait(store, "standard", rate) == 0
    assert len(await store.claim_subtasks("standard", "e1", 10, LEASE, rate_limit=rate,
                                          now=now - timedelta(seconds=20))) == 1
    wait = await rate_limit_wait(store, "standard", rate)
    # The first claim's start frees the window, not the second's.
    assert wait is not None and 29 < wait <= 30


async def test_the_window_stays_short_however_many_claims_it_holds(
    store: Store, conn: Any
) -> None:
    """Claims within one hundredth of the period are one entry, at the latest of their
    times (which counts them no shorter): the queue's row stays ~100 entries long."""
    rate = RateLimit(10_000, 1)
    await register_queues(store, {"standard": rate})
    await submit(store, 1000)
    second = (await store.database_now()).replace(microsecond=0) + timedelta(seconds=5)
    for i in range(300):  # one claim of 2 every 3 ms: three or four per hundredth
        assert len(await store.claim_subtasks(
            "standard", "e1", 2, LEASE, rate_limit=rate,
            now=second + timedelta(microseconds=3000 * i))) == 2
    cur = await conn.execute("SELECT rate_claimed_at, rate_claimed FROM taskd.queue_controls")
    [[claimed_at, claimed]] = await cur.fetchall()
    assert sum(claimed) == 600 and len(claimed) == 90
    assert claimed_at == sorted(claimed_at) and claimed_at[-1] == second + timedelta(
        microseconds=3000 * 299)
    [control] = await list_queue_controls(store)
    assert control.rate_window_used == 600  # what lies ahead of the database clock counts
    # A second on, only the last second's claims count.
    await store.claim_subtasks("standard", "e1", 1, LEASE, rate_limit=rate,
                               now=second + timedelta(seconds=2))
    cur = await conn.execute("SELECT rate_claimed FROM taskd.queue_controls")
    assert await cur.fetchall() == [([1],)]


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
    cur = await conn.execute("SELECT rate_claimed_at, rate_claimed FROM taskd.queue_controls")
    assert await cur.fetchone() == ([], [])


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


async def test_a_suspect_takes_its_turn_in_the_window_of_a_racing_claim(
    store: Store, conn: Any, database_url: str,
) -> None:
    """A claim holding the queue's row has just used the window's last start; a suspect's
    claim racing it waits for that claim's commit, then sees the window used up."""
    await register_queues(store, {"standard": RateLimit(1, 3600)})
    await insert_subtasks(conn, 1, status="pending", crashes=2)
    result: list[Any] = []

    async def claim() -> None:
        result.append(await store.claim_suspect("e1", ["standard"], LEASE))

    async with await psycopg.AsyncConnection.connect(database_url) as racing:
        # What a racing claim writes: the window's one start, not yet committed.
        await racing.execute("UPDATE taskd.queue_controls SET rate_claimed_at = ARRAY[now()],"
                             " rate_claimed = ARRAY[1] WHERE queue = 'standard'")
        pid = racing.info.backend_pid
        async with anyio.create_task_group() as tg:
            tg.start_soon(claim)
            # The suspect's claim waits for the racing claim's row (polled, not slept on).
            await wait_until(lambda: fetch_one(
                conn, "SELECT count(*) > 0 FROM pg_stat_activity"
                      " WHERE %s = ANY(pg_blocking_pids(pid))", pid),
                message="the suspect's claim waiting for the racing claim")
            assert result == []
            await racing.commit()
    assert result == [None]
    assert await fetch_one(conn, "SELECT rate_claimed FROM taskd.queue_controls") == [1]
