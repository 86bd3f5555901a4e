"""Quota under concurrency: no overselling, idempotent replays, refunds exactly once per charge;
retries that charge again and refund again."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from taskd.api import RunningApi, mint_token
from taskd.queue import Outcome, maintenance
from taskd.queue.store import Store
from taskd.settings import Settings
from tests.integration.api_support import (
    Client,
    assert_error,
    create,
    put_account,
)

Conn = psycopg.Connection[tuple[Any, ...]]


def _quota(db: Conn, user: str) -> int:
    row = db.execute("SELECT quota_remaining FROM taskd.accounts WHERE user_id = %s", (user,))
    found = row.fetchone()
    assert found is not None
    return int(found[0])


def _ledger_sum(db: Conn, user: str) -> int:
    row = db.execute("SELECT coalesce(sum(delta), 0) FROM taskd.quota_ledger"
                     " WHERE user_id = %s", (user,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.anyio
async def test_50_concurrent_creates_with_quota_10_exactly_10_succeed(
    api: RunningApi, api_settings: Settings, client: Client, db: Conn
) -> None:
    put_account(client, "alice", quota=10)
    token = mint_token(api_settings.api, "alice", ttl=600)
    statuses: list[int] = []
    bodies: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=api.url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"},
                                 limits=httpx.Limits(max_connections=50)) as c:
        start = anyio.Event()

        async def one(i: int) -> None:
            await start.wait()
            response = await c.post("/v1/tasks", json={"kind": "noop",
                                                       "subtasks": [{"i": i}]})
            statuses.append(response.status_code)
            bodies.append(response.json())

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
            start.set()
        elapsed = time.perf_counter() - t0
    assert sorted(statuses) == [201] * 10 + [403] * 40, statuses
    assert all(b["errorCode"] == 4002 for b in bodies if "errorCode" in b)
    assert _quota(db, "alice") == 0
    # The ledger sums to the change: +10 from the admin, -10 for ten tasks.
    assert _ledger_sum(db, "alice") == 0
    assert db.execute("SELECT count(*) FROM taskd.quota_ledger WHERE reason = 'deduct'"
                      ).fetchone() == (10,)
    assert db.execute("SELECT count(*) FROM taskd.tasks").fetchone() == (10,)
    print(f"50 concurrent creates: {elapsed:.2f}s")


@pytest.mark.anyio
async def test_idempotency_key_replay_returns_the_same_task_and_takes_quota_once(
    api: RunningApi, api_settings: Settings, client: Client, db: Conn
) -> None:
    put_account(client, "alice", quota=5)
    token = mint_token(api_settings.api, "alice", ttl=600)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "order-42"}
    body = {"kind": "noop", "name": "once", "subtasks": [{"n": 1}, {"n": 2}]}
    results: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=api.url, timeout=60, headers=headers) as c:
        async with anyio.create_task_group() as tg:
            for _ in range(8):  # racing twins, as a client retrying on a timeout would send
                tg.start_soon(lambda: _post(c, body, results))
        later = await c.post("/v1/tasks", json=body)
        conflict = await c.post("/v1/tasks", json={**body, "name": "another"})
    ids = {r.json()["id"] for r in [*results, later]}
    assert len(ids) == 1, [r.text for r in results]
    assert sorted(r.status_code for r in results) == [200] * 7 + [201]
    assert later.status_code == 200 and later.json()["replayed"] is True
    assert_error(conflict, 409, 4009, "Idempotency-Key")
    assert _quota(db, "alice") == 4
    assert db.execute("SELECT count(*) FROM taskd.tasks").fetchone() == (1,)
    # Another user's identical key is a different request.
    put_account(client, "bob", quota=1)
    other = client("bob").post("/v1/tasks", json=body, headers={"Idempotency-Key": "order-42"})
    assert other.status_code == 201 and other.json()["id"] not in ids


async def _post(c: httpx.AsyncClient, body: dict[str, Any], into: list[httpx.Response]) -> None:
    into.append(await c.post("/v1/tasks", json=body))


def test_a_bad_idempotency_key_is_422(client: Client) -> None:
    put_account(client, "alice")
    response = client("alice").post("/v1/tasks", json={"kind": "noop", "subtasks": [{}]},
                                    headers={"Idempotency-Key": "has space"})
    assert_error(response, 422, 4001)


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_failed_task_refunds_exactly_once_when_executors_and_rescuer_race(
    api: RunningApi, api_settings: Settings, client: Client, db: Conn, database_url: str
) -> None:
    """Two executors fail their subtasks, the rescuer times out the tasks nobody started and the
    API cancels, all at once, for 20 tasks: each task is refunded once, and only once."""
    tasks = 20
    put_account(client, "alice", quota=tasks)
    c = client("alice")
    ids = [create(c, subtasks=[{"n": i} for i in range(6)]).json()["id"] for _ in range(tasks)]
    assert _quota(db, "alice") == 0
    stores = [await Store.open(database_url, max_size=4) for _ in range(3)]
    try:
        claimed = {
            name: await stores[k].claim_subtasks("standard", name, 2 * tasks, 60.0)
            for k, name in enumerate(["exec-a", "exec-b"])
        }
        assert sum(len(v) for v in claimed.values()) == 4 * tasks
        start = anyio.Event()

        async def executor(k: int, name: str) -> None:
            await start.wait()
            for s in claimed[name]:  # one statement per subtask: many interleavings
                await stores[k].record_outcomes(name, [Outcome(s.id, s.attempt, "failed",
                                                               error="boom")])

        async def rescuer() -> None:
            await start.wait()
            while await maintenance.fail_unstarted_tasks(stores[2], "standard", 0.0, limit=3):
                pass

        async def canceller() -> None:
            await start.wait()
            async with httpx.AsyncClient(base_url=api.url, timeout=60,
                                         headers=dict(c.headers)) as ac:
                for task_id in ids:
                    response = await ac.post(f"/v1/tasks/{task_id}/cancel")
                    assert response.status_code in (200, 409), response.text

        async with anyio.create_task_group() as tg:
            tg.start_soon(executor, 0, "exec-a")
            tg.start_soon(executor, 1, "exec-b")
            tg.start_soon(rescuer)
            tg.start_soon(canceller)
            start.set()
    finally:
        for s in stores:
            await s.close()
    statuses = db.execute("SELECT status, count(*) FROM taskd.tasks GROUP BY status").fetchall()
    assert statuses == [("failed", tasks)]
    refunds = db.execute("SELECT task_id, count(*) FROM taskd.quota_ledger"
                         " WHERE reason = 'refund' GROUP BY task_id").fetchall()
    assert sorted(r[0] for r in refunds) == sorted(ids) and {r[1] for r in refunds} == {1}
    assert _quota(db, "alice") == tasks
    assert _ledger_sum(db, "alice") == tasks


def _fail_all(db: Conn, task_id: int) -> None:
    db.execute("UPDATE taskd.subtasks SET status = 'failed', error = 'boom',"
               " completed_at = now() WHERE task_id = %s", (task_id,))


def _ledger_matches_accounts(db: Conn) -> None:
    """Every account's ledger sums to its quota; every refund gives back one charge of its
    task, and no charge is refunded twice."""
    mismatched = db.execute(
        "SELECT a.user_id, a.quota_remaining, coalesce(sum(l.delta), 0)"
        " FROM taskd.accounts a LEFT JOIN taskd.quota_ledger l ON l.user_id = a.user_id"
        " GROUP BY a.user_id HAVING a.quota_remaining <> coalesce(sum(l.delta), 0)").fetchall()
    assert mismatched == []
    bad_refunds = db.execute(
        "SELECT r.id FROM taskd.quota_ledger r LEFT JOIN taskd.quota_ledger c"
        " ON c.id = r.refund_of WHERE r.reason = 'refund' AND (c.id IS NULL"
        " OR c.task_id IS DISTINCT FROM r.task_id OR c.delta <> -r.delta)").fetchall()
    assert bad_refunds == []
    twice = db.execute("SELECT refund_of FROM taskd.quota_ledger WHERE refund_of IS NOT NULL"
                       " GROUP BY refund_of HAVING count(*) > 1").fetchall()
    assert twice == []


def test_a_retried_task_that_fails_again_is_refunded_again(client: Client, db: Conn) -> None:
    """create -> fail -> refund -> retry (charged again) -> fail -> refund: every charge is
    matched by one refund, and the ledger sums to the account's quota throughout."""
    put_account(client, "alice", quota=1)
    c = client("alice")
    task_id = create(c).json()["id"]
    assert_error(c.post(f"/v1/tasks/{task_id}/retry"), 409, 4009, "no failed subtasks")
    assert c.get("/v1/accounts/alice").json()["quota_remaining"] == 0
    _fail_all(db, task_id)  # the task ends failed: the trigger refunds its unit
    assert c.get("/v1/accounts/alice").json()["quota_remaining"] == 1
    _ledger_matches_accounts(db)
    assert c.post(f"/v1/tasks/{task_id}/retry").json() == {
        "id": task_id, "retried": 1, "quota_taken": 1}
    # Nothing of it ever started (the test failed it by hand): pending again, as a new task is.
    assert c.get(f"/v1/tasks/{task_id}").json()["status"] == "pending"
    assert c.get("/v1/accounts/alice").json()["quota_remaining"] == 0
    _ledger_matches_accounts(db)
    _fail_all(db, task_id)  # fails again: the second charge is refunded in turn
    assert c.get("/v1/accounts/alice").json()["quota_remaining"] == 1
    _ledger_matches_accounts(db)
    ledger = db.execute("SELECT reason, delta, refund_of IS NOT NULL FROM taskd.quota_ledger"
                        " WHERE task_id = %s ORDER BY id", (task_id,)).fetchall()
    assert ledger == [("deduct", -1, False), ("refund", 1, True),
                      ("deduct", -1, False), ("refund", 1, True)]
    # A third round charges and refunds once more; quota_cost counts the charges.
    assert c.post(f"/v1/tasks/{task_id}/retry").json()["quota_taken"] == 1
    _fail_all(db, task_id)
    assert c.get("/v1/accounts/alice").json()["quota_remaining"] == 1
    assert db.execute("SELECT quota_cost FROM taskd.tasks WHERE id = %s",
                      (task_id,)).fetchone() == (3,)
    _ledger_matches_accounts(db)


def test_a_retry_while_the_charge_is_held_takes_nothing(client: Client, db: Conn) -> None:
    """A subtask failed but the task runs on (not ended, not refunded): retrying its failed
    subtasks takes nothing more, and its end refunds the one charge once."""
    put_account(client, "alice", quota=2)
    c = client("alice")
    task_id = create(c, subtasks=[{"n": 1}, {"n": 2}]).json()["id"]
    first = db.execute("SELECT min(id) FROM taskd.subtasks WHERE task_id = %s",
                       (task_id,)).fetchone()
    assert first is not None
    db.execute("UPDATE taskd.subtasks SET status = 'failed', error = 'boom',"
               " completed_at = now() WHERE id = %s", first)
    assert c.post(f"/v1/tasks/{task_id}/retry").json()["quota_taken"] == 0
    assert c.get("/v1/accounts/alice").json()["quota_remaining"] == 1
    _fail_all(db, task_id)
    assert c.get("/v1/accounts/alice").json()["quota_remaining"] == 2
    _ledger_matches_accounts(db)


def test_an_admins_free_retry_is_not_refunded(client: Client, db: Conn) -> None:
    put_account(client, "alice", quota=1)
    c = client("alice")
    task_id = create(c).json()["id"]
    _fail_all(db, task_id)
    assert client("root", admin=True).post(f"/v1/tasks/{task_id}/retry").json()[
        "quota_taken"] == 0
    _fail_all(db, task_id)  # nothing was charged for this run: nothing comes back
    assert c.get("/v1/accounts/alice").json()["quota_remaining"] == 1
    _ledger_matches_accounts(db)
