"""taskd.api_create_task (migration 0021): POST /v1/tasks's plain create in one call. Its answer
is the task as a read of it after the commit gives it; a refusal says why and writes nothing."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from taskd.queue.queries import load_queries

CALL = ("SELECT * FROM taskd.api_create_task(new_user_id => %s, new_queue => 'standard',"
        " new_kind => 'noop', new_payloads => %s::jsonb, new_name => 'n', new_priority => 7,"
        " new_params => '{\"p\": 1}'::jsonb, new_max_attempts => 3, new_traceparent => NULL,"
        " new_notify_url => NULL, new_notify_on => NULL, cost => 1, urls_limit => %s)")


def _counts(db: psycopg.Connection[tuple[Any, ...]]) -> tuple[Any, ...]:
    row = db.execute("SELECT (SELECT count(*) FROM taskd.tasks),"
                     " (SELECT count(*) FROM taskd.subtasks),"
                     " (SELECT count(*) FROM taskd.quota_ledger),"
                     " (SELECT array_agg((user_id, quota_remaining, updated_at) ORDER BY user_id)"
                     "    FROM taskd.accounts)::text").fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("urls_limit", [1000, 2])
def test_the_answer_is_the_task_as_read_after_the_commit(
    database_url: str, urls_limit: int
) -> None:
    payloads = [{"batch_size": 4, "image_url": "https://img.invalid/a.png"}, {"n": 2}, {"n": 3}]
    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute("INSERT INTO taskd.accounts (user_id, is_member, quota_remaining)"
                   " VALUES ('alice', true, 5)")
        call = db.execute(CALL, ("alice", json.dumps(payloads), urls_limit))
        made = call.fetchall()
        assert len(made) == 1
        assert made[0][:2] == (4, True)  # quota left, a member
        read = db.execute(load_queries()["api_task_detail"],  # type: ignore[arg-type]
                          {"id": made[0][2], "results_limit": 100, "urls_limit": urls_limit})
        # By name: api_task_detail lists kind before queue; the call answers in TaskDetail's.
        read_by_name = dict(zip([c.name for c in read.description or ()], read.fetchone() or (),
                                strict=True))
        answered = dict(zip([c.name for c in call.description or ()][2:], made[0][2:],
                            strict=True))
        assert answered == read_by_name
        task_id = answered["id"]
        assert read_by_name["quota_cost"] == 1 and read_by_name["batch_size"] == 4
        assert read_by_name["result_urls"] == [None] * min(3, urls_limit)
        assert db.execute("SELECT user_id, task_id, delta, reason FROM taskd.quota_ledger"
                          ).fetchall() == [("alice", task_id, -1, "deduct")]
        assert db.execute("SELECT quota_remaining FROM taskd.accounts").fetchone() == (4,)


@pytest.mark.parametrize(("account", "why"), [
    (None, (None, None)),
    ((False, 5), (5, False)),
    ((True, 0), (0, True)),
])
def test_a_refusal_says_why_and_writes_nothing(
    database_url: str, account: tuple[bool, int] | None, why: tuple[Any, Any]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as db:
        if account is not None:
            db.execute("INSERT INTO taskd.accounts (user_id, is_member, quota_remaining)"
                       " VALUES ('alice', %s, %s)", account)
        before = _counts(db)
        made = db.execute(CALL, ("alice", '[{"n": 1}]', 1000)).fetchall()
        assert len(made) == 1
        assert made[0][:2] == why
        assert set(made[0][2:]) == {None}
        assert _counts(db) == before
