"""Dependencies: a task's subtasks become claimable only when every task it waits for has
completed, through the real claim and outcome statements; a failed or cancelled dependency ends
its waiters with a reason naming it; unknown ids are refused; the claim is unchanged."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from taskd.errors import InvalidInput
from taskd.queue import Outcome, Store

pytestmark = pytest.mark.anyio
LEASE = 60.0
AConn = psycopg.AsyncConnection[tuple[Any, ...]]


async def run_all(store: Store, verdict: str = "completed") -> list[int]:
    """Claim every claimable subtask of the standard queue and record ``verdict`` for each;
    their task ids, in claim order."""
    claimed = await store.claim_subtasks("standard", "e1", 1000, LEASE)
    applied = await store.record_outcomes("e1", [
        Outcome(c.id, c.attempt, verdict, None,  # type: ignore[arg-type]
                "boom" if verdict == "failed" else None) for c in claimed])
    assert applied == {c.id for c in claimed}
    return [c.task_id for c in claimed]


async def status(conn: AConn, task_id: int) -> tuple[str, list[str | None]]:
    row = await (await conn.execute(
        "SELECT t.status, array_agg(s.error ORDER BY s.id) FROM taskd.tasks t"
        " JOIN taskd.subtasks s ON s.task_id = t.id WHERE t.id = %s GROUP BY t.status",
        (task_id,))).fetchone()
    assert row is not None
    return row[0], row[1]


async def test_a_waiter_runs_only_after_every_dependency_completed(
    store: Store, conn: AConn,
) -> None:
    a = await store.submit("standard", "noop", [{}, {}])
    b = await store.submit("standard", "noop", [{}])
    c = await store.submit("standard", "noop", [{"join": True}, {"join": True}], after=[a, b])
    # The first claim sees a and b only: c waits.
    claimed = await store.claim_subtasks("standard", "e1", 1000, LEASE)
    assert sorted({s.task_id for s in claimed}) == [a, b]
    # a completes; b is still running: c still waits.
    await store.record_outcomes("e1", [Outcome(s.id, s.attempt, "completed")
                                       for s in claimed if s.task_id == a])
    assert await store.claim_subtasks("standard", "e1", 1000, LEASE) == []
    await store.record_outcomes("e1", [Outcome(s.id, s.attempt, "completed")
                                       for s in claimed if s.task_id == b])
    # b's end released c in the same statement: both its subtasks are claimable now.
    assert await run_all(store) == [c, c]
    assert (await status(conn, c))[0] == "completed"
    left = await (await conn.execute("SELECT count(*) FROM taskd.task_dependencies")).fetchone()
    assert left == (0,)


async def test_a_failed_dependency_fails_its_waiters_naming_it(store: Store, conn: AConn) -> None:
    a = await store.submit("standard", "noop", [{}], max_attempts=1)
    waiter = await store.submit("standard", "noop", [{}, {}], after=[a])
    # A chain: the waiter's own waiter ends too, with the waiter named.
    second = await store.submit("standard", "noop", [{}], after=[waiter])
    assert await run_all(store, "failed") == [a]
    assert await status(conn, waiter) == ("failed", [f"dependency task {a} failed"] * 2)
    assert await status(conn, second) == ("failed", [f"dependency task {waiter} failed"])
    assert await store.claim_subtasks("standard", "e1", 1000, LEASE) == []  # none ever runs


async def test_a_cancelled_dependency_cancels_its_waiters(store: Store, conn: AConn) -> None:
    a = await store.submit("standard", "noop", [{}])
    waiter = await store.submit("standard", "noop", [{}], after=[a])
    await store.cancel_task(a)
    assert await status(conn, waiter) == ("cancelled", [f"dependency task {a} cancelled"])


async def test_dependencies_that_ended_before_the_submit(store: Store, conn: AConn) -> None:
    done = await store.submit("standard", "noop", [{}])
    await run_all(store)
    failed = await store.submit("standard", "noop", [{}], max_attempts=1)
    await run_all(store, "failed")
    # All completed: claimable at once. One failed: failed at once, nothing runs.
    ready = await store.submit("standard", "noop", [{}], after=[done])
    doomed = await store.submit("standard", "noop", [{}], after=[done, failed])
    assert await status(conn, doomed) == ("failed", [f"dependency task {failed} failed"])
    assert await run_all(store) == [ready]


async def test_unknown_ids_are_refused_and_nothing_is_written(store: Store, conn: AConn) -> None:
    a = await store.submit("standard", "noop", [{}])
    # The id the next task would get: a task cannot wait for itself, so no cycle can form.
    for after, says in (([a, 999_999, 999_998], "after names unknown tasks: 999998, 999999"),
                        ([a + 1], f"after names unknown tasks: {a + 1}")):
        with pytest.raises(InvalidInput, match=says):
            await store.submit("standard", "noop", [{}], after=after)
    with pytest.raises(InvalidInput, match="after holds 0"):
        await store.submit("standard", "noop", [{}], after=[0])
    with pytest.raises(InvalidInput, match="after holds 'x'"):
        await store.submit("standard", "noop", [{}], after=["x"])  # type: ignore[list-item]
    row = await (await conn.execute(
        "SELECT (SELECT count(*) FROM taskd.tasks), (SELECT count(*) FROM taskd.task_dependencies),"
        " (SELECT has_waiters FROM taskd.tasks WHERE id = %s)", (a,))).fetchone()
    assert row == (1, 0, False)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="after holds a NULL"):
        await conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]',"
                           " after => ARRAY[NULL]::bigint[])")


async def test_sql_clients_wait_with_after_and_the_delay_is_kept(
    store: Store, conn: AConn,
) -> None:
    a = await store.submit("standard", "noop", [{}])
    row = await (await conn.execute(
        "SELECT taskd.submit_task('standard', 'noop', '[{}]', after => ARRAY[%s]::bigint[],"
        " run_after => now() + interval '1 hour')", (a,))).fetchone()
    assert row is not None
    waiter = row[0]
    assert await run_all(store) == [a]
    # Released, but its own run_after still holds it back.
    ready = await (await conn.execute(
        "SELECT run_after > now() + interval '50 minutes' AND run_after <> 'infinity'"
        " FROM taskd.subtasks WHERE task_id = %s", (waiter,))).fetchone()
    assert ready == (True,)


def test_two_dependencies_ending_in_racing_transactions_release_the_waiter(
    database_url: str,
) -> None:
    import threading

    def submit(conn: psycopg.Connection[Any], after: list[int] | None = None) -> int:
        row = conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]',"
                           " after => %s::bigint[])", (after,)).fetchone()
        assert row is not None
        return int(row[0])

    complete = ("UPDATE taskd.subtasks SET status = 'completed', completed_at = now()"
                " WHERE task_id = %s")
    with psycopg.connect(database_url, autocommit=True) as admin, \
            psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        a, b = submit(admin), submit(admin)
        waiter = submit(admin, [a, b])
        first.execute(complete, (a,))  # a ends; its trigger holds the waiter's row lock
        done = threading.Event()

        def end_b() -> None:
            second.execute(complete, (b,))  # waits for first's commit, then sees it
            second.commit()
            done.set()

        thread = threading.Thread(target=end_b)
        thread.start()
        assert not done.wait(0.5), "b's end must wait for the waiter's lock"
        first.commit()
        thread.join(timeout=30)
        assert done.is_set()
        row = admin.execute("SELECT run_after <> 'infinity' FROM taskd.subtasks"
                            " WHERE task_id = %s", (waiter,)).fetchone()
        assert row == (True,)


def test_the_cli_submits_a_waiting_task(database_url: str) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskd", "submit", *args], capture_output=True, text=True,
            timeout=60, env={"TASKD_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
            check=False)

    first = cli()
    waiter = cli("--after", first.stdout.strip())
    assert waiter.returncode == 0, waiter
    bad = cli("--after", "999999")
    assert bad.returncode == 2 and "after names unknown tasks: 999999" in bad.stderr
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT task_id, depends_on FROM taskd.task_dependencies").fetchall()
    assert rows == [(int(waiter.stdout), int(first.stdout))]


def test_the_api_waits_only_for_the_callers_own_tasks(client: Any, database_url: str) -> None:
    from tests.integration.api_support import put_account

    put_account(client, "alice", quota=5)
    put_account(client, "bob", quota=5)
    alice, bob = client("alice"), client("bob")
    first = alice.post("/v1/tasks", json={"kind": "noop", "subtasks": [{}]}).json()["id"]
    waiter = alice.post("/v1/tasks", json={"kind": "noop", "subtasks": [{}], "after": [first]})
    assert waiter.status_code == 201, waiter.text
    # Bob may not wait for Alice's task: answered as an unknown id, nothing written.
    refused = bob.post("/v1/tasks", json={"kind": "noop", "subtasks": [{}], "after": [first]})
    assert refused.status_code == 422 and f"after names unknown tasks: {first}" in refused.text
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT task_id, depends_on FROM taskd.task_dependencies"
                            ).fetchall() == [(waiter.json()["id"], first)]
        assert conn.execute("SELECT quota_remaining FROM taskd.accounts WHERE user_id = 'bob'"
                            ).fetchone() == (5,)


async def test_status_tells_waiting_subtasks_and_what_they_wait_for(store: Store) -> None:
    from taskd.queue.tasks import subtask_counts, waits_for

    a = await store.submit("standard", "noop", [{}])
    b = await store.submit("standard", "noop", [{}])
    waiter = await store.submit("standard", "noop", [{}, {}], after=[b, a])
    assert await subtask_counts(store, waiter) == {"waiting": 2}
    assert await waits_for(store, waiter) == [a, b]
    claimed = await store.claim_subtasks("standard", "e1", 1000, LEASE)
    await store.record_outcomes("e1", [Outcome(s.id, s.attempt, "completed")
                                       for s in claimed if s.task_id == a])
    assert await waits_for(store, waiter) == [b]
