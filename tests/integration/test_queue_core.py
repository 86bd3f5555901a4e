"""The queue core against a real PostgreSQL: claim, fencing, rescue, retries, counters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NamedTuple

import anyio
import psycopg
import pytest
from psycopg import sql

from taskd.errors import DatabaseError
from taskd.executor.runner import result_json
from taskd.queue import ErrorOccurrence, ExecutorInfo, Outcome, Store, maintenance
from taskd.queue.connection import connection_kwargs
from taskd.queue.encoding import fields_row
from taskd.queue.queries import query
from tests.factories import CLAIM_FROM_HEAD, fetch_one, submit

pytestmark = pytest.mark.anyio

LEASE = 30.0


async def test_claims_highest_priority_then_oldest(store: Store, conn: Any) -> None:
    low = await submit(store, 2, priority=-5)
    high = await submit(store, 2, priority=10)
    mid = await submit(store, 1, priority=0)
    claimed = await store.claim_subtasks("standard", "e1", 10, LEASE)
    assert [c.task_id for c in claimed] == [high, high, mid, low, low]
    # Within one priority, the older (lower id, earlier run_after) goes first.
    ids = [c.id for c in claimed]
    assert ids[0] < ids[1] and ids[3] < ids[4]
    assert all(c.attempt == 1 for c in claimed)


async def test_a_claim_after_a_subtask_takes_what_comes_after_it_in_claim_order(
    store: Store, conn: Any
) -> None:
    mid = await submit(store, 4, priority=5)
    low = await submit(store, 2, priority=-1)
    [first, second] = await store.claim_subtasks("standard", "e1", 2, LEASE)
    high = await submit(store, 1, priority=9)  # before `second` in claim order
    rest = await store.claim_subtasks("standard", "e1", 10, LEASE, after=second)
    assert [c.task_id for c in rest] == [mid, mid, low, low]
    assert [c.id for c in rest] == sorted(c.id for c in rest)
    assert rest[0].id > second.id
    # From the head, the task of higher priority comes first.
    [again] = await store.claim_subtasks("standard", "e1", 10, LEASE)
    assert again.task_id == high
    assert first.task_id == second.task_id == mid and first.wait >= 0


async def test_a_claim_after_a_subtask_skips_the_claimed_head_of_the_index(
    store: Store, conn: Any
) -> None:
    """The head of the claim index keeps an entry for each row claimed since the last VACUUM:
    a claim from the head reads every page of them, one after a subtask goes straight past."""
    await submit(store, 6000)
    claimed = []
    for _ in range(10):
        claimed += await store.claim_subtasks("standard", "e1", 500, LEASE)
    params = {"queue": "standard", "executor_id": "e2", "limit": 100, "lease_timeout": LEASE,
              "cluster_max": None, "now": None, "suspect_after": 2, "rate_limit": None,
              "rate_period": None}
    last = claimed[-1]
    head = await _claim_index_buffers(conn, dict(params, **CLAIM_FROM_HEAD))
    after = await _claim_index_buffers(conn, dict(
        params, after_priority=last.priority, after_run_after=last.run_after, after_id=last.id))
    assert head >= 5 * after, (head, after)  # 47 against 5 when written


async def _claim_index_buffers(conn: Any, params: dict[str, Any]) -> int:
    """Buffers the claim's scan of subtasks_claim_idx read, in a transaction rolled back."""
    async with conn.transaction(force_rollback=True):
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        cur = await conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ")
                                 + query("claim_subtasks"), params)
        [[plan]] = await cur.fetchall()

    def scans(node: dict[str, Any]) -> list[dict[str, Any]]:
        found = [node] if node.get("Index Name") == "subtasks_claim_idx" else []
        for child in node.get("Plans", []):
            found += scans(child)
        return found

    nodes = scans(plan[0]["Plan"])
    assert nodes, "the claim did not use subtasks_claim_idx"
    return sum(n["Shared Hit Blocks"] + n["Shared Read Blocks"] for n in nodes)


async def test_claim_respects_limit_queue_and_run_after(store: Store, conn: Any) -> None:
    await submit(store, 3, delay=3600)
    await submit(store, 2, queue="other")
    ready = await submit(store, 4)
    claimed = await store.claim_subtasks("standard", "e1", 3, LEASE)
    assert len(claimed) == 3 and {c.task_id for c in claimed} == {ready}
    claimed += await store.claim_subtasks("standard", "e1", 10, LEASE)
    assert len(claimed) == 4  # the delayed three are not ready yet
    later = await store.database_now() + timedelta(hours=2)
    delayed = await store.claim_subtasks("standard", "e1", 10, LEASE, now=later)
    assert len(delayed) == 3


async def test_claimed_rows_read_in_binary_keep_their_values(store: Store, conn: Any) -> None:
    """The claim reads its rows in binary and the pool's sessions run in UTC: JSON, the
    timestamp and the wait come back as the database holds them."""
    payload = {"s": "\u00fc \\\" x", "n": [1, 2.5, None, True], "o": {"a": {"b": "c"}}}
    task_id = await store.submit("standard", "noop", [payload], priority=3, max_attempts=4)
    await conn.execute("UPDATE taskd.subtasks SET state = '{\"step\": 2}',"
                       " run_after = now() - interval '2.5 seconds'")
    [claimed] = await store.claim_subtasks("standard", "e1", 1, LEASE)
    run_after, wait = await fetch_one(
        conn, "SELECT run_after, extract(epoch FROM started_at - run_after)"
              " FROM taskd.subtasks WHERE id = %s", claimed.id)
    assert (claimed.task_id, claimed.queue, claimed.kind, claimed.priority, claimed.attempt,
            claimed.max_attempts) == (task_id, "standard", "noop", 3, 1, 4)
    assert claimed.payload == payload and claimed.state == {"step": 2}
    assert claimed.run_after == run_after and claimed.run_after.utcoffset() == timedelta(0)
    assert claimed.wait == pytest.approx(float(wait)) and claimed.wait >= 2.5
    async with store.pool.connection() as pooled:
        assert await fetch_one(pooled, "SHOW TimeZone") == "UTC"


async def test_claim_sets_lease_from_database_clock(store: Store, conn: Any) -> None:
    await submit(store, 1)
    [claimed] = await store.claim_subtasks("standard", "e1", 1, 45.0)
    seconds = await fetch_one(
        conn,
        "SELECT extract(epoch FROM lease_expires_at - started_at) FROM taskd.subtasks"
        " WHERE id = %s AND locked_by = 'e1' AND status = 'processing'",
        claimed.id,
    )
    assert float(seconds) == pytest.approx(45.0)
    assert await fetch_one(conn, "SELECT status FROM taskd.tasks") == "processing"


@pytest.mark.slow
async def test_concurrent_claimers_claim_each_subtask_exactly_once(
    database_url: str, store: Store
) -> None:
    total = 10_000
    for _ in range(total // 5000):
        await submit(store, 5000)
    claims: dict[str, list[int]] = {}

    async def claimer(name: str) -> None:
        own = await Store.open(database_url, max_size=1)
        got: list[int] = []
        try:
            while batch := await own.claim_subtasks("standard", name, 50, LEASE):
                got.extend(c.id for c in batch)
        finally:
            await own.close()
        claims[name] = got

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(claimer, f"claimer-{i}")
    every = [sid for got in claims.values() for sid in got]
    assert len(every) == total
    assert len(set(every)) == total
    assert sum(1 for got in claims.values() if got) > 1  # they really did run concurrently


async def test_one_batch_writes_every_kind_of_outcome(store: Store, conn: Any) -> None:
    await submit(store, 6)
    c = await store.claim_subtasks("standard", "e1", 6, LEASE)
    applied = await store.record_outcomes("e1", [
        Outcome(c[0].id, 1, "completed"),  # no result: NULL
        # The runner's text goes into the batch as it is: non-ASCII, escapes, spaces.
        Outcome(c[1].id, 1, "completed", result_json({"n": 1, "s": "\u00e9\"\\"})),
        Outcome(c[2].id, 1, "completed", result_json((1, None))),
        Outcome(c[3].id, 1, "failed", error="boom \u2603"),
        Outcome(c[4].id, 1, "retry", error="again", delay=60.0),
        Outcome(c[5].id, 1, "snooze", error="later", delay=30.0),
    ])
    assert applied == {s.id for s in c}
    rows = await conn.execute(
        "SELECT status, result, error, attempt, run_after > now() + interval '20 s'"
        " FROM taskd.subtasks ORDER BY id")
    assert await rows.fetchall() == [
        ("completed", None, None, 1, False),
        ("completed", {"n": 1, "s": "\u00e9\"\\"}, None, 1, False),
        ("completed", [1, None], None, 1, False),
        ("failed", None, "boom \u2603", 1, False),
        ("pending", None, "again", 1, True),
        ("pending", None, "later", 0, True),
    ]


async def test_lost_lease_outcome_is_rejected_and_reclaimer_wins(
    store: Store, conn: Any
) -> None:
    await submit(store, 1)
    [first] = await store.claim_subtasks("standard", "slow", 1, LEASE)
    later = await store.database_now() + timedelta(seconds=LEASE + 1)
    rescued = await maintenance.rescue_expired_leases(store, now=later)
    assert [r["id"] for r in rescued] == [first.id]
    [second] = await store.claim_subtasks("standard", "fast", 1, LEASE, now=later)
    # The crash's attempt was given back: the same attempt number, another holder.
    assert second.id == first.id and second.attempt == 1

    applied = await store.record_outcomes(
        "slow", [Outcome(first.id, first.attempt, "completed", '{"by": "slow"}')]
    )
    assert applied == set()
    applied = await store.record_outcomes(
        "fast", [Outcome(second.id, second.attempt, "completed", '{"by": "fast"}')]
    )
    assert applied == {second.id}
    # The stale writer cannot overwrite the recorded outcome either.
    assert await store.record_outcomes(
        "slow", [Outcome(first.id, first.attempt, "failed", error="late")]
    ) == set()
    row = await fetch_one(conn, "SELECT status, result, attempt FROM taskd.subtasks")
    assert row == ("completed", {"by": "fast"}, 1)


async def test_expired_leases_give_the_attempt_back_and_fail_as_poison_after_three_crashes(
    store: Store, conn: Any
) -> None:
    await submit(store, 1, max_attempts=1)
    now = await store.database_now()
    for crash in (1, 2, 3):
        if crash < 3:
            [claimed] = await store.claim_subtasks("standard", f"e{crash}", 1, LEASE, now=now)
        else:
            # Two crashes make it a suspect: the claim leaves it to one that runs it alone.
            assert await store.claim_subtasks("standard", "e3", 1, LEASE, now=now) == []
            assert await store.suspects_waiting(["standard"])
            suspect = await store.claim_suspect("e3", ["standard"], LEASE)
            assert suspect is not None
            claimed = suspect
            now = await store.database_now()
        assert claimed.attempt == 1  # a crash does not spend the attempt
        now += timedelta(seconds=LEASE + 1)
        [rescued] = await maintenance.rescue_expired_leases(store, now=now)
        assert rescued["status"] == ("pending" if crash < 3 else "failed")
    row = await fetch_one(conn, "SELECT status, error, locked_by, crashes FROM taskd.subtasks")
    assert row == ("failed", "Poison: its executor crashed or stopped answering while running "
                   "it, 3 times (last: executor e3)", None, 3)
    assert await store.claim_subtasks("standard", "e4", 1, LEASE, now=now) == []
    assert not await store.suspects_waiting(["standard"])
    task = await fetch_one(conn, "SELECT status, failed, completed_at IS NOT NULL FROM taskd.tasks")
    assert task == ("failed", 1, True)
    logged = await fetch_one(conn, "SELECT error_type, error_message, count, queue, kind"
                                   " FROM taskd.error_logs")
    assert logged == ("Poison", "its executor crashed or stopped answering while running it, "
                      "3 times", 1, "standard", "noop")


async def test_unexpired_leases_are_not_rescued(store: Store) -> None:
    await submit(store, 2)
    await store.claim_subtasks("standard", "e1", 2, LEASE)
    assert await maintenance.rescue_expired_leases(store) == []


async def test_retry_waits_its_backoff_in_database_time_and_survives_restart(
    database_url: str,
) -> None:
    first = await Store.open(database_url)
    await submit(first, 1)
    [claimed] = await first.claim_subtasks("standard", "e1", 1, LEASE)
    applied = await first.record_outcomes(
        "e1", [Outcome(claimed.id, 1, "retry", error="boom", delay=120.0)]
    )
    assert applied == {claimed.id}
    await first.close()  # the process that scheduled the retry is gone

    second = await Store.open(database_url)
    try:
        now = await second.database_now()
        assert await second.claim_subtasks("standard", "e2", 1, LEASE) == []
        early = now + timedelta(seconds=100)
        assert await second.claim_subtasks("standard", "e2", 1, LEASE, now=early) == []
        late = now + timedelta(seconds=121)
        [again] = await second.claim_subtasks("standard", "e2", 1, LEASE, now=late)
        assert again.id == claimed.id and again.attempt == 2
    finally:
        await second.close()


async def test_snooze_does_not_spend_the_attempt(store: Store) -> None:
    await submit(store, 1)
    [claimed] = await store.claim_subtasks("standard", "e1", 1, LEASE)
    await store.record_outcomes("e1", [Outcome(claimed.id, 1, "snooze", delay=0)])
    [again] = await store.claim_subtasks("standard", "e1", 1, LEASE)
    assert again.attempt == 1


async def test_task_counters_and_final_status(store: Store, conn: Any) -> None:
    ok = await submit(store, 3)
    bad = await submit(store, 2, queue="other")
    claimed = await store.claim_subtasks("standard", "e1", 10, LEASE)
    assert await fetch_one(conn, "SELECT status FROM taskd.tasks WHERE id = %s", ok) == (
        "processing"
    )
    assert await fetch_one(conn, "SELECT status FROM taskd.tasks WHERE id = %s", bad) == (
        "pending"
    )
    await store.record_outcomes("e1", [Outcome(c.id, 1, "completed", "{}") for c in claimed[:2]])
    row = await fetch_one(conn, "SELECT status, completed FROM taskd.tasks WHERE id = %s", ok)
    assert row == ("processing", 2)
    await store.record_outcomes("e1", [Outcome(claimed[2].id, 1, "completed", "{}")])
    row = await fetch_one(
        conn, "SELECT status, completed, completed_at IS NOT NULL FROM taskd.tasks WHERE id = %s",
        ok,
    )
    assert row == ("completed", 3, True)

    other = await store.claim_subtasks("other", "e1", 10, LEASE)
    await store.record_outcomes("e1", [
        Outcome(other[0].id, 1, "completed", "{}"),
        Outcome(other[1].id, 1, "failed", error="nope"),
    ])
    row = await fetch_one(
        conn, "SELECT status, completed, failed FROM taskd.tasks WHERE id = %s", bad
    )
    assert row == ("failed", 1, 1)


async def test_one_statement_moving_subtasks_both_ways_keeps_counters_exact(
    store: Store, conn: Any
) -> None:
    # An operator's UPDATE: completed -> pending, processing -> failed, pending -> cancelled,
    # and a completed row rewritten without a status change, on two tasks at once.
    a = await submit(store, 4)
    b = await submit(store, 2)
    claimed = await store.claim_subtasks("standard", "e1", 5, LEASE)
    await store.record_outcomes("e1", [Outcome(c.id, 1, "completed", "{}") for c in claimed[:3]])
    ids = [c.id for c in claimed]
    await conn.execute("""
        UPDATE taskd.subtasks
           SET status = CASE WHEN id = %(reopen)s THEN 'pending'
                             WHEN id = %(fail)s THEN 'failed'
                             WHEN status = 'pending' THEN 'cancelled'
                             ELSE status END,
               locked_by = CASE WHEN id = %(fail)s THEN NULL ELSE locked_by END,
               result = CASE WHEN id = %(rewrite)s THEN '{"again": true}' ELSE result END
         WHERE task_id IN (%(a)s, %(b)s)""",
        {"reopen": ids[0], "fail": ids[3], "rewrite": ids[1], "a": a, "b": b})
    rows = await conn.execute("""
        SELECT t.id, t.completed, t.failed, t.cancelled,
               count(*) FILTER (WHERE s.status = 'completed'),
               count(*) FILTER (WHERE s.status = 'failed'),
               count(*) FILTER (WHERE s.status = 'cancelled')
          FROM taskd.tasks t JOIN taskd.subtasks s ON s.task_id = t.id
         GROUP BY t.id ORDER BY t.id""")
    for task, completed, failed, cancelled, *actual in await rows.fetchall():
        assert [completed, failed, cancelled] == actual, task


async def test_one_batch_updates_each_task_once(store: Store, conn: Any) -> None:
    """Many outcomes of one task in one batch: one UPDATE of the task row (one new version)."""
    task_id = await submit(store, 50)
    claimed = await store.claim_subtasks("standard", "e1", 50, LEASE)
    await conn.execute("""
        CREATE TABLE task_updates (task_id bigint);
        CREATE FUNCTION count_task_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO task_updates VALUES (NEW.id); RETURN NULL; END $$;
        CREATE TRIGGER count_task_update AFTER UPDATE ON taskd.tasks
            FOR EACH ROW EXECUTE FUNCTION count_task_update();
    """)
    await store.record_outcomes("e1", [Outcome(c.id, 1, "completed", "{}") for c in claimed])
    assert await fetch_one(conn, "SELECT count(*) FROM task_updates") == 1
    assert await fetch_one(conn, "SELECT completed FROM taskd.tasks WHERE id = %s", task_id) == 50


async def test_error_logs_aggregate_identical_errors(store: Store, conn: Any) -> None:
    await submit(store, 5)
    claimed = await store.claim_subtasks("standard", "e1", 5, LEASE)

    def failed(subtask: Any, failure: ErrorOccurrence) -> Outcome:
        return Outcome(subtask.id, 1, "failed", error="x", failure=failure)

    boom = ErrorOccurrence("ValueError", "boom", "trace 1", "standard", "noop")
    await store.record_outcomes("e1", [failed(claimed[0], boom), failed(claimed[1], boom)])
    await store.record_outcomes("e1", [failed(claimed[2], ErrorOccurrence("ValueError", "boom",
                                                                          "trace 3"))])
    await store.record_outcomes("e1", [failed(claimed[3], ErrorOccurrence("KeyError", "other"))])
    # An outcome whose lease was lost is not applied, and its failure is not counted.
    assert await store.record_outcomes(
        "not-the-holder", [failed(claimed[4], ErrorOccurrence("KeyError", "other"))]) == set()
    rows = await (await conn.execute(
        "SELECT error_type, error_message, count, stack_trace FROM taskd.error_logs"
        " ORDER BY error_type"
    )).fetchall()
    assert rows == [("KeyError", "other", 1, None), ("ValueError", "boom", 3, "trace 3")]


async def test_extend_leases_only_for_the_holder(store: Store, conn: Any) -> None:
    await submit(store, 2)
    claimed = await store.claim_subtasks("standard", "e1", 2, LEASE)
    ids = [c.id for c in claimed]
    later = await store.database_now() + timedelta(seconds=20)
    assert await store.extend_leases("e2", ids, LEASE, now=later) == set()
    assert await store.extend_leases("e1", ids, LEASE, now=later) == set(ids)
    # 20 s later plus a fresh 30 s lease: nothing expires at +40 s.
    assert await maintenance.rescue_expired_leases(store, now=later + timedelta(seconds=20)) == []


async def test_release_gives_subtasks_back_without_spending_attempts(
    store: Store, conn: Any
) -> None:
    await submit(store, 2)
    claimed = await store.claim_subtasks("standard", "e1", 2, LEASE)
    released = await store.release_subtasks("e1", [(c.id, c.attempt) for c in claimed])
    assert released == {c.id for c in claimed}
    rows = await (await conn.execute(
        "SELECT status, attempt, locked_by, lease_expires_at FROM taskd.subtasks"
    )).fetchall()
    assert rows == [("pending", 0, None, None)] * 2


async def test_checkpoint_is_fenced(store: Store, conn: Any) -> None:
    await submit(store, 1)
    [claimed] = await store.claim_subtasks("standard", "e1", 1, LEASE)
    assert await store.checkpoint("e1", claimed.id, 1, {"job": "abc"})
    assert not await store.checkpoint("e2", claimed.id, 1, {"job": "evil"})
    assert not await store.checkpoint("e1", claimed.id, 2, {"job": "stale"})
    await store.record_outcomes("e1", [Outcome(claimed.id, 1, "retry", delay=0)])
    [again] = await store.claim_subtasks("standard", "e1", 1, LEASE)
    assert again.state == {"job": "abc"}


async def test_cluster_max_caps_processing_across_executors(store: Store) -> None:
    await submit(store, 10)
    first = await store.claim_subtasks("standard", "e1", 3, LEASE, cluster_max=4)
    second = await store.claim_subtasks("standard", "e2", 3, LEASE, cluster_max=4)
    assert (len(first), len(second)) == (3, 1)
    await store.record_outcomes("e1", [Outcome(first[0].id, 1, "completed", "{}")])
    assert len(await store.claim_subtasks("standard", "e2", 3, LEASE, cluster_max=4)) == 1


async def test_executor_register_heartbeat_dead_and_back(store: Store, conn: Any) -> None:
    info = ExecutorInfo("e1", "default", "host-a", 123, "0.1.0", {"standard": 10})
    await store.register_executor(info)
    now = await store.database_now()
    assert await store.heartbeat_executor("e1", {"standard": 15}, {"standard": 2}, now=now) == (
        "running"
    )
    assert await maintenance.mark_dead_executors(store, 30, now=now + timedelta(seconds=10)) == []
    later = now + timedelta(seconds=31)
    assert await maintenance.mark_dead_executors(store, 30, now=later) == ["e1"]
    assert await store.heartbeat_executor("e1", {}, {}) == "running"
    await store.set_executor_status("e1", "stopped")
    row = await fetch_one(conn, "SELECT status, stopped_at IS NOT NULL FROM taskd.executors")
    assert row == ("stopped", True)
    assert await store.heartbeat_executor("missing", {}, {}) is None


async def test_cancel_and_retry_task(store: Store, conn: Any) -> None:
    task_id = await submit(store, 3)
    [running] = await store.claim_subtasks("standard", "e1", 1, LEASE)
    assert await store.cancel_task(task_id) == (2, 1)
    assert await store.cancel_requested([running.id]) == {running.id}
    await store.record_outcomes("e1", [Outcome(running.id, 1, "failed", error="stopped")])
    row = await fetch_one(
        conn, "SELECT status, failed, cancelled FROM taskd.tasks WHERE id = %s", task_id
    )
    assert row == ("failed", 1, 2)
    assert await store.retry_task(task_id) == 1
    row = await fetch_one(conn, "SELECT status, failed FROM taskd.tasks WHERE id = %s", task_id)
    assert row == ("processing", 0)


async def test_retention_deletes_only_old_finished_rows(store: Store, conn: Any) -> None:
    done = await submit(store, 2)
    await submit(store, 1, queue="other")
    claimed = await store.claim_subtasks("standard", "e1", 2, LEASE)
    await store.record_outcomes("e1", [Outcome(c.id, 1, "completed", "{}") for c in claimed])
    assert await maintenance.delete_finished(store, 3600) == (0, 0)
    later = await store.database_now() + timedelta(hours=2)
    assert await maintenance.delete_finished(store, 3600, now=later) == (2, 1)
    assert await store.get_task(done) is None
    assert await fetch_one(conn, "SELECT count(*) FROM taskd.subtasks") == 1


async def test_database_errors_surface_as_taskd_errors(database_url: str) -> None:
    from taskd.errors import DatabaseUnavailable

    with pytest.raises(DatabaseUnavailable):
        await Store.open("postgresql://postgres@127.0.0.1:1/nothing", connect_timeout=1)


@pytest.mark.slow
async def test_concurrent_batches_on_one_task_keep_exact_counters(
    database_url: str, store: Store, conn: Any
) -> None:
    """Regression: counters were computed from a stale snapshot and lost concurrent updates."""
    total = 2000
    task_id = await submit(store, total)

    async def worker(name: str) -> None:
        own = await Store.open(database_url, max_size=1)
        try:
            while batch := await own.claim_subtasks("standard", name, 10, LEASE):
                await own.record_outcomes(
                    name, [Outcome(c.id, c.attempt, "completed", "{}") for c in batch]
                )
        finally:
            await own.close()

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(worker, f"w{i}")
    row = await fetch_one(
        conn, "SELECT status, completed, failed FROM taskd.tasks WHERE id = %s", task_id
    )
    assert row == ("completed", total, 0)


class _Pair(NamedTuple):
    a: int
    b: str


async def test_fields_row_builds_rows_by_position_and_refuses_other_columns(conn: Any) -> None:
    cur = conn.cursor(row_factory=fields_row(_Pair))
    await cur.execute("SELECT 1 AS a, 'x' AS b")
    assert await cur.fetchall() == [_Pair(1, "x")]
    with pytest.raises(TypeError, match=r"_Pair has the fields \('a', 'b'\); the query returned"
                                        r" \('b', 'a'\)"):
        await cur.execute("SELECT 'x' AS b, 1 AS a")


@pytest.mark.parametrize("cluster_max", [None, 5])
async def test_a_claim_given_a_connection_runs_on_it(
    store: Store, database_url: str, cluster_max: int | None
) -> None:
    """The producer's claim after a notification, on the listening connection."""
    await submit(store, 3)
    given = await psycopg.AsyncConnection.connect(
        database_url, **connection_kwargs(database_url, "taskd-listen given", None))
    async with given:
        claimed = await store.claim_subtasks("standard", "e1", 2, LEASE,
                                             cluster_max=cluster_max, conn=given)
        assert len(claimed) == 2
    # Closed: the claim fails there rather than run on a pooled connection.
    with pytest.raises(DatabaseError):
        await store.claim_subtasks("standard", "e1", 1, LEASE, cluster_max=cluster_max,
                                   conn=given)
    assert len(await store.claim_subtasks("standard", "e1", 2, LEASE)) == 1


async def test_no_taskd_session_can_sit_in_a_transaction_for_long(store: Store) -> None:
    # A process that freezes with a transaction open must not hold its locks for good.
    async with store.pool.connection() as conn:
        cur = await conn.execute("SHOW idle_in_transaction_session_timeout")
        assert await cur.fetchone() == ("10s",)
        cur = await conn.execute("SHOW statement_timeout")
        assert await cur.fetchone() == ("30s",)
