"""Submitting: the Python door and the SQL function, and every bad input they reject."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from taskd.errors import InvalidInput
from taskd.queue import Store, migrations
from tests.factories import fetch_one, table_counts

pytestmark = pytest.mark.anyio

GOOD: dict[str, Any] = {"queue": "standard", "kind": "noop", "payloads": [{"a": 1}]}

BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("empty queue", {"queue": ""}, "queue"),
    ("upper-case queue", {"queue": "Standard"}, "queue"),
    ("queue with space", {"queue": "a b"}, "queue"),
    ("queue too long", {"queue": "q" * 64}, "queue"),
    ("queue with NUL", {"queue": "q\x00"}, "queue"),
    ("empty kind", {"kind": ""}, "kind"),
    ("priority too high", {"priority": 1001}, "priority"),
    ("priority too low", {"priority": -1001}, "priority"),
    ("payload not an object", {"payloads": [[1, 2]]}, "payloads[0]"),
    ("payload a string", {"payloads": [{"a": 1}, "x"]}, "payloads[1]"),
    ("payload with NUL", {"payloads": [{"a": "x\x00y"}]}, "payloads[0]"),
    ("payload key with NUL", {"payloads": [{"a\x00": 1}]}, "payloads[0]"),
    ("payload too big", {"payloads": [{"a": "x" * (1024 * 1024)}]}, "payloads[0]"),
    ("zero subtasks", {"payloads": []}, "payloads"),
    ("too many subtasks", {"payloads": [{}] * 100_001}, "payloads"),
    ("max_attempts zero", {"max_attempts": 0}, "max_attempts"),
    ("params not an object", {"params": [1]}, "params"),
    ("name with NUL", {"name": "a\x00"}, "name"),
    ("payload not JSON", {"payloads": [{"a": object()}]}, "payloads"),
    ("payload NaN", {"payloads": [{"a": float("nan")}]}, "payloads"),
]


async def test_submit_writes_task_and_subtasks_and_notifies(
    store: Store, database_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN taskd")
        task_id = await store.submit(
            "standard", "noop", [{"i": i} for i in range(3)], name="three", priority=7,
            params={"p": 1}, user_id="u1", max_attempts=5,
        )
        notes = []
        async for note in listener.notifies(timeout=5, stop_after=1):
            notes.append(note)
    assert [(n.channel, n.payload) for n in notes] == [("taskd", "standard")]
    task = await store.get_task(task_id)
    assert task is not None
    assert (task.name, task.priority, task.total, task.status, task.user_id) == (
        "three", 7, 3, "pending", "u1"
    )
    subtasks = await store.list_subtasks(task_id)
    assert [s.payload for s in subtasks] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert {(s.priority, s.max_attempts, s.status) for s in subtasks} == {(7, 5, "pending")}


async def test_one_notify_per_submit_whatever_the_subtask_count(
    store: Store, database_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN taskd")
        await store.submit("standard", "noop", [{}] * 500)
        await store.submit("other", "noop", [{}] * 2)
        payloads = [n.payload async for n in listener.notifies(timeout=1)]
    assert payloads == ["standard", "other"]


@pytest.mark.parametrize(("case", "change", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_python_submit_rejects_bad_input_and_writes_nothing(
    store: Store, conn: Any, case: str, change: dict[str, Any], field: str
) -> None:
    before = await table_counts(conn)
    args = {**GOOD, **change}
    with pytest.raises(InvalidInput) as raised:
        await store.submit(args.pop("queue"), args.pop("kind"), args.pop("payloads"), **args)
    assert raised.value.field == field
    assert field.split("[")[0] in str(raised.value)
    assert await table_counts(conn) == before


SQL_BAD_INPUTS = [
    (c, ch, f) for c, ch, f in BAD_INPUTS
    if c not in {"payload not JSON", "payload NaN", "too many subtasks"}
]


@pytest.mark.parametrize(
    ("case", "change", "field"), SQL_BAD_INPUTS, ids=[c[0] for c in SQL_BAD_INPUTS]
)
async def test_sql_submit_task_rejects_bad_input_and_writes_nothing(
    conn: Any, case: str, change: dict[str, Any], field: str
) -> None:
    before = await table_counts(conn)
    args = {**GOOD, **change}
    with pytest.raises(psycopg.DataError) as raised:
        await conn.execute(
            "SELECT taskd.submit_task(queue => %s, kind => %s, payloads => %s::jsonb,"
            " name => %s, priority => %s, params => %s::jsonb, max_attempts => %s)",
            (args["queue"], args["kind"], json.dumps(args["payloads"]), args.get("name", ""),
             args.get("priority", 0), json.dumps(args.get("params", {})),
             args.get("max_attempts", 3)),
        )
    message = str(raised.value)
    assert field.split("[")[0] in message or "NUL" in message or "\\u0000" in message, message
    assert await table_counts(conn) == before


DEEP = {"x": json.loads("[" * 500 + "]" * 500)}  # 501 levels with the object itself
PAYLOAD_CHECKS = [  # (payload, max_payload_bytes, what the error says after "payloads[i]")
    ([1, 2], 1000, "is not a JSON object"),
    (None, 1000, "is not a JSON object"),
    ({"a": "0123456789"}, 10, "is larger than 10 bytes"),
    (DEEP, 1_048_576, "is nested deeper than 500 levels"),
]


@pytest.mark.parametrize("position", [0, 1], ids=["one payload", "second of two"])
@pytest.mark.parametrize(("payload", "max_bytes", "error"), PAYLOAD_CHECKS,
                         ids=["array", "null", "too large", "too deep"])
async def test_payload_checks_are_the_same_for_one_payload_and_for_many(
    conn: Any, position: int, payload: Any, max_bytes: int, error: str
) -> None:
    """A task of one subtask takes submit_task's short way (schema 7): the same rules and
    messages as the query over a longer array."""
    payloads = [{}] * position + [payload]
    await conn.execute("UPDATE taskd.limits SET max_payload_bytes = %s", (max_bytes,))
    before = await table_counts(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match=rf"^taskd: payloads\[{position}\] {error}"):
        await conn.execute(
            "SELECT taskd.submit_task('standard', 'noop', %s::jsonb)", (json.dumps(payloads),)
        )
    assert await table_counts(conn) == before


async def test_one_payload_writes_what_the_array_path_writes(conn: Any) -> None:
    """The one-subtask insert and the array insert give the same rows, but for ids."""
    columns = ("queue, kind, priority, status, payload, attempt, max_attempts, run_after,"
               " locked_by, lease_expires_at, cancel_requested, state, result, error")
    call = ("SELECT taskd.submit_task_for_user('u', 'standard', 'noop', %s::jsonb, name => 'n',"
            " priority => 9, params => '{\"p\": 1}', max_attempts => 4,"
            " run_after => '2030-01-01T00:00:00Z')")
    one = await fetch_one(conn, call, '[{"k": [1, {"v": null}]}]')
    two = await fetch_one(conn, call, '[{"k": [1, {"v": null}]}, {"k": 2}]')
    rows = {}
    for task_id in (one, two):
        cur = await conn.execute(
            f"SELECT {columns} FROM taskd.subtasks WHERE task_id = %s ORDER BY id",  # noqa: S608
            (task_id,))
        rows[task_id] = await cur.fetchall()
    assert len(rows[one]) == 1 and len(rows[two]) == 2
    assert rows[one][0] == rows[two][0]
    assert rows[one][0][4] == {"k": [1, {"v": None}]}
    tasks = {}
    for task_id in (one, two):
        cur = await conn.execute(
            "SELECT name, queue, kind, priority, user_id, params, status, total,"
            " last_subtask_id - first_subtask_id + 1,"
            " (SELECT count(*) FROM taskd.subtasks s WHERE s.task_id = t.id"
            "     AND s.id BETWEEN t.first_subtask_id AND t.last_subtask_id)"
            " FROM taskd.tasks t WHERE id = %s", (task_id,))
        tasks[task_id] = await cur.fetchone()
    assert tasks[one] == ("n", "standard", "noop", 9, "u", {"p": 1}, "pending", 1, 1, 1)
    assert tasks[two] == ("n", "standard", "noop", 9, "u", {"p": 1}, "pending", 2, 2, 2)


async def test_sql_submit_task_rejects_too_many_subtasks(conn: Any) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 100000"):
        await conn.execute(
            "SELECT taskd.submit_task('standard', 'noop',"
            " (SELECT jsonb_agg('{}'::jsonb) FROM generate_series(1, 100001)))"
        )
    assert await fetch_one(conn, "SELECT count(*) FROM taskd.subtasks") == 0


async def test_a_plain_submission_calls_insert_task_and_nothing_between(conn: Any) -> None:
    """Version 28: without a unique key, dependencies or a notification target, submit_task and
    submit_task_for_user call insert_task directly (each nested plpgsql call lies on the path
    from a submission to its start); the others still go through submit_flow and
    set_task_notify."""
    await conn.execute("SET track_functions = 'all'")

    async def counts() -> dict[str, int]:
        cur = await conn.execute(
            "SELECT p.proname, coalesce(pg_stat_get_xact_function_calls(p.oid), 0)"
            "  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'taskd'"
            "   AND p.proname IN ('submit_flow', 'insert_task', 'set_task_notify')")
        return dict(await cur.fetchall())

    async def calls(submission: str) -> dict[str, int]:
        """The calls of each function that ``submission`` made: the session's counts before
        and after it, in one transaction (a session reports and resets them only while idle
        outside one)."""
        async with conn.transaction():
            before = await counts()
            await conn.execute(submission)
            after = await counts()
        return {name: after[name] - before[name] for name in after if after[name] != before[name]}

    plain = "SELECT taskd.submit_task('standard', 'noop', '[{}]')"
    assert await calls(plain) == {"insert_task": 1}
    assert await calls("SELECT taskd.submit_task_for_user('u1', 'standard', 'noop', '[{}]')") == {
        "insert_task": 1}
    assert "submit_flow" in await calls(plain[:-1] + ", unique_key => 'k')")
    assert "set_task_notify" in await calls(
        plain[:-1] + ", notify_url => 'https://hooks.example/done')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unique_scope needs"):
        await calls(plain[:-1] + ", unique_scope => 'forever')")


async def test_sql_payload_limit_is_the_servers(conn: Any, database_url: str) -> None:
    """taskd.limits holds it, written by `taskd migrate` from max_payload_bytes."""
    call = "SELECT taskd.submit_task('standard', 'noop', '[{\"a\": \"0123456789\"}]')"
    await conn.execute(call)  # 20 bytes, under the default MiB
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        assert await migrations.migrate(c, max_payload_bytes=10) == []
    assert await fetch_one(conn, "SELECT max_payload_bytes FROM taskd.limits") == 10
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match=r"payloads\[0\] is larger than 10 bytes"):
        await conn.execute(call)
    with pytest.raises(psycopg.errors.CheckViolation):
        await conn.execute("UPDATE taskd.limits SET max_payload_bytes = 0")
    with pytest.raises(psycopg.errors.UniqueViolation):
        await conn.execute("INSERT INTO taskd.limits (max_payload_bytes) VALUES (5)")


async def test_longest_names_pass_and_one_more_fails_in_submit_and_table(conn: Any) -> None:
    """submit_task and the tasks table's CHECKs draw the same line: 63 characters of queue,
    200 of kind."""
    queue, kind = "q" + "-" * 62, "K." * 100
    await conn.execute("SELECT taskd.submit_task(%s, %s, '[{}]')", (queue, kind))
    await conn.execute(
        "INSERT INTO taskd.tasks (queue, kind, total) VALUES (%s, %s, 1)", (queue, kind)
    )
    assert await fetch_one(conn, "SELECT count(*) FROM taskd.tasks WHERE queue = %s", queue) == 2
    for bad_queue, bad_kind, check in [(queue + "q", kind, "tasks_queue_check"),
                                       (queue, kind + "K", "tasks_kind_check"),
                                       ("standard\n", kind, "tasks_queue_check")]:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            await conn.execute("SELECT taskd.submit_task(%s, %s, '[{}]')", (bad_queue, bad_kind))
        with pytest.raises(psycopg.errors.CheckViolation, match=check):
            await conn.execute("INSERT INTO taskd.tasks (queue, kind, total) VALUES (%s, %s, 1)",
                               (bad_queue, bad_kind))


async def test_sql_injection_in_values_is_plain_data(store: Store) -> None:
    nasty = "'); DROP TABLE taskd.tasks; --"
    task_id = await store.submit("standard", "noop", [{"q": nasty}], name=nasty)
    task = await store.get_task(task_id)
    assert task is not None and task.name == nasty


async def test_max_subtasks_in_one_call(store: Store, conn: Any) -> None:
    task_id = await store.submit("standard", "noop", [{}] * 100_000)
    assert await fetch_one(
        conn, "SELECT count(*) FROM taskd.subtasks WHERE task_id = %s", task_id
    ) == 100_000


@pytest.mark.parametrize(
    ("depth", "refused"), [(499, False), (500, False), (501, True), (10_000, True)]
)
async def test_sql_submit_task_refuses_payloads_nested_deeper_than_500(
    conn: Any, depth: int, refused: bool
) -> None:
    # Each level is one array; the payload object itself is one more.
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    payloads = json.dumps([{"x": json.loads(inner) if depth < 900 else None}])
    if depth >= 900:  # too deep for Python's json to build: write the text by hand
        payloads = '[{"x": ' + inner + "}]"
    call = "SELECT taskd.submit_task('standard', 'noop', %s::jsonb)"
    if refused:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="deeper than 500"):
            await conn.execute(call, (payloads,))
        assert await fetch_one(conn, "SELECT count(*) FROM taskd.tasks") == 0
    else:
        await conn.execute(call, (payloads,))
        assert await fetch_one(conn, "SELECT count(*) FROM taskd.subtasks") == 1


async def test_brackets_inside_strings_do_not_count_as_nesting(conn: Any) -> None:
    text = "[" * 2000 + '\\"{' * 300
    await conn.execute("SELECT taskd.submit_task('standard', 'noop', %s::jsonb)",
                       (json.dumps([{"s": text}]),))
    assert await fetch_one(conn, "SELECT count(*) FROM taskd.subtasks") == 1


async def test_sql_submit_task_refuses_params_nested_too_deep(conn: Any) -> None:
    params = '{"p": ' + "[" * 600 + "]" * 600 + "}"
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="params is nested deeper"):
        await conn.execute(
            "SELECT taskd.submit_task('standard', 'noop', '[{}]', params => %s::jsonb)",
            (params,),
        )
