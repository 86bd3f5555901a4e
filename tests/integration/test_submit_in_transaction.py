"""The Python client submits inside the caller's transaction (sync and async): the task
commits or rolls back with the application's own rows, and executors hear of it at commit."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from taskd.errors import InvalidInput
from taskd.queue import submission
from taskd.queue.store import Store

pytestmark = pytest.mark.anyio
Conn = psycopg.Connection[tuple[Any, ...]]


class Boom(Exception):
    pass


def counts(db: Conn) -> tuple[int, int, int]:
    row = db.execute("SELECT (SELECT count(*) FROM taskd.tasks),"
                     " (SELECT count(*) FROM taskd.subtasks), (SELECT count(*) FROM orders)"
                     ).fetchone()
    assert row is not None
    return row  # type: ignore[return-value]


@pytest.fixture
def db(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        yield conn


async def test_async_rollback_leaves_no_task_and_commit_keeps_both(
    store: Store, database_url: str, db: Conn,
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        async def order_then_fail() -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO orders VALUES (1)")
                task_id = await store.submit("standard", "noop", [{"order": 1}, {}], conn=conn)
                # Inside the transaction the task is there ...
                cur = await conn.execute("SELECT total FROM taskd.tasks WHERE id = %s",
                                         (task_id,))
                assert await cur.fetchone() == (2,)
                assert counts(db) == (0, 0, 0)  # ... and nobody else sees it
                raise Boom

        with pytest.raises(Boom):
            await order_then_fail()
        assert counts(db) == (0, 0, 0)
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES (2)")
            made = await submission.submit_async(conn, "standard", "noop", [{"order": 2}])
        assert made.existing is False
    assert counts(db) == (1, 1, 1)


def test_sync_rollback_leaves_no_task(database_url: str, db: Conn) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO orders VALUES (1)")
        submission.submit(conn, "standard", "noop", [{"order": 1}])
        conn.rollback()
        assert counts(db) == (0, 0, 0)
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (2)")
            task = submission.submit(conn, "standard", "noop", [{"order": 2}], priority=5)
    assert counts(db) == (1, 1, 1)
    assert db.execute("SELECT priority FROM taskd.tasks WHERE id = %s",
                      (task.task_id,)).fetchone() == (5,)


def test_executors_are_woken_at_commit_not_before(database_url: str, db: Conn) -> None:
    db.execute("LISTEN taskd")
    with psycopg.connect(database_url) as conn:
        submission.submit(conn, "standard", "noop", [{}])
        # Not committed: no wake-up reaches a listener.
        assert list(db.notifies(timeout=0.3, stop_after=1)) == []
        conn.commit()
    heard = list(db.notifies(timeout=10, stop_after=1))
    assert [(n.channel, n.payload) for n in heard] == [("taskd", "standard")]


def test_bad_input_is_refused_before_anything_is_sent(database_url: str, db: Conn) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO orders VALUES (1)")
        with pytest.raises(InvalidInput, match="priority 5000 is outside") as caught:
            submission.submit(conn, "standard", "noop", [{}], priority=5000)
        assert caught.value.field == "priority"
        # Nothing was sent: the caller's transaction is intact and commits.
        conn.commit()
    assert counts(db) == (0, 0, 1)


def test_a_refusal_by_the_database_is_translated(database_url: str, db: Conn) -> None:
    # Past the client's own checks (a limit only the server knows): taskd's error, chained.
    db.execute("UPDATE taskd.limits SET max_payload_bytes = 10")
    with psycopg.connect(database_url) as conn:
        with pytest.raises(InvalidInput, match=r"payloads\[0\] is larger than 10 bytes"):
            submission.submit(conn, "standard", "noop", [{"text": "x" * 20}])
        conn.rollback()
    assert counts(db) == (0, 0, 0)
