"""Two real daemons serving 50 queues with LISTEN off: the poller is their only wake-up, and
the backlog of all 50 drains through shared claim statements."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.system.daemons import daemons, scalar, wait_for

pytestmark = pytest.mark.system

QUEUES = [f"q{i:02d}" for i in range(1, 51)]
POLL = 0.3
SLACK = 0.5  # the poll's and the claim's round trips on a machine shared with other runs


def env() -> dict[str, str]:
    settings = {"TASKD_LISTEN": "false", "TASKD_POLL_INTERVAL": str(POLL),
                "TASKD_QUEUES__STANDARD__ENABLED": "false",
                "TASKD_QUEUES__LUMINA__ENABLED": "false"}
    for queue in QUEUES:
        settings[f"TASKD_QUEUES__{queue.upper()}__INITIAL"] = "10"
        settings[f"TASKD_QUEUES__{queue.upper()}__MAX"] = "10"
    return settings


def submit(url: str, queue: str, n: int = 1) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT taskd.submit_task(%s, 'noop', %s::jsonb)",
                           (queue, json.dumps([{"i": i} for i in range(n)]))).fetchone()
    assert row is not None
    return int(row[0])


def waited(url: str, task_id: int) -> float | None:
    """Seconds from run_after to the start of the task's last subtask to start; None while
    one has not started."""
    value = scalar(url, "SELECT CASE WHEN bool_and(started_at IS NOT NULL)"
                        " THEN max(date_part('epoch', started_at - run_after)) END"
                        " FROM taskd.subtasks WHERE task_id = %s", task_id)
    return None if value is None else float(value)


def test_fifty_queues_without_listen_start_work_within_the_poll_interval_and_drain(
    database_url: str,
) -> None:
    with daemons(database_url, 2, **env()):
        for queue in ("q01", "q26", "q50", "q13"):
            task = submit(database_url, queue)
            wait_for(lambda t=task: waited(database_url, t) is not None, timeout=10,
                     message=f"the subtask in {queue} started")
            delay = waited(database_url, task)
            assert delay is not None and 0 <= delay <= POLL + SLACK, (queue, delay)

        tasks = [submit(database_url, queue, 40) for queue in QUEUES]
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.tasks"
                                              " WHERE id = ANY(%s) AND status = 'completed'",
                                tasks) == len(tasks),
                 timeout=60, message="2,000 subtasks over 50 queues completed")
        assert scalar(database_url, "SELECT count(*) FROM taskd.subtasks WHERE attempt <> 1"
                                    " AND task_id = ANY(%s)", tasks) == 0
