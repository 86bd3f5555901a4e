"""The task-end outbox: targets checked at submit, one row per target per task end written by
the statement that ends the task, queue defaults and the operator's target, retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from taskd.errors import InvalidInput
from taskd.queue import maintenance, migrations
from taskd.queue.store import Store
from taskd.types import NotifyRoute, Outcome
from tests.factories import submit
from tests.integration.api_support import Client, assert_error, create, put_account

HOOK = "https://hooks.example/taskd"
OPS = "https://ops.example/alerts"
LEASE = 30.0

pytestmark = pytest.mark.anyio


async def outbox(conn: Any) -> list[tuple[Any, ...]]:
    cur = await conn.execute(
        "SELECT task_id, url, event, status FROM taskd.notifications ORDER BY task_id, url")
    return list(await cur.fetchall())


async def dead_and_pending(store: Store, conn: Any) -> list[int]:
    """Three failed tasks with a target: notifications 1 and 2 dead, 3 pending."""
    tasks = [await submit(store, 1, notify_url=HOOK) for _ in range(3)]
    claimed = await store.claim_subtasks("standard", "e1", 3, 30.0)
    await store.record_outcomes("e1", [Outcome(c.id, 1, "failed", error="KeyError: k")
                                       for c in claimed])
    await conn.execute("UPDATE taskd.notifications SET status = 'dead', last_status_code = 404,"
                       " last_error = 'HTTP 404 Not Found', attempts = 1 WHERE id <= 2")
    return tasks


async def configure(conn: Any, *, allow_http_private: bool | None = None,
                    routes: list[NotifyRoute] | None = None) -> None:
    await migrations.migrate(conn, allow_http_private=allow_http_private, notify_routes=routes)


async def run_all(store: Store, verdict: str, n: int, *, queue: str = "standard") -> None:
    """Claim n subtasks and record the same outcome for each, in one batch (the completer's)."""
    claimed = await store.claim_subtasks(queue, "e1", n, LEASE)
    assert len(claimed) == n
    error = "ValueError: boom" if verdict == "failed" else None
    await store.record_outcomes("e1", [Outcome(c.id, c.attempt, verdict, error=error)  # type: ignore[arg-type]
                                       for c in claimed])


async def test_a_failed_task_gets_one_row_for_its_target_in_the_completers_batch(
    store: Store, conn: Any
) -> None:
    failing = await submit(store, 3, notify_url=HOOK)
    await submit(store, 1, notify_url=HOOK, queue="lumina", kind="lumina")
    # Two of three fail in one batch: not the end yet, no row.
    claimed = await store.claim_subtasks("standard", "e1", 3, LEASE)
    await store.record_outcomes("e1", [Outcome(c.id, 1, "failed", error="ValueError: x")
                                       for c in claimed[:2]])
    assert await outbox(conn) == []
    # The last one ends the task: exactly one row, failed.
    await store.record_outcomes("e1", [Outcome(claimed[2].id, 1, "completed")])
    assert await outbox(conn) == [(failing, HOOK, "failed", "pending")]
    # A task that completes, with the default notify_on (failed): no row.
    await run_all(store, "completed", 1, queue="lumina")
    assert await outbox(conn) == [(failing, HOOK, "failed", "pending")]


async def test_notify_on_picks_the_ends_reported(store: Store, conn: Any) -> None:
    done = await submit(store, 1, notify_url=HOOK, notify_on=["completed", "cancelled"])
    failed = await submit(store, 1, notify_url=HOOK, notify_on=["completed"])
    await run_all(store, "completed", 1)
    await run_all(store, "failed", 1)
    cancelled = await submit(store, 1, notify_url=HOOK, notify_on=["cancelled"])
    await store.cancel_task(cancelled)
    assert await outbox(conn) == [(done, HOOK, "completed", "pending"),
                                  (cancelled, HOOK, "cancelled", "pending")]
    assert failed not in [row[0] for row in await outbox(conn)]


async def test_the_outbox_row_commits_or_rolls_back_with_the_tasks_end(
    database_url: str, store: Store, conn: Any
) -> None:
    task = await submit(store, 1, notify_url=HOOK)
    async with await psycopg.AsyncConnection.connect(database_url) as other:
        async with other.transaction(force_rollback=True):
            await other.execute("UPDATE taskd.subtasks SET status = 'failed', error = 'x',"
                                " completed_at = now() WHERE task_id = %s", (task,))
            inside = await (await other.execute(
                "SELECT count(*) FROM taskd.notifications WHERE task_id = %s", (task,))).fetchone()
            assert inside == (1,)
    assert await outbox(conn) == []
    status = await (await conn.execute("SELECT status FROM taskd.tasks WHERE id = %s",
                                       (task,))).fetchone()
    assert status == ("pending",)


async def test_a_retried_task_that_fails_again_is_a_second_end(store: Store, conn: Any) -> None:
    task = await submit(store, 1, notify_url=HOOK)
    await run_all(store, "failed", 1)
    assert await store.retry_task(task) == 1
    await run_all(store, "failed", 1)
    assert [row[:3] for row in await outbox(conn)] == [(task, HOOK, "failed")] * 2


async def test_queue_defaults_and_the_operators_target(store: Store, conn: Any) -> None:
    await configure(conn, routes=[
        NotifyRoute("standard", "https://queue.example/default", ("failed", "completed")),
        NotifyRoute("*", OPS, ("failed",)),
    ])
    plain = await submit(store, 1)                       # the queue's default + the operator's
    own = await submit(store, 1, notify_url=HOOK)         # its own replaces the queue's
    same = await submit(store, 1, notify_url=OPS)         # one row per distinct URL
    await run_all(store, "failed", 3)
    ok = await submit(store, 1)                           # completed: the queue's default only
    await run_all(store, "completed", 1)
    assert [row[:3] for row in await outbox(conn)] == [
        (plain, OPS, "failed"), (plain, "https://queue.example/default", "failed"),
        (own, HOOK, "failed"), (own, OPS, "failed"),
        (same, OPS, "failed"),
        (ok, "https://queue.example/default", "completed"),
    ]
    # migrate makes the routes exactly the settings': none left, none written.
    await configure(conn, routes=[])
    cur = await conn.execute("SELECT count(*) FROM taskd.notify_routes")
    assert await cur.fetchone() == (0,)


async def test_a_route_the_database_refuses_writes_nothing(store: Store, conn: Any) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="plain http"):
        await configure(conn, routes=[NotifyRoute("*", "http://10.1.2.3/x", ("failed",))])
    cur = await conn.execute("SELECT count(*) FROM taskd.notify_routes")
    assert await cur.fetchone() == (0,)


@pytest.mark.parametrize(("url", "notify_on", "field", "words"), [
    ("not a url", None, "notify_url", "scheme"),
    ("ftp://files.example/x", None, "notify_url", "scheme 'ftp'"),
    ("https://", None, "notify_url", "no valid host"),
    ("https://user:secret@hooks.example/x", None, "notify_url", "credentials"),
    ("https://hooks.example:99999/x", None, "notify_url", "not a URL"),
    ("https://hooks.example/" + "x" * 2000, None, "notify_url", "at most 2000"),
    (HOOK, ["done"], "notify_on", "failed, completed, cancelled"),
    (HOOK, [], "notify_on", "failed, completed, cancelled"),
    (None, ["failed"], "notify_on", "needs a notify_url"),
])
async def test_an_invalid_target_is_refused_naming_the_field_and_nothing_is_written(
    store: Store, conn: Any, url: str | None, notify_on: list[str] | None, field: str,
    words: str,
) -> None:
    with pytest.raises(InvalidInput, match=words) as caught:
        await submit(store, 1, notify_url=url, notify_on=notify_on)
    assert caught.value.field == field
    cur = await conn.execute("SELECT count(*) FROM taskd.tasks")
    assert await cur.fetchone() == (0,)


@pytest.mark.parametrize(("url", "notify_on", "words"), [
    ("ftp://files.example/x", None, "scheme ftp"),
    ("http://10.0.0.5/hook", None, "plain http"),
    ("https://a:b@hooks.example/x", None, "credentials"),
    (HOOK, ["done"], "must list one or more"),
    (None, ["failed"], "needs a notify_url"),
])
async def test_sql_clients_get_the_same_refusals_from_submit_task(
    conn: Any, url: str | None, notify_on: list[str] | None, words: str,
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=words) as caught:
        await conn.execute(
            "SELECT taskd.submit_task('standard', 'noop', '[{}]', notify_url => %s,"
            " notify_on => %s::text[])", (url, notify_on))
    assert caught.value.diag.column_name == ("notify_on" if "notify_on" in words or notify_on
                                             else "notify_url")
    cur = await conn.execute("SELECT count(*) FROM taskd.tasks")
    assert await cur.fetchone() == (0,)


async def test_plain_http_needs_the_setting_and_a_private_address(
    store: Store, conn: Any
) -> None:
    with pytest.raises(InvalidInput, match="plain http"):
        await submit(store, 1, notify_url="http://127.0.0.1:8000/hook")
    await configure(conn, allow_http_private=True)
    for url in ("http://127.0.0.1:8000/hook", "http://localhost/x", "http://10.2.3.4/x",
                "http://172.16.0.1/x", "http://192.168.1.1/x", "http://[::1]:9000/x",
                "https://public.example/x"):
        await submit(store, 1, notify_url=url)
    for url in ("http://8.8.8.8/x", "http://hooks.example/x", "http://169.254.169.254/x",
                "http://172.32.0.1/x"):
        with pytest.raises(InvalidInput, match="not a loopback or private address"):
            await submit(store, 1, notify_url=url)
    cur = await conn.execute("SELECT count(*) FROM taskd.tasks")
    assert await cur.fetchone() == (7,)


async def test_retention_keeps_a_task_while_its_notification_is_undelivered(
    store: Store, conn: Any
) -> None:
    waiting = await submit(store, 1, notify_url=HOOK)
    delivered = await submit(store, 1, notify_url=HOOK)
    await run_all(store, "failed", 2)
    await conn.execute("UPDATE taskd.notifications SET status = 'delivered' WHERE task_id = %s",
                       (delivered,))
    later = await store.database_now() + timedelta(days=30)
    subtasks, tasks = await maintenance.delete_finished(store, 86400.0, now=later)
    assert (subtasks, tasks) == (1, 1)
    cur = await conn.execute("SELECT id FROM taskd.tasks")
    assert await cur.fetchall() == [(waiting,)]
    # The delivered one went with its task; the undelivered one is still there.
    assert [row[0] for row in await outbox(conn)] == [waiting]
    await conn.execute("UPDATE taskd.notifications SET status = 'dead'")
    assert await maintenance.delete_finished(store, 86400.0, now=later) == (1, 1)
    assert await outbox(conn) == []


def test_the_api_takes_a_target_and_refuses_a_bad_one_with_422(client: Client, db: Any) -> None:
    put_account(client, "alice", quota=5)
    response = create(client("alice"), subtasks=[{"n": 1}], notify_url=HOOK,
                      notify_on=["failed", "completed"])
    assert response.status_code == 201, response.text
    row = db.execute("SELECT notify_url, notify_on FROM taskd.tasks WHERE id = %s",
                     (response.json()["id"],)).fetchone()
    assert row == (HOOK, ["failed", "completed"])
    before = db.execute("SELECT count(*) FROM taskd.tasks").fetchone()
    for body in ({"notify_url": "ftp://x.example/"}, {"notify_url": HOOK, "notify_on": ["x"]},
                 {"notify_url": "http://127.0.0.1/x"}):
        error = assert_error(create(client("alice"), subtasks=[{"n": 1}], **body), 422, 4001)
        assert any(d["field"].startswith("notify_") for d in error["details"]), error
    assert db.execute("SELECT count(*) FROM taskd.tasks").fetchone() == before


async def test_admins_list_and_redeliver_through_the_api(
    store: Store, conn: Any, client: Client
) -> None:
    tasks = await dead_and_pending(store, conn)
    admin = client("root", admin=True)
    listed = admin.get("/v1/admin/notifications", params={"status": "dead"})
    assert listed.status_code == 200, listed.text
    assert [(n["id"], n["task_id"], n["last_status_code"]) for n in listed.json()] == [
        (2, tasks[1], 404), (1, tasks[0], 404)]
    assert_error(client("alice").get("/v1/admin/notifications"), 403, 4003)
    assert_error(client("alice").post("/v1/admin/notifications/redeliver",
                                      json={"all_dead": True}), 403, 4003)
    assert_error(admin.post("/v1/admin/notifications/redeliver", json={}), 422, 4001)
    again = admin.post("/v1/admin/notifications/redeliver", json={"task_id": tasks[0]})
    assert again.json() == {"redelivered": [1]}
    again = admin.post("/v1/admin/notifications/redeliver", json={"all_dead": True})
    assert again.json() == {"redelivered": [2]}
