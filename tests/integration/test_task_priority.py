"""A task's priority after submit: taskd.set_task_priority, taskd.queue.tasks and
``PATCH /v1/tasks/{id}``. Its pending subtasks move in the claim order at once."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from taskd.errors import InvalidInput, TaskFinished, TaskNotFound
from taskd.queue.store import Store
from taskd.queue.tasks import set_task_priority
from taskd.types import Outcome
from tests import factories
from tests.integration.api_support import Client, assert_error, create, put_account
from tests.integration.test_hostile_api import table_snapshot

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.mark.anyio
async def test_raising_a_priority_moves_the_pending_subtasks_ahead_at_once(store: Store) -> None:
    early = await factories.submit(store, 3, priority=5)
    late = await factories.submit(store, 3, priority=0)
    running = await store.claim_subtasks("standard", "x", 1, 60)  # one of early's
    assert running[0].task_id == early
    moved = await set_task_priority(store, late, 100)
    assert moved == 3
    claimed = await store.claim_subtasks("standard", "x", 3, 60)
    assert [s.task_id for s in claimed] == [late] * 3
    assert {s.priority for s in claimed} == {100}
    task = await store.get_task(late)
    assert task is not None and task.priority == 100


@pytest.mark.anyio
async def test_processing_subtasks_take_the_new_priority_for_their_retry(store: Store) -> None:
    task_id = await factories.submit(store, 1, priority=1)
    [claimed] = await store.claim_subtasks("standard", "x", 1, 60)
    assert await set_task_priority(store, task_id, -7) == 1
    await store.record_outcomes("x", [Outcome(claimed.id, claimed.attempt, "retry",
                                              error="again", delay=0.0)])
    [again] = await store.claim_subtasks("standard", "x", 1, 60)
    assert (again.id, again.priority) == (claimed.id, -7)


@pytest.mark.anyio
async def test_set_task_priority_refuses_what_it_cannot_do(store: Store, conn: Any) -> None:
    task_id = await factories.submit(store, 1)
    for bad in (1001, -1001, True, 2**40):
        with pytest.raises(InvalidInput, match=r"outside -1000\.\.1000"):
            await set_task_priority(store, task_id, bad)
    with pytest.raises(TaskNotFound):
        await set_task_priority(store, 424242, 3)
    [claimed] = await store.claim_subtasks("standard", "x", 1, 60)
    await store.record_outcomes("x", [Outcome(claimed.id, claimed.attempt, "completed")])
    before = await factories.table_counts(conn)
    with pytest.raises(TaskFinished) as ended:
        await set_task_priority(store, task_id, 3)
    assert ended.value.status == "completed"
    assert "has already ended (completed)" in str(ended.value)
    assert await factories.table_counts(conn) == before
    task = await store.get_task(task_id)
    assert task is not None and task.priority == 0


# (arguments, SQLSTATE, a word the message must contain)
SQL_CASES: list[tuple[str, str, str]] = [
    ("{task}, 1001", "22023", "priority"),
    ("{task}, -1001", "22023", "priority"),
    ("{task}, NULL", "22023", "priority"),
    ("{task}, 2147483648", "42883", "does not exist"),  # no integer: no such function
    ("424242, 1", "P0002", "no task 424242"),
    ("NULL, 1", "P0002", "no task NULL"),
    ("{ended}, 1", "55000", "already ended"),
]


@pytest.mark.parametrize(("args", "sqlstate", "word"), SQL_CASES, ids=[c[0] for c in SQL_CASES])
def test_sql_set_task_priority_refuses_hostile_arguments_and_writes_nothing(
    db: Conn, args: str, sqlstate: str, word: str
) -> None:
    task = db.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]')").fetchone()
    ended = db.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]')").fetchone()
    assert task is not None and ended is not None
    db.execute("UPDATE taskd.subtasks SET status = 'cancelled', completed_at = now()"
               " WHERE task_id = %s", ended)
    before = table_snapshot(db)
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT taskd.set_task_priority("  # type: ignore[arg-type]
                   + args.format(task=task[0], ended=ended[0]) + ")")
    assert caught.value.sqlstate == sqlstate, (caught.value.sqlstate, str(caught.value))
    assert word.lower() in str(caught.value).lower(), str(caught.value)
    if sqlstate == "55000":
        assert caught.value.diag.message_detail == "cancelled"
    assert table_snapshot(db) == before


def test_sql_set_task_priority_wakes_the_queue_once(database_url: str, db: Conn) -> None:
    task = db.execute("SELECT taskd.submit_task('standard', 'noop', '[{}, {}]')").fetchone()
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN taskd")
        assert db.execute("SELECT taskd.set_task_priority(%s, 9)", task).fetchone() == (2,)
        # Unchanged: nothing moves, nobody is woken.
        assert db.execute("SELECT taskd.set_task_priority(%s, 9)", task).fetchone() == (0,)
        heard = [n.payload for n in listener.notifies(timeout=0.5)]
    assert heard == ["standard"]


def test_patch_changes_the_priority_for_the_owner_and_admins(client: Client, db: Conn) -> None:
    put_account(client, "alice")
    put_account(client, "bob")
    task_id = create(client("alice"), subtasks=[{"n": 1}, {"n": 2}]).json()["id"]
    response = client("alice").patch(f"/v1/tasks/{task_id}", json={"priority": 700})
    assert response.status_code == 200, response.text
    assert response.json()["priority"] == 700
    rows = db.execute("SELECT DISTINCT priority FROM taskd.task_subtasks(%s)", (task_id,))
    assert rows.fetchall() == [(700,)]
    admin = client("root", admin=True).patch(f"/v1/tasks/{task_id}", json={"priority": -3})
    assert admin.status_code == 200 and admin.json()["priority"] == -3
    before = table_snapshot(db)
    # Another user's task is answered as a missing one.
    assert_error(client("bob").patch(f"/v1/tasks/{task_id}", json={"priority": 1}),
                 404, 4004, "task not found")
    assert_error(client("bob").patch("/v1/tasks/424242", json={"priority": 1}),
                 404, 4004, "task not found")
    assert table_snapshot(db) == before


@pytest.mark.parametrize("body", [
    {"priority": 1001}, {"priority": -1001}, {"priority": "5"}, {"priority": 5.0},
    {"priority": True}, {"priority": None}, {}, {"priority": 1, "name": "x"},
    {"priority": 2**70},
], ids=json.dumps)
def test_patch_refuses_a_bad_body_with_422_and_writes_nothing(
    client: Client, db: Conn, body: dict[str, Any]
) -> None:
    put_account(client, "alice")
    task_id = create(client("alice")).json()["id"]
    before = table_snapshot(db)
    error = assert_error(client("alice").patch(f"/v1/tasks/{task_id}", json=body), 422, 4001)
    assert error["details"][0]["field"] in ("priority", "name", "request")
    assert table_snapshot(db) == before


def test_patch_of_an_ended_task_is_409(client: Client, db: Conn) -> None:
    put_account(client, "alice")
    task_id = create(client("alice")).json()["id"]
    db.execute("UPDATE taskd.subtasks SET status = 'failed', error = 'x', completed_at = now()"
               " WHERE task_id = %s", (task_id,))
    error = assert_error(client("alice").patch(f"/v1/tasks/{task_id}", json={"priority": 5}),
                         409, 4009, "already ended (failed)")
    assert error["details"] == {"status": "failed"}
