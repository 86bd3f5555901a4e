"""The submitter's traceparent: each door (SQL, Python, the API's header) stores it."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from taskd.errors import InvalidInput
from taskd.queue.store import Store
from tests.integration.api_support import Client, create, put_account

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
INVALID = ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
           "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
           "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
           "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
           "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"]  # upper case


async def traceparent_of(conn: Any, task_id: int) -> str | None:
    cur = await conn.execute("SELECT traceparent FROM taskd.tasks WHERE id = %s", (task_id,))
    row = await cur.fetchone()
    return row[0]


async def test_sql_and_python_store_the_traceparent_and_refuse_a_malformed_one(
    store: Store, conn: Any,
) -> None:
    cur = await conn.execute(
        "SELECT taskd.submit_task('standard', 'noop', '[{}]', traceparent => %s)",
        (TRACEPARENT,))
    by_sql = (await cur.fetchone())[0]
    by_python = await store.submit("standard", "noop", [{}], traceparent=TRACEPARENT)
    # Callers from before the argument: every positional argument of the old signature.
    cur = await conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]', 'n', 0, "
                             "'{}', NULL, 3, NULL, 1048576)")
    old_call = (await cur.fetchone())[0]
    assert await traceparent_of(conn, by_sql) == TRACEPARENT
    assert await traceparent_of(conn, by_python) == TRACEPARENT
    assert await traceparent_of(conn, old_call) is None
    for bad in INVALID:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a W3C traceparent"):
            await conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]', "
                               "traceparent => %s)", (bad,))
        with pytest.raises(InvalidInput, match="not a W3C traceparent"):
            await store.submit("standard", "noop", [{}], traceparent=bad)
    cur = await conn.execute("SELECT count(*) FROM taskd.tasks")
    assert (await cur.fetchone())[0] == 3


async def test_the_api_stores_the_traceparent_header_and_ignores_an_invalid_one(
    client: Client, conn: Any,
) -> None:
    put_account(client, "alice")
    alice = client("alice")
    ok = alice.post(
        "/v1/tasks", json={"kind": "noop", "subtasks": [{"n": 1}]},
        headers={"traceparent": TRACEPARENT})
    assert ok.status_code == 201, ok.text
    assert await traceparent_of(conn, ok.json()["id"]) == TRACEPARENT
    ignored = alice.post("/v1/tasks", json={"kind": "noop", "subtasks": [{"n": 1}]},
                         headers={"traceparent": INVALID[1]})
    assert ignored.status_code == 201, ignored.text
    assert await traceparent_of(conn, ignored.json()["id"]) is None
    plain = create(alice)
    assert await traceparent_of(conn, plain.json()["id"]) is None
