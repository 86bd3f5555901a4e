"""Hostile input to ``taskd.submit_task``, the door for SQL clients, table-driven.

Each call must fail with its SQLSTATE (22023 and a message naming the argument for the
function's own checks; PostgreSQL's own codes for input that never reaches it) and leave every
taskd table exactly as it was.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.test_hostile_api import table_snapshot

Conn = psycopg.Connection[tuple[Any, ...]]

CALL = ("SELECT taskd.submit_task(queue => %s::text, kind => %s::text, payloads => {payloads},"
        " name => %s::text, priority => {priority}, params => {params}::jsonb,"
        " user_id => %s::text, max_attempts => {attempts}, max_payload_bytes => {bytes})")
DEEP = 10_000


def _call(payloads: str = "%s::jsonb", priority: str = "%s::integer",
          attempts: str = "%s::integer", params: str = "%s", max_bytes: str = "%s::integer"
          ) -> str:
    return CALL.format(payloads=payloads, priority=priority, attempts=attempts, params=params,
                       bytes=max_bytes)


GOOD: dict[str, Any] = {"queue": "standard", "kind": "noop", "payloads": '[{"n": 1}]',
                        "name": "", "priority": "0", "params": "{}", "user_id": None,
                        "attempts": "3", "bytes": "1048576"}

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
    ("payload-too-large", {"payloads": '[{"x": "' + "a" * 2000 + '"}]', "bytes": "1000"},
     "22023", "larger"),
    ("payloads-nested-100000", {"payloads": "[{\"x\": " + "[" * 100_000 + "]" * 100_000 + "}]"},
     "54001", "stack depth"),
]


@pytest.mark.parametrize(("name", "overrides", "sqlstate", "word"), CASES,
                         ids=[c[0] for c in CASES])
def test_submit_task_refuses_hostile_arguments_and_writes_nothing(
    db: Conn, name: str, overrides: dict[str, Any], sqlstate: str, word: str
) -> None:
    args = {**GOOD, **overrides}
    before = table_snapshot(db)
    with pytest.raises(psycopg.Error) as caught:
        db.execute(_call(), (args["queue"], args["kind"], args["payloads"], args["name"],  # type: ignore[arg-type]
                             args["priority"], args["params"], args["user_id"],
                             args["attempts"], args["bytes"]))
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
        "params => %s::jsonb, user_id => %s)",
        ('[{"q": "' + nasty + '"}]', nasty, '{"' + nasty + '": 1}', nasty)).fetchone()
    assert task_id is not None
    row = db.execute("SELECT t.name, t.user_id, t.params, s.payload FROM taskd.tasks t "
                     "JOIN taskd.subtasks s ON s.task_id = t.id").fetchone()
    assert row == (nasty, nasty, {nasty: 1}, {"q": nasty})


def test_submit_task_refuses_payloads_nested_deeper_than_python_can_read(db: Conn) -> None:
    before = table_snapshot(db)
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT taskd.submit_task('standard', 'noop', %s::jsonb)",
                   ('[{"x": ' + "[" * DEEP + "]" * DEEP + "}]",))
    assert caught.value.sqlstate == "22023"
    assert table_snapshot(db) == before
