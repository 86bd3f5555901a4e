"""The scaler and cluster_max in live ``taskd run`` processes (real processes, real signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest

from taskd.queue import Store
from tests.system.daemons import (
    REPO,
    create_executions_table,
    daemons,
    query,
    scalar,
    wait_for,
)

pytestmark = pytest.mark.system


def submit(url: str, count: int, kind: str, priority: int = 0, **payload: object) -> int:
    async def go() -> int:
        store = await Store.open(url)
        try:
            return await store.submit("standard", kind, [{**payload, "n": i} for i in range(count)],
                                      priority=priority)
        finally:
            await store.close()

    return anyio.run(go)


def counts(url: str) -> dict[str, int]:
    return dict(query(url, "SELECT status, count(*) FROM taskd.subtasks GROUP BY status"))


def scaler_events(events: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(direction, new limit, running then) of each logged change of the standard queue."""
    return [(e["direction"], e["limit"], e["running"]) for e in events
            if e.get("logger") == "taskd.scaler.scaler" and e.get("queue") == "standard"
            and "direction" in e]


@pytest.mark.slow
def test_backlog_raises_the_limit_step_by_step_and_draining_lowers_it(
    database_url: str,
) -> None:
    env = {
        "TASKD_SCALE_CHECK_INTERVAL": "0.2",
        "TASKD_HEARTBEAT_INTERVAL": "0.5",
        "TASKD_QUEUES__STANDARD__INITIAL": "2",
        "TASKD_QUEUES__STANDARD__MAX": "10",
        "TASKD_QUEUES__STANDARD__STEP": "2",
        "TASKD_QUEUES__STANDARD__SCALE_UP_INTERVAL": "0.5",
        "TASKD_QUEUES__STANDARD__SCALE_DOWN_INTERVAL": "0.5",
    }
    total = 510
    seen: list[int] = []  # each distinct limit the executor row showed, in order

    def row_limit(executor_id: str) -> int:
        value = scalar(database_url, "SELECT (concurrency->>'standard')::int"
                       " FROM taskd.executors WHERE id = %s", executor_id)
        if not seen or seen[-1] != value:
            seen.append(value)
        return int(value)

    with daemons(database_url, 1, **env) as (daemon,):
        # Submitted once the row shows the initial limit, so that every step can be seen.
        wait_for(lambda: row_limit(daemon.executor_id) == 2, message="the initial limit 2")
        # 500 short subtasks, then 10 long ones (lower priority, so last): those are running
        # when the backlog is gone and the limit comes down.
        submit(database_url, 500, "sleep", priority=1, ms=100)
        submit(database_url, 10, "sleep", priority=0, ms=3000)
        wait_for(lambda: row_limit(daemon.executor_id) == 10, timeout=30, interval=0.02,
                 message="the limit to reach max 10")
        # The row is read all along, so that no step down goes unseen.
        wait_for(lambda: row_limit(daemon.executor_id) == 2
                 and counts(database_url).get("completed", 0) == total,
                 timeout=60, interval=0.02,
                 message=f"{total} completions and the limit back at initial 2")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        changes = scaler_events(daemon.events())

    # Up one step at a time to max, then down one step at a time to initial.
    assert [(d, limit) for d, limit, _ in changes] == [
        ("up", 4), ("up", 6), ("up", 8), ("up", 10),
        ("down", 8), ("down", 6), ("down", 4), ("down", 2),
    ], changes
    assert seen == [2, 4, 6, 8, 10, 8, 6, 4, 2]
    # The first scale-down came while more handlers ran than the new limit allowed...
    assert any(d == "down" and running > limit for d, limit, running in changes), changes
    # ...and none of them was cancelled: every subtask completed on its first attempt.
    assert counts(database_url) == {"completed": total}
    assert scalar(database_url, "SELECT max(attempt) FROM taskd.subtasks") == 1


@pytest.mark.slow
def test_three_daemons_with_cluster_max_4_never_run_more_than_4(database_url: str) -> None:
    create_executions_table(database_url)
    total = 80
    submit(database_url, total, "record", ms=60)
    env = {
        # 3 daemons x 3 slots = 9 > 4: the cap, not the limits, is what holds them back.
        "TASKD_QUEUES__STANDARD__INITIAL": "3",
        "TASKD_QUEUES__STANDARD__MAX": "3",
        "TASKD_QUEUES__STANDARD__CLUSTER_MAX": "4",
        "TASKD_POLL_INTERVAL": "0.05",
    }
    with daemons(database_url, 3, **env) as running:
        wait_for(lambda: counts(database_url).get("completed", 0) == total, timeout=60,
                 message=f"{total} completions")
        for d in running:
            d.signal(signal.SIGTERM)
        assert [d.wait(timeout=30) for d in running] == [0, 0, 0]

    rows = query(database_url, "SELECT started_at, finished_at, pid FROM public.executions")
    assert len(rows) == total and all(end is not None for _, end, _ in rows)
    # Sweep the handlers' own start and end times: an end at the same instant as a start
    # is counted first, so touching intervals do not overlap.
    edges = sorted([(start, 1) for start, _, _ in rows] + [(end, -1) for _, end, _ in rows],
                   key=lambda e: (e[0], e[1]))
    at_once = peak = 0
    for _, delta in edges:
        at_once += delta
        peak = max(peak, at_once)
    assert peak <= 4
    assert peak >= 3  # the cap was pressed against, not trivially met
    assert len({pid for _, _, pid in rows}) >= 2  # work was shared between the daemons
    assert counts(database_url) == {"completed": total}


def test_invalid_scaler_settings_stop_taskd_run_naming_queue_and_setting(
    database_url: str,
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env = {**clean, "TASKD_DATABASE_URL": database_url, "PYTHONPATH": str(REPO),
           "TASKD_QUEUES__IMAGES__INITIAL": "9", "TASKD_QUEUES__IMAGES__MAX": "3"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "taskd", "run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "queues.images" in done.stderr and "initial (9) must be <= max (3)" in done.stderr
    assert time.monotonic() - started < 30
