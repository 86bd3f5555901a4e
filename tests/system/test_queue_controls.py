"""Queue controls with real daemons and real `taskd` commands: a pause stops every daemon's
claims at once and survives their restart, a resume wakes them through NOTIFY, and a rate
limit holds across three daemons."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import psycopg
import pytest

from tests.system.daemons import daemons, query, scalar, wait_for

pytestmark = pytest.mark.system


def taskd(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    return subprocess.run([sys.executable, "-m", "taskd", *args], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**clean, "TASKD_DATABASE_URL": url, "COLUMNS": "250", **env})


def submit(url: str, kind: str, payloads: list[dict[str, object]]) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT taskd.submit_task('standard', %s, %s::jsonb)",
                           (kind, json.dumps(payloads))).fetchone()
    assert row is not None
    return int(row[0])


def started(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM taskd.subtasks WHERE started_at IS NOT NULL"))


def metric(url: str, name: str) -> list[float]:
    """``name{queue="standard"}`` on every running daemon's /metrics."""
    values = []
    for (metrics_url,) in query(url, "SELECT metrics_url FROM taskd.executors "
                                     "WHERE status = 'running'"):
        text = httpx.get(metrics_url, timeout=10).text
        found = re.search(rf'^{name}{{queue="standard"}} (\S+)$', text, re.MULTILINE)
        values.append(float(found[1]) if found else float("nan"))
    return values


# Polls far apart: what happens within a second comes from the claim statement and NOTIFY.
SLOW_POLL = {"TASKD_POLL_INTERVAL": "5", "TASKD_QUEUES__STANDARD__INITIAL": "4",
             "TASKD_QUEUES__STANDARD__MAX": "4", "TASKD_STATS_INTERVAL": "0.5",
             "TASKD_SHUTDOWN_GRACE": "5"}


def test_a_pause_stops_every_daemon_at_once_and_outlives_their_restart(
    database_url: str,
) -> None:
    unknown = taskd(database_url, "queues", "pause", "nope")
    assert unknown.returncode == 1
    assert "unknown queue 'nope'" in unknown.stderr
    assert query(database_url, "SELECT * FROM taskd.queue_controls") == []

    task_id = submit(database_url, "sleep", [{"ms": 300}] * 400)
    with daemons(database_url, 3, **SLOW_POLL) as running:
        wait_for(lambda: started(database_url) >= 12, timeout=30, message="work under way")
        done = taskd(database_url, "queues", "pause", "standard", "--by", "the test")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "queue standard: paused"
        paused_at = scalar(database_url, "SELECT now()")
        # Claims stop at the pause's commit: nothing starts later, on any daemon.
        last_start = scalar(database_url, "SELECT max(started_at) FROM taskd.subtasks")
        assert last_start <= paused_at + timedelta(seconds=1)
        # Running work finishes (completed, not given back) and nothing new starts.
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.subtasks "
                                              "WHERE status = 'processing'") == 0,
                 timeout=15, message="running subtasks finish")
        assert scalar(database_url, "SELECT max(started_at) FROM taskd.subtasks") == last_start
        before = started(database_url)
        assert scalar(database_url, "SELECT count(*) FROM taskd.subtasks "
                                    "WHERE status = 'completed'") == before
        # Submissions are accepted meanwhile.
        submit(database_url, "noop", [{}])
        status = json.loads(taskd(database_url, "status", "--json").stdout)
        [standard] = [q for q in status["queues"] if q["queue"] == "standard"]
        assert standard["paused"] is True and standard["paused_by"] == "the test"
        assert standard["ready"] == 401 - before
        assert "PAUSED by the test" in taskd(database_url, "status").stdout
        wait_for(lambda: metric(database_url, "taskd_queue_paused") == [1.0, 1.0, 1.0],
                 timeout=10, message="taskd_queue_paused 1 on every daemon")
        for d in running:
            d.signal(15)
        for d in running:
            assert d.wait(30) == 0
    with daemons(database_url, 3, **SLOW_POLL):
        # Each daemon claims once at its start (a wake-up for every queue): still paused.
        time.sleep(1.0)
        assert started(database_url) == before
        listed = json.loads(taskd(database_url, "queues", "list", "--json").stdout)
        assert [(q["queue"], q["paused"]) for q in listed] == [
            ("lumina", False), ("standard", True)]
        done = taskd(database_url, "queues", "resume", "standard")
        assert done.returncode == 0 and done.stdout.strip() == "queue standard: resumed"
        resumed_at = scalar(database_url, "SELECT now()")
        # Woken by NOTIFY: well within one poll interval (5 s).
        wait_for(lambda: started(database_url) > before, timeout=5,
                 message="claims again after the resume")
        first = scalar(database_url, "SELECT min(started_at) FROM taskd.subtasks "
                                     "WHERE started_at > %s", resumed_at - timedelta(seconds=1))
        assert first - resumed_at < timedelta(seconds=1)
    assert scalar(database_url, "SELECT status FROM taskd.tasks WHERE id = %s",
                  task_id) == "processing"


@pytest.mark.slow
def test_a_rate_limit_holds_across_three_daemons(database_url: str) -> None:
    """The issue's test: 1,000 subtasks at 20/s over three daemons. No one-second window of
    started_at, wherever it begins (every start is tried as a window's start), holds more
    than 20, and the drain takes at most 1,000 / 20 s plus one window. TEST_RATE_SUBTASKS=300
    runs it in a third of the time."""
    n, per_second = int(os.environ.get("TEST_RATE_SUBTASKS", "1000")), 20
    with daemons(database_url, 3, TASKD_QUEUES__STANDARD__RATE_LIMIT=f"{per_second}/s",
                 TASKD_POLL_INTERVAL="0.5") as running:
        submitted_at = scalar(database_url, "SELECT now()")
        submit(database_url, "noop", [{"i": i} for i in range(n)])
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.subtasks "
                                              "WHERE status = 'completed'") == n,
                 timeout=n / per_second + 15, message="the drain")
        windows = query(database_url,
                        "SELECT w.start, count(*) FROM"
                        " (SELECT DISTINCT started_at AS start FROM taskd.subtasks) w"
                        " JOIN taskd.subtasks s ON s.started_at >= w.start"
                        "  AND s.started_at < w.start + interval '1 second'"
                        " GROUP BY w.start ORDER BY count(*) DESC, w.start LIMIT 5")
        busiest = windows[0][1]
        assert busiest <= per_second, windows
        finished = scalar(database_url, "SELECT max(completed_at) FROM taskd.subtasks")
        drain = (finished - submitted_at).total_seconds()
        assert drain <= n / per_second + 1, (drain, windows)
        # The limit is what held them back: claims found the window used up.
        limited = metric(database_url, "taskd_claims_rate_limited_total")
        assert len(limited) == len(running) and sum(limited) > 0, limited
        status = json.loads(taskd(database_url, "status", "--json").stdout)
        [standard] = [q for q in status["queues"] if q["queue"] == "standard"]
        assert standard["rate_limit"] == "20/s"
    print(f"drain {drain:.2f} s, busiest one-second window {busiest}")
