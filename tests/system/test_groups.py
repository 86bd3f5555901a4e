"""Executor groups route work: real daemons in two groups, real `taskd status` and
`taskd tasks priority` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest

from tests.system.daemons import daemons, query, scalar, wait_for

pytestmark = pytest.mark.system

# render is the gpu group's alone, standard the default group's; lumina names no group.
ROUTES = {"TASKD_QUEUES__RENDER__GROUPS": '["gpu"]',
          "TASKD_QUEUES__STANDARD__GROUPS": '["default"]',
          "TASKD_POLL_INTERVAL": "0.2"}


def taskd(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    return subprocess.run([sys.executable, "-m", "taskd", *args], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**clean, "TASKD_DATABASE_URL": url, "COLUMNS": "200"})


def submit(url: str, queue: str, n: int = 2) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT taskd.submit_task(%s, 'noop', %s::jsonb)",
                           (queue, json.dumps([{"i": i} for i in range(n)]))).fetchone()
    assert row is not None
    return int(row[0])


def status_of(url: str, task_id: int) -> str:
    return str(scalar(url, "SELECT status FROM taskd.tasks WHERE id = %s", task_id))


def test_a_daemon_runs_only_the_queues_its_group_serves(database_url: str) -> None:
    standard, render = submit(database_url, "standard"), submit(database_url, "render")
    with daemons(database_url, 1, TASKD_EXECUTOR_GROUP="gpu", **ROUTES) as [gpu]:
        wait_for(lambda: status_of(database_url, render) == "completed", timeout=30,
                 message="the gpu daemon runs render work")
        served = query(database_url, "SELECT executor_group, concurrency FROM taskd.executors")
        assert [(g, sorted(c)) for g, c in served] == [("gpu", ["lumina", "render"])]
        time.sleep(1.0)  # five poll intervals: standard work stays where it is
        assert status_of(database_url, standard) == "pending"
        done = taskd(database_url, "status", "--json")
        assert done.returncode == 1, done.stderr
        report = json.loads(done.stdout)
        assert [(p["code"], p["queue"]) for p in report["problems"]] == [
            ("no_live_executor", "standard")]
        queues = {q["queue"]: q for q in report["queues"]}
        assert queues["render"]["groups"] == ["gpu"]
        assert queues["render"]["executors"] == [gpu.executor_id]
        assert (queues["standard"]["groups"], queues["standard"]["executors"]) == ([], [])
        table = taskd(database_url, "status")
        assert table.returncode == 1 and "no live executor serves it" in table.stdout
        assert "gpu: 1" in table.stdout and "nobody" in table.stdout
        with daemons(database_url, 1, TASKD_EXECUTOR_GROUP="default", **ROUTES):
            wait_for(lambda: status_of(database_url, standard) == "completed", timeout=30,
                     message="the default daemon runs standard work")
            assert taskd(database_url, "status").returncode == 0


def test_tasks_priority_command(database_url: str) -> None:
    task_id = submit(database_url, "standard", n=3)
    done = taskd(database_url, "tasks", "priority", str(task_id), "-5")
    assert done.returncode == 0, done.stderr
    assert f"task {task_id}: priority -5, 3 unfinished subtasks moved" in done.stdout
    assert query(database_url, "SELECT DISTINCT priority FROM taskd.task_subtasks(%s)",
                 task_id) == [(-5,)]
    out_of_range = taskd(database_url, "tasks", "priority", str(task_id), "1001")
    assert out_of_range.returncode == 2
    assert "priority 1001 is outside -1000..1000" in out_of_range.stderr
    missing = taskd(database_url, "tasks", "priority", "424242", "1")
    assert (missing.returncode, missing.stderr.strip()) == (1, "taskd: error: no task 424242")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE taskd.subtasks SET status = 'cancelled', completed_at = now()"
                     " WHERE task_id = %s", (task_id,))
    ended = taskd(database_url, "tasks", "priority", str(task_id), "7")
    assert ended.returncode == 1
    assert "has already ended (cancelled); its priority cannot change" in ended.stderr
    helped = taskd(database_url, "tasks", "priority", "--help")
    assert helped.returncode == 0 and "claim order" in helped.stdout
