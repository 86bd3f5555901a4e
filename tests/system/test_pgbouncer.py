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
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

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
