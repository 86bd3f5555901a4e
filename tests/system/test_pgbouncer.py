"""`taskd run` behind PgBouncer in transaction mode (``database_pooler = "transaction"``).

Three daemons share four server connections through PgBouncer, so consecutive transactions of
one client land on different server sessions: psycopg's prepared statements (``_pg3_0``) and
startup options would break there. With the setting, a few thousand subtasks drain with no
warning or error in any daemon's log, polling (``listen = false``) or with LISTEN on a direct
connection (``listen_database_url``). PgBouncer is the test's own, in front of the test's
database; the session settings taskd cannot send through it come from the database
(``ALTER DATABASE ... SET``), as docs/daemon.md says to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import anyio
import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from taskd.queue import Store
from tests.system.daemons import DaemonProcess, daemons, query, wait_for
from tests.system.pgbouncer import PgBouncer

pytestmark = [pytest.mark.slow, pytest.mark.system]

SUBTASKS = 3000
TASKS = 3


@pytest.fixture
def bouncer(admin_url: str) -> Iterator[PgBouncer]:
    pooler = PgBouncer(admin_url, pool_mode="transaction", pool_size=4)
    try:
        yield pooler
    finally:
        pooler.close()


def submit_through(url: str, tasks: int, size: int) -> None:
    async def go() -> None:
        store = await Store.open(url, pooler="transaction")
        try:
            for _ in range(tasks):
                await store.submit("standard", "noop", [{"n": i} for i in range(size)])
        finally:
            await store.close()

    anyio.run(go)


def completed(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM taskd.subtasks WHERE status = 'completed'")
               [0][0])


def problems(ds: list[DaemonProcess]) -> list[str]:
    return [f"{d.executor_id}: {e.get('level')}: {e.get('message')} {e.get('error', '')}"
            for d in ds for e in d.events()
            if e.get("level") in ("warning", "error", "critical")]


@pytest.mark.parametrize("wakeups", ["polling", "listen-direct"])
def test_three_daemons_through_pgbouncer_in_transaction_mode_drain_without_errors(
    database_url: str, bouncer: PgBouncer, wakeups: str,
) -> None:
    name = str(conninfo_to_dict(database_url)["dbname"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        for setting, value in (("statement_timeout", "30s"), ("timezone", "UTC")):
            conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(name), sql.Identifier(setting), sql.Literal(value)))
    through = bouncer.url(name)
    env = {"TASKD_DATABASE_POOLER": "transaction", "TASKD_QUEUES__STANDARD__INITIAL": "50",
           "TASKD_QUEUES__STANDARD__MAX": "50"}
    if wakeups == "polling":
        env |= {"TASKD_LISTEN": "false", "TASKD_POLL_INTERVAL": "0.2"}
    else:
        # Work found only through NOTIFY: a poll would come after the test's deadline.
        env |= {"TASKD_LISTEN_DATABASE_URL": database_url, "TASKD_POLL_INTERVAL": "60"}
    with daemons(through, 3, **env) as ds:
        started = time.monotonic()
        submit_through(through, TASKS, SUBTASKS // TASKS)
        wait_for(lambda: completed(database_url) == SUBTASKS, timeout=50,
                 message=f"{SUBTASKS} subtasks completed")
        took = time.monotonic() - started
        assert all(d.proc.poll() is None for d in ds)
    print(f"pgbouncer {wakeups}: {SUBTASKS} subtasks in {took:.2f} s, "
          f"{SUBTASKS / took:.0f}/s")
    assert problems(ds) == []
    assert query(database_url, "SELECT status, count(*) FROM taskd.tasks GROUP BY status") == [
        ("completed", TASKS)]
    # The rescuer's round is taken through the pooler too (one autocommit statement).
    [(taken_by, rounds)] = query(database_url, "SELECT taken_by, rounds"
                                               " FROM taskd.maintenance_rounds")
    assert taken_by in {d.executor_id for d in ds} and rounds >= 1


def test_listen_through_a_transaction_pooler_is_refused_with_one_line(
    database_url: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    done = subprocess.run(
        [sys.executable, "-m", "taskd", "run"], capture_output=True, text=True, timeout=60,
        env={**env, "TASKD_DATABASE_URL": database_url, "TASKD_DATABASE_POOLER": "transaction",
             "TASKD_METRICS_ADDR": "127.0.0.1:0"}, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "TASKD_LISTEN_DATABASE_URL" in done.stderr.splitlines()[-1]


API_TASKS = 10  # x 500 subtasks through `taskd api`
API_TASK_SIZE = 500
SQL_TASKS = 10  # x 500 subtasks through `SELECT taskd.submit_task(...)` by a plain client
SQL_TASK_SIZE = 500
END_TO_END = API_TASKS * API_TASK_SIZE + SQL_TASKS * SQL_TASK_SIZE


def submit_task_by_sql(url: str, pooled: bool) -> None:
    """What an SQL client does: ``SELECT taskd.submit_task(...)``, ten times on one
    connection; through a transaction pooler it must not prepare (psycopg prepares a statement
    on its fifth run)."""
    with psycopg.connect(url, autocommit=True,
                         prepare_threshold=None if pooled else 5) as conn:
        for t in range(SQL_TASKS):
            payloads = Jsonb([{"n": i, "t": t} for i in range(SQL_TASK_SIZE)])
            conn.execute("SELECT taskd.submit_task(queue => %s, kind => %s, payloads => %s)",
                         ("standard", "noop", payloads))


@pytest.mark.parametrize("route", ["pgbouncer", "direct"])
def test_api_sql_clients_and_daemons_end_to_end(
    database_url: str, bouncer: PgBouncer, route: str,
) -> None:
    """10,000 subtasks: half through `taskd api`, half through ``taskd.submit_task`` by a plain
    SQL client, drained by three daemons with LISTEN on a direct connection; every process
    behind PgBouncer in transaction mode (``route="pgbouncer"``) or connected directly (the
    baseline for the drain rate). No warning or error in any log, quota charged once a task."""
    from tests.system.test_api_process import _token, api_process

    name = str(conninfo_to_dict(database_url)["dbname"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        for setting, value in (("statement_timeout", "30s"), ("timezone", "UTC")):
            conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(name), sql.Identifier(setting), sql.Literal(value)))
    pooled = route == "pgbouncer"
    url = bouncer.url(name) if pooled else database_url
    pooler = {"TASKD_DATABASE_POOLER": "transaction"} if pooled else {}
    env = {**pooler, "TASKD_LISTEN_DATABASE_URL": database_url, "TASKD_POLL_INTERVAL": "60",
           "TASKD_QUEUES__STANDARD__INITIAL": "50", "TASKD_QUEUES__STANDARD__MAX": "50"}
    with api_process(url, **pooler) as (api, api_proc), httpx.Client(
            base_url=api, timeout=30,
            headers={"Authorization": f"Bearer {_token('alice')}"}) as client:
        admin = {"Authorization": f"Bearer {_token('root', admin=True)}"}
        httpx.put(f"{api}/v1/accounts/alice", headers=admin,
                  json={"is_member": True, "quota_remaining": API_TASKS + 5}
                  ).raise_for_status()
        started = time.monotonic()
        ids = []
        for t in range(API_TASKS):
            body = {"kind": "noop", "subtasks": [{"n": i, "t": t}
                                                 for i in range(API_TASK_SIZE)]}
            response = client.post("/v1/tasks", json=body)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        submit_task_by_sql(url, pooled)
        submitted_in = time.monotonic() - started
        # The backlog is in place before the daemons start: the drain is measured alone.
        with daemons(url, 3, **env) as ds:
            wait_for(lambda: completed(database_url) == END_TO_END, timeout=60,
                     message=f"{END_TO_END} subtasks completed")
            assert all(d.proc.poll() is None for d in ds)
        for task_id in ids:  # read back through the API, on the same route
            got = client.get(f"/v1/tasks/{task_id}")
            assert got.status_code == 200 and got.json()["status"] == "completed", got.text
        status = httpx.get(f"{api}/v1/status", headers=admin).json()
        assert status["subtasks"].get("completed") == END_TO_END, status
        assert api_proc.poll() is None
    # From the first claim to the last outcome, on the database's clock.
    drained_in = float(query(database_url, "SELECT extract(epoch FROM max(completed_at)"
                             " - min(started_at)) FROM taskd.subtasks")[0][0])
    print(f"end to end {route}: {END_TO_END} subtasks submitted in {submitted_in:.2f} s,"
          f" drained in {drained_in:.2f} s ({END_TO_END / drained_in:.0f}/s)")
    assert problems(ds) == []
    assert query(database_url, "SELECT status, count(*) FROM taskd.tasks GROUP BY status") == [
        ("completed", API_TASKS + SQL_TASKS)]
    assert query(database_url, "SELECT quota_remaining FROM taskd.accounts") == [(5,)]
