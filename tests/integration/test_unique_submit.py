"""Unique submissions: a key held by a task returns that task, on every path, and never fails
the caller's transaction; 50 racing submitters make one task."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from taskd.errors import InvalidInput
from taskd.queue import submission
from taskd.queue.store import Store
from tests.integration.api_support import Client, put_account

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]


def submit(db: Conn, key: str | None, scope: str | None = None, queue: str = "standard") -> int:
    row = db.execute("SELECT taskd.submit_task(%s, 'noop', '[{}]', unique_key => %s,"
                     " unique_scope => %s)", (queue, key, scope)).fetchone()
    assert row is not None
    return int(row[0])


def finish(db: Conn, task_id: int) -> None:
    db.execute("UPDATE taskd.subtasks SET status = 'completed', completed_at = now()"
               " WHERE task_id = %s", (task_id,))


def tasks(db: Conn) -> int:
    row = db.execute("SELECT count(*) FROM taskd.tasks").fetchone()
    assert row is not None
    return int(row[0])


def test_a_key_is_held_while_its_task_is_unfinished(db: Conn) -> None:
    first = submit(db, "report:42")
    assert submit(db, "report:42") == first
    assert submit(db, "report:43") != first
    finish(db, first)
    assert db.execute("SELECT status FROM taskd.tasks WHERE id = %s", (first,)).fetchone() == (
        "completed",)
    again = submit(db, "report:42")
    assert again != first and submit(db, "report:42") == again
    assert submit(db, None) != submit(db, None)  # no key: no uniqueness
    assert tasks(db) == 5


def test_a_period_and_forever(db: Conn) -> None:
    hourly = submit(db, "hourly", "1 hour")
    finish(db, hourly)
    assert submit(db, "hourly", "1 hour") == hourly  # ended, but within its hour
    # The hour passes (moved back in the row, the database clock is not mocked).
    db.execute("UPDATE taskd.unique_keys SET expires_at = now() - interval '1 second'")
    assert submit(db, "hourly", "1 hour") != hourly
    once = submit(db, "once", "forever")
    finish(db, once)
    assert submit(db, "once", "forever") == once
    assert submit(db, "once") == once  # the holder's scope decides


def test_a_duplicate_never_fails_the_callers_transaction(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        first = submit(conn, "k")
        conn.execute("CREATE TEMPORARY TABLE app_rows (n int)")
        assert submit(conn, "k") == first  # same transaction
        conn.execute("INSERT INTO app_rows VALUES (1)")
        conn.commit()
        assert submit(conn, "k") == first  # a later transaction
        conn.execute("INSERT INTO app_rows VALUES (2)")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM app_rows").fetchone() == (2,)


@pytest.mark.parametrize(("key", "scope", "says"), [
    ("x" * 201, None, "unique_key is 201 characters; it must have 1 to 200"),
    ("", None, "unique_key is 0 characters"),
    ("k", "abc", "unique_scope 'abc' is not unfinished, forever or a positive interval"),
    ("k", "-1 hour", "unique_scope '-1 hour' is not unfinished"),
    ("k", "0 seconds", "is not unfinished"),
    ("k", "178000000 years", "is not unfinished"),  # its end is past the last timestamp
    ("k", "infinity", "is not unfinished"),
    (None, "forever", "unique_scope needs a unique_key"),
])
def test_hostile_keys_and_scopes_are_refused_in_sql_writing_nothing(
    db: Conn, key: str | None, scope: str | None, says: str,
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=says):
        submit(db, key, scope)
    assert tasks(db) == 0
    assert db.execute("SELECT count(*) FROM taskd.unique_keys").fetchone() == (0,)


def test_fifty_concurrent_submitters_make_one_task(database_url: str, db: Conn) -> None:
    conns = [psycopg.connect(database_url, autocommit=True) for _ in range(50)]
    try:
        start = threading.Barrier(50)
        ids: list[int] = []
        errors: list[BaseException] = []

        def one(conn: Conn) -> None:
            try:
                start.wait(timeout=30)
                ids.append(submit(conn, "nightly-import"))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [] and len(ids) == 50
        assert len(set(ids)) == 1 and tasks(db) == 1
    finally:
        for c in conns:
            c.close()


async def test_the_python_client_and_the_callers_connection(
    store: Store, database_url: str, db: Conn,
) -> None:
    first = await store.submit("standard", "noop", [{}], unique_key="client")
    assert await store.submit("standard", "noop", [{}], unique_key="client") == first
    assert await store.submit("standard", "noop", [{}], unique_key="period",
                              unique_scope=timedelta(hours=1)) != first
    with psycopg.connect(database_url) as conn:
        made = submission.submit(conn, "standard", "noop", [{}], unique_key="client")
        assert made == submission.Submitted(first, existing=True)
    with pytest.raises(InvalidInput, match="unique_key is 201 characters") as caught:
        await store.submit("standard", "noop", [{}], unique_key="k" * 201)
    assert caught.value.field == "unique_key"
    with pytest.raises(InvalidInput, match="unique_scope"):
        await store.submit("standard", "noop", [{}], unique_key="k", unique_scope="abc")
    assert tasks(db) == 2


def test_the_cli(database_url: str, db: Conn) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskd", "submit", *args], capture_output=True, text=True,
            timeout=60, env={"TASKD_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
            check=False)

    first, second = cli("--unique-key", "cli"), cli("--unique-key", "cli")
    assert first.returncode == 0 and first.stdout == second.stdout, (first, second)
    bad = cli("--unique-key", "k" * 201)
    assert bad.returncode == 2 and "unique_key is 201 characters" in bad.stderr
    bad = cli("--unique-key", "k", "--unique-scope", "soon")
    assert bad.returncode == 2 and "unique_scope 'soon'" in bad.stderr
    assert tasks(db) == 1


def test_the_api_takes_no_quota_for_a_duplicate_and_keys_are_per_user(
    client: Client, db: Conn,
) -> None:
    put_account(client, "alice", quota=5)
    put_account(client, "bob", quota=5)
    body = {"kind": "noop", "subtasks": [{}], "unique_key": "daily"}
    first = client("alice").post("/v1/tasks", json=body)
    assert first.status_code == 201, first.text
    again = client("alice").post("/v1/tasks", json=body)
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["id"] == first.json()["id"]
    bobs = client("bob").post("/v1/tasks", json=body)
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]
    assert db.execute("SELECT user_id, quota_remaining FROM taskd.accounts ORDER BY 1"
                      ).fetchall() == [("alice", 4), ("bob", 4)]
    too_long = client("alice").post("/v1/tasks", json={**body, "unique_key": "k" * 201})
    assert too_long.status_code == 422 and "unique_key" in too_long.text
    bad_scope = client("alice").post("/v1/tasks", json={**body, "unique_key": "other",
                                                        "unique_scope": "whenever"})
    assert bad_scope.status_code == 422 and "unique_scope 'whenever'" in bad_scope.text
    assert tasks(db) == 2


async def test_retention_deletes_keys_that_hold_nothing(store: Store, db: Conn) -> None:
    from taskd.queue import maintenance

    ended = submit(db, "ended")
    finish(db, ended)
    submit(db, "running")
    forever = submit(db, "kept", "forever")
    finish(db, forever)
    submit(db, "passed", "1 hour")
    db.execute("UPDATE taskd.unique_keys SET created_at = now() - interval '2 hours',"
               " expires_at = CASE WHEN scope = 'period' THEN now() - interval '1 hour' END")
    await maintenance.delete_finished(store, 60)
    left = db.execute("SELECT unique_key FROM taskd.unique_keys ORDER BY 1").fetchall()
    assert left == [("kept",), ("running",)]


def test_a_duplicate_keeps_the_notification_target_its_task_was_given(db: Conn) -> None:
    """submit_task takes a unique key and a notify_url together: the task the key returns keeps
    the target its own submitter set; a bad target is refused even for a duplicate."""
    sql = ("SELECT taskd.submit_task('standard', 'noop', '[{}]', unique_key => 'k',"
           " notify_url => %s, notify_on => %s)")
    row = db.execute(sql, ("https://hooks.example/first", ["failed"])).fetchone()
    assert row is not None
    again = db.execute(sql, ("https://hooks.example/second", ["completed"])).fetchone()
    assert again == row
    assert db.execute("SELECT notify_url, notify_on FROM taskd.tasks WHERE id = %s",
                      row).fetchone() == ("https://hooks.example/first", ["failed"])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="notify_url"):
        db.execute(sql, ("ftp://hooks.example/x", ["failed"]))
    assert tasks(db) == 1
