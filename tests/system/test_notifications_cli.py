"""Operators steer the task-end outbox: `taskd status` counts undelivered and dead
notifications, `taskd notifications list|retry|secret`, `taskd submit --notify-url` and
`taskd migrate`'s routes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import anyio
import pytest

from taskd.queue.status import read_status
from taskd.queue.store import Store
from tests.integration.test_notification_outbox import HOOK, dead_and_pending
from tests.integration.test_status import DEAD_AFTER

pytestmark = pytest.mark.anyio


async def taskd(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    done = await anyio.run_process(
        [sys.executable, "-m", "taskd", *args], check=False,
        env={**clean, "TASKD_DATABASE_URL": url, "COLUMNS": "200", **env},
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


async def test_status_counts_undelivered_and_dead_and_asks_for_attention(
    store: Store, conn: Any, database_url: str
) -> None:
    await dead_and_pending(store, conn)
    report = await read_status(store, dead_after=DEAD_AFTER)
    assert report.notifications["undelivered"] == 1 and report.notifications["dead"] == 2
    assert [p.code for p in report.problems] == ["dead_notifications"]
    done = await taskd(database_url, "status", "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["notifications"]["dead"] == 2
    text = await taskd(database_url, "status")
    assert "notifications: 1 undelivered (oldest" in text.stdout and "2 dead" in text.stdout


async def test_list_and_retry_dead_ones_from_the_shell(
    store: Store, conn: Any, database_url: str
) -> None:
    tasks = await dead_and_pending(store, conn)
    listed = await taskd(database_url, "notifications", "list", "--status", "dead", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["task_id"], r["status"], r["last_status_code"]) for r in rows] == [
        (2, tasks[1], "dead", 404), (1, tasks[0], "dead", 404)]
    table = await taskd(database_url, "notifications", "list")
    assert "HTTP 404 Not Found" in table.stdout and HOOK in table.stdout
    nothing = await taskd(database_url, "notifications", "retry")
    assert nothing.returncode == 2 and "--all-dead" in nothing.stderr
    one = await taskd(database_url, "notifications", "retry", "1")
    assert one.returncode == 0 and one.stdout.startswith("1 dead notifications due again: 1")
    rest = await taskd(database_url, "notifications", "retry", "--all-dead")
    assert rest.stdout.startswith("1 dead notifications due again: 2")
    cur = await conn.execute("SELECT status, attempts, run_after <= now()"
                             " FROM taskd.notifications ORDER BY id")
    assert await cur.fetchall() == [("pending", 0, True)] * 3


async def test_secret_prints_the_targets_secret_or_says_what_is_missing(
    database_url: str,
) -> None:
    from taskd.executor.dispatcher import target_secret

    done = await taskd(database_url, "notifications", "secret", HOOK,
                       TASKD_NOTIFICATIONS__SIGNING_KEY="k1")
    assert done.stdout.strip() == target_secret(HOOK, "k1", {})
    missing = await taskd(database_url, "notifications", "secret", HOOK)
    assert missing.returncode == 2 and "signing_key" in missing.stderr


async def test_submit_takes_a_target_and_refuses_a_bad_one(conn: Any, database_url: str) -> None:
    ok = await taskd(database_url, "submit", "--notify-url", HOOK, "--notify-on", "failed",
                     "--notify-on", "completed")
    assert ok.returncode == 0, ok.stderr
    cur = await conn.execute("SELECT notify_url, notify_on FROM taskd.tasks")
    assert await cur.fetchall() == [(HOOK, ["failed", "completed"])]
    bad = await taskd(database_url, "submit", "--notify-url", "http://8.8.8.8/x")
    assert bad.returncode == 2 and "plain http" in bad.stderr
    routes = await taskd(database_url, "migrate",
                         TASKD_NOTIFICATIONS__OPERATOR_URL="https://ops.example/x",
                         TASKD_QUEUES__STANDARD__NOTIFY_URL="https://q.example/y")
    assert "routes = standard -> https://q.example/y, * -> https://ops.example/x" in (
        routes.stdout), routes.stderr
    cur = await conn.execute("SELECT scope, url, notify_on FROM taskd.notify_routes"
                             " ORDER BY scope")
    assert await cur.fetchall() == [("*", "https://ops.example/x", ["failed"]),
                                    ("standard", "https://q.example/y", ["failed"])]
    assert (await taskd(database_url, "migrate")).returncode == 0
    cur = await conn.execute("SELECT count(*) FROM taskd.notify_routes")
    assert await cur.fetchone() == (0,)
