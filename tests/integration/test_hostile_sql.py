"""Hostile input to ``taskd.submit_task``, the door for SQL clients, table-driven; and what
docs/sql.md promises them: ``taskd.task_subtasks`` reads through the id range, and
``taskd_task_end`` announces each task's end once.

Each call must fail with its SQLSTATE (22023 and a message naming the argument for the
function's own checks; PostgreSQL's own codes for input that never reaches it) and leave every
taskd table exactly as it was. These tests use only what docs/sql.md documents.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.test_hostile_api import table_snapshot

Conn = psycopg.Connection[tuple[Any, ...]]

CALL = ("SELECT taskd.submit_task(queue => %s::text, kind => %s::text, payloads => %s::jsonb,"
        " name => %s::text, priority => %s::integer, params => %s::jsonb,"
        " max_attempts => %s::integer)")
DEEP = 10_000

GOOD: dict[str, Any] = {"queue": "standard", "kind": "noop", "payloads": '[{"n": 1}]',
                        "name": "", "priority": "0", "params": "{}", "attempts": "3",
                        "limit": None}

# (id, overrides of GOOD, SQLSTATE, a word the message must contain)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("queue-null", {"queue": None}, "22023", "queue"),
    ("queue-sql", {"queue": "standard'; DROP TABLE taskd.tasks; --"}, "22023", "queue"),
    ("queue-uppercase", {"queue": "Standard"}, "22023", "queue"),
    ("queue-too-long", {"queue": "q" * 64}, "22023", "queue"),
    ("kind-null", {"kind": None}, "22023", "kind"),
    ("kind-sql", {"kind": "noop' OR '1'='1"}, "22023", "kind"),
    ("kind-empty", {"kind": ""}, "22023", "kind"),
    ("kind-unicode", {"kind": "n\u043eop"}, "22023", "kind"),  # a Cyrillic o
    ("kind-too-long", {"kind": "k" * 201}, "22023", "kind"),
    ("kind-newline", {"kind": "noop\n"}, "22023", "kind"),
    ("queue-newline", {"queue": "standard\n"}, "22023", "queue"),
    ("queue-digit-first", {"queue": "1standard"}, "22023", "queue"),
    ("priority-out-of-range", {"priority": "1001"}, "22023", "priority"),
    ("priority-null", {"priority": None}, "22023", "priority"),
    ("priority-beyond-32-bits", {"priority": str(2**40)}, "22003", "integer"),
    ("priority-beyond-64-bits", {"priority": str(2**70)}, "22003", "integer"),
    ("priority-text", {"priority": "high"}, "22P02", "integer"),
    ("priority-1e309", {"priority": "1e309"}, "22P02", "integer"),
    ("attempts-zero", {"attempts": "0"}, "22023", "max_attempts"),
    ("attempts-negative", {"attempts": "-2147483648"}, "22023", "max_attempts"),
    ("attempts-huge", {"attempts": "1001"}, "22023", "max_attempts"),
    ("params-array", {"params": "[]"}, "22023", "params"),
    ("params-null", {"params": None}, "22023", "params"),
    ("params-not-json", {"params": "{not json"}, "22P02", "json"),
    ("params-nul-escape", {"params": '{"x": "\\u0000"}'}, "22P05", "\\u0000"),
    ("params-lone-surrogate", {"params": '{"x": "\\ud800"}'}, "22P02", "Unicode"),
    ("params-1e309-is-a-number", {"params": '{"x": 1e309, "y": NaN}'}, "22P02", "json"),
    ("payloads-null", {"payloads": None}, "22023", "payloads"),
    ("payloads-object", {"payloads": '{"n": 1}'}, "22023", "payloads"),
    ("payloads-empty", {"payloads": "[]"}, "22023", "payloads"),
    ("payloads-of-numbers", {"payloads": "[1, 2]"}, "22023", "payloads[0]"),
    ("payloads-second-not-object", {"payloads": '[{}, "x"]'}, "22023", "payloads[1]"),
    ("payloads-truncated", {"payloads": '[{"n": 1}'}, "22P02", "json"),
    ("payloads-nul-escape", {"payloads": '[{"x": "\\u0000"}]'}, "22P05", "\\u0000"),
    ("payloads-too-many", {"payloads": "[" + ",".join(["{}"] * 100_001) + "]"}, "22023",
     "100000"),
    ("payload-too-large", {"payloads": '[{"x": "' + "a" * 2000 + '"}]', "limit": 1000},
     "22023", "larger than 1000 bytes"),
    ("payload-over-the-default-limit", {"payloads": '[{"x": "' + "a" * 1048576 + '"}]'},
     "22023", "larger than 1048576 bytes"),
    ("payloads-nested-100000", {"payloads": "[{\"x\": " + "[" * 100_000 + "]" * 100_000 + "}]"},
     "54001", "stack depth"),
]


@pytest.mark.parametrize(("name", "overrides", "sqlstate", "word"), CASES,
                         ids=[c[0] for c in CASES])
def test_submit_task_refuses_hostile_arguments_and_writes_nothing(
    db: Conn, name: str, overrides: dict[str, Any], sqlstate: str, word: str
) -> None:
    args = {**GOOD, **overrides}
    if args["limit"] is not None:  # the server's limit: its configuration, not an argument
        db.execute("UPDATE taskd.limits SET max_payload_bytes = %s", (args["limit"],))
    before = table_snapshot(db)
    with pytest.raises(psycopg.Error) as caught:
        db.execute(CALL, (args["queue"], args["kind"], args["payloads"], args["name"],
                          args["priority"], args["params"], args["attempts"]))
    assert caught.value.sqlstate == sqlstate, (caught.value.sqlstate, str(caught.value))
    assert word.lower() in str(caught.value).lower(), str(caught.value)
    assert table_snapshot(db) == before


def test_invalid_utf8_never_reaches_submit_task(db: Conn) -> None:
    """Bytes that are not UTF-8 fail at the conversion, before the function runs."""
    before = table_snapshot(db)
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT taskd.submit_task('standard', 'noop', "
                   "convert_from(%s::bytea, 'UTF8')::jsonb)", (b'[{"x": "\xff\xfe"}]',))
    assert caught.value.sqlstate == "22021"
    assert table_snapshot(db) == before


def test_sql_metacharacters_in_name_params_and_payloads_are_data(db: Conn) -> None:
    nasty = "'); DELETE FROM taskd.tasks; SELECT ('"
    task_id = db.execute(
        "SELECT taskd.submit_task('standard', 'noop', %s::jsonb, name => %s, "
        "params => %s::jsonb)",
        ('[{"q": "' + nasty + '"}]', nasty, '{"' + nasty + '": 1}')).fetchone()
    assert task_id is not None
    row = db.execute("SELECT t.name, t.user_id, t.params, s.payload FROM taskd.tasks t, "
                     "taskd.task_subtasks(t.id) s").fetchone()
    assert row == (nasty, None, {nasty: 1}, {"q": nasty})


def test_submit_task_refuses_payloads_nested_deeper_than_python_can_read(db: Conn) -> None:
    before = table_snapshot(db)
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT taskd.submit_task('standard', 'noop', %s::jsonb)",
                   ('[{"x": ' + "[" * DEEP + "]" * DEEP + "}]",))
    assert caught.value.sqlstate == "22023"
    assert table_snapshot(db) == before


def test_the_old_arguments_are_gone(db: Conn) -> None:
    """A caller names no limit and no user: those are the server's and the API's."""
    before = table_snapshot(db)
    for extra in ("max_payload_bytes => 2147483647", "user_id => 'mallory'"):
        with pytest.raises(psycopg.errors.UndefinedFunction):
            db.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]', "  # type: ignore[arg-type]
                       + extra + ")")
    assert table_snapshot(db) == before


def test_task_subtasks_reads_a_tasks_subtasks_through_its_id_range(db: Conn) -> None:
    first = db.execute("SELECT taskd.submit_task('standard', 'noop', '[{\"n\": 1}, {\"n\": 2}]')"
                       ).fetchone()
    db.execute("SELECT taskd.submit_task('standard', 'noop', '[{\"n\": 3}]')")
    assert first is not None
    rows = db.execute("SELECT payload->>'n', status, max_attempts FROM taskd.task_subtasks(%s)",
                      first).fetchall()
    assert rows == [("1", "pending", 4), ("2", "pending", 4)]
    assert db.execute("SELECT count(*) FROM taskd.task_subtasks(424242)").fetchone() == (0,)
    # Inlined: the plan reads subtasks by its primary key, never the whole table.
    db.execute("SET enable_seqscan = off")  # as on a large table, where the plan matters
    plan = db.execute("EXPLAIN (FORMAT JSON) SELECT * FROM taskd.task_subtasks(%s)",
                      first).fetchone()
    assert plan is not None
    text = str(plan[0])
    assert "subtasks_pkey" in text and "'Function Scan'" not in text, text
    db.execute("SET enable_seqscan = on")
    plan = db.execute("EXPLAIN (FORMAT JSON) SELECT * FROM taskd.task_subtasks(%s)",
                      first).fetchone()
    assert plan is not None and "'Function Scan'" not in str(plan[0])


def test_a_tasks_end_is_announced_once_on_taskd_task_end(database_url: str, db: Conn) -> None:
    """One notification per task that ends, sent by the statement that ends it, with the
    task's id as the payload; none for a subtask that ends while its task goes on."""
    first = db.execute("SELECT taskd.submit_task('standard', 'noop', '[{}, {}, {}]')").fetchone()
    second = db.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]')").fetchone()
    assert first is not None and second is not None
    ids = [r[0] for r in db.execute("SELECT id FROM taskd.task_subtasks(%s)", first)]
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN taskd_task_end")
        db.execute("UPDATE taskd.subtasks SET status = 'completed', completed_at = now()"
                   " WHERE id = %s", (ids[0],))
        db.execute("UPDATE taskd.subtasks SET status = 'failed', error = 'x',"
                   " completed_at = now() WHERE id = %s", (ids[1],))
        assert list(listener.notifies(timeout=0.3)) == []  # the task goes on
        # One statement ends both tasks (the last subtask of each).
        db.execute("UPDATE taskd.subtasks SET status = 'cancelled', completed_at = now()"
                   " WHERE id = %s OR task_id = %s", (ids[2], second[0]))
        heard = sorted(int(n.payload) for n in listener.notifies(timeout=0.5))
        assert heard == sorted([first[0], second[0]])
        # A retry reopens the failed task; its next end is announced again.
        db.execute("UPDATE taskd.subtasks SET status = 'pending', completed_at = NULL"
                   " WHERE id = %s", (ids[1],))
        db.execute("UPDATE taskd.subtasks SET status = 'completed', completed_at = now()"
                   " WHERE id = %s", (ids[1],))
        heard = [int(n.payload) for n in listener.notifies(timeout=0.5)]
        assert heard == [first[0]]
