"""`taskd run` as real processes: crashes, signals, lost connections, wake-up latency."""

from __future__ import annotations

import signal
import time
from typing import Any

import anyio
import pytest

from taskd.executor.daemon import GC_THRESHOLDS
from taskd.queue import Store
from tests.system.daemons import (
    create_executions_table,
    daemons,
    query,
    scalar,
    wait_for,
)

# Short timings so that rescue and shutdown happen within seconds.
FAST = {
    "TASKD_HEARTBEAT_INTERVAL": "0.5",
    "TASKD_LEASE_TIMEOUT": "3",
    "TASKD_RESCUE_INTERVAL": "0.5",
    "TASKD_EXECUTOR_DEAD_AFTER": "2",
    "TASKD_POLL_INTERVAL": "0.5",
    "TASKD_QUEUES__STANDARD__INITIAL": "20",
    "TASKD_QUEUES__STANDARD__MAX": "20",
}


def submit(url: str, count: int, kind: str = "record", **payload: object) -> int:
    async def go() -> int:
        store = await Store.open(url)
        try:
            return await store.submit("standard", kind, [{**payload, "n": i} for i in range(count)])
        finally:
            await store.close()

    return anyio.run(go)


def counts(url: str) -> dict[str, int]:
    return dict(query(url, "SELECT status, count(*) FROM taskd.subtasks GROUP BY status"))


@pytest.mark.slow
def test_kill_9_one_of_three_daemons_loses_and_duplicates_nothing(database_url: str) -> None:
    create_executions_table(database_url)
    total = 5000
    submit(database_url, total, ms=2)
    with daemons(database_url, 3, **FAST) as (victim, *_survivors):
        wait_for(lambda: counts(database_url).get("completed", 0) >= 1000, timeout=60,
                 message="1,000 completions")
        victim.kill()
        killed_at = time.monotonic()
        # A statement the victim sent just before SIGKILL still runs to its end in its backend,
        # so its leases are only known once its backends are gone.
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM pg_stat_activity"
                                " WHERE application_name LIKE %s",
                                f"taskd% {victim.executor_id}"[:63]) == 0,
                 timeout=10, message="the victim's backends gone")
        held = {row[0] for row in query(database_url, "SELECT id FROM taskd.subtasks"
                                        " WHERE locked_by = %s", victim.executor_id)}
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.subtasks"
                                " WHERE locked_by = %s", victim.executor_id) == 0,
                 timeout=30, message="the victim's leases rescued")
        rescued_after = time.monotonic() - killed_at
        wait_for(lambda: counts(database_url).get("completed", 0) == total, timeout=120,
                 message="every subtask completed")
    assert counts(database_url) == {"completed": total}
    # Exactly one recorded outcome each, and never more executions than attempts and crashes
    # (a crash gives the attempt back).
    over = query(database_url, """
        SELECT s.id, s.attempt, s.crashes, count(e.id) FROM taskd.subtasks s
          LEFT JOIN public.executions e ON e.subtask_id = s.id
         GROUP BY s.id, s.attempt, s.crashes
        HAVING count(e.id) > s.attempt + s.crashes OR count(e.id) = 0""")
    assert over == []
    # Only the leases the victim held when it died were run again, without spending an attempt.
    assert {row[0] for row in query(database_url,
                                    "SELECT id FROM taskd.subtasks WHERE crashes > 0")} <= held
    assert scalar(database_url, "SELECT max(attempt) FROM taskd.subtasks") == 1
    # lease_timeout (3 s) + one rescuer interval (0.5 s, jittered) + polling slack.
    assert rescued_after < 3 + 0.6 + 1.5, rescued_after
    task = query(database_url, "SELECT status, completed, failed FROM taskd.tasks")
    assert task == [("completed", total, 0)]


def test_sigterm_lets_running_handlers_finish(database_url: str) -> None:
    create_executions_table(database_url)
    submit(database_url, 10, ms=800)
    with daemons(database_url, 1, **FAST, TASKD_SHUTDOWN_GRACE="10") as (d,):
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM public.executions") == 10,
                 message="all ten handlers started")
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0, d.log()
    assert counts(database_url) == {"completed": 10}
    assert scalar(database_url, "SELECT status FROM taskd.executors") == "stopped"
    assert scalar(database_url,
                  "SELECT count(*) FROM public.executions WHERE finished_at IS NULL") == 0


def test_sigterm_gives_back_handlers_that_outlive_the_grace(database_url: str) -> None:
    create_executions_table(database_url)
    submit(database_url, 3, ms=60_000)
    with daemons(database_url, 1, **FAST, TASKD_SHUTDOWN_GRACE="0.5") as (d,):
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM public.executions") == 3,
                 message="three handlers started")
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0, d.log()
        assert time.monotonic() - started < 10
    rows = query(database_url,
                 "SELECT status, attempt, locked_by, lease_expires_at FROM taskd.subtasks")
    assert rows == [("pending", 0, None, None)] * 3
    assert scalar(database_url, "SELECT status FROM taskd.executors") == "stopped"


def test_second_signal_exits_at_once(database_url: str) -> None:
    create_executions_table(database_url)
    submit(database_url, 2, ms=60_000)
    with daemons(database_url, 1, **FAST, TASKD_SHUTDOWN_GRACE="60") as (d,):
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM public.executions") == 2,
                 message="handlers started")
        d.signal(signal.SIGINT)
        wait_for(lambda: any(e.get("message") == "shutting down" for e in d.events()),
                 message="graceful shutdown begun")
        d.signal(signal.SIGINT)
        assert d.wait(timeout=10) == 130


def test_connections_terminated_by_the_server_are_recovered(database_url: str) -> None:
    create_executions_table(database_url)
    total = 600
    submit(database_url, total, ms=20)
    with daemons(database_url, 2, **FAST):
        wait_for(lambda: counts(database_url).get("completed", 0) >= 100,
                 message="100 completions")
        killed = scalar(database_url, """
            SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE 'taskd%%'
               AND pid <> pg_backend_pid()""")
        assert killed >= 2
        wait_for(lambda: counts(database_url).get("completed", 0) == total, timeout=90,
                 message="all work finished after the connections were killed")
    assert counts(database_url) == {"completed": total}


def started_within(url: str, task_id: int) -> float:
    return float(scalar(url, "SELECT extract(epoch FROM s.started_at - t.created_at)"
                        " FROM taskd.subtasks s JOIN taskd.tasks t ON t.id = s.task_id"
                        " WHERE t.id = %s", task_id))


def test_listen_wakes_an_idle_daemon_within_50ms(database_url: str) -> None:
    with daemons(database_url, 1, TASKD_POLL_INTERVAL="30") as (d,):
        wait_for(lambda: any(e.get("message") == "ready" for e in d.events()))
        latencies = []
        for _ in range(5):
            task_id = submit(database_url, 1, kind="noop")
            wait_for(lambda task_id=task_id: scalar(
                database_url, "SELECT status FROM taskd.tasks WHERE id = %s", task_id
            ) == "completed", timeout=10, message="the subtask ran")
            latencies.append(started_within(database_url, task_id))
    assert sorted(latencies)[2] < 0.05, latencies  # the median, from database timestamps


def test_the_daemon_freezes_startup_objects_out_of_the_garbage_collector(
    database_url: str,
) -> None:
    with daemons(database_url, 1) as (d,):
        ready = next(e for e in d.events() if e.get("message") == "ready")
    assert ready["gc_thresholds"] == list(GC_THRESHOLDS)
    assert ready["gc_frozen_objects"] > 10_000  # every module the daemon imported


def test_without_listen_polling_finds_work_within_the_poll_interval(database_url: str) -> None:
    with daemons(database_url, 1, TASKD_LISTEN="false", TASKD_POLL_INTERVAL="0.5"):
        task_id = submit(database_url, 1, kind="noop")
        wait_for(lambda: scalar(database_url, "SELECT status FROM taskd.tasks WHERE id = %s",
                                task_id) == "completed", timeout=10)
    assert started_within(database_url, task_id) < 0.5 + 0.3


def test_unknown_kind_fails_at_once_and_permanently(database_url: str) -> None:
    with daemons(database_url, 1, **FAST) as (d,):
        task_id = submit(database_url, 1, kind="no_such_kind")
        wait_for(lambda: scalar(database_url, "SELECT status FROM taskd.tasks WHERE id = %s",
                                task_id) == "failed", timeout=10)
        log = d.log()
    status, attempt, error = query(database_url,
                                   "SELECT status, attempt, error FROM taskd.subtasks")[0]
    assert (status, attempt) == ("failed", 1)
    assert "no_such_kind" in error
    assert scalar(database_url, "SELECT count FROM taskd.error_logs") == 1
    assert "no_such_kind" in log


def test_handler_past_its_timeout_is_cancelled_and_retried(database_url: str) -> None:
    create_executions_table(database_url)
    env = {**FAST, "TASKD_QUEUES__STANDARD__TIMEOUT": "0.3",
           "TASKD_QUEUES__STANDARD__RETRY_BASE": "0.1"}
    with daemons(database_url, 1, **env):
        submit(database_url, 1, ms=5_000)
        wait_for(lambda: scalar(database_url, "SELECT status FROM taskd.subtasks") == "failed",
                 timeout=20, message="four timed-out attempts")
    attempt, error = query(database_url, "SELECT attempt, error FROM taskd.subtasks")[0]
    assert attempt == 4  # the default max_attempts: one run and 3 retries
    assert "timeout" in error.lower() or "timed out" in error.lower()
    assert scalar(database_url, "SELECT count(*) FROM public.executions") == 4


def test_logs_never_show_the_database_password(database_url: str) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    parts = conninfo_to_dict(database_url)
    # Trust authentication ignores the password; the logs must not repeat it anyway.
    with_password = make_conninfo(**{**parts, "password": "s3cr3t-pass"})  # type: ignore[arg-type]
    with daemons(with_password, 1, TASKD_LOG_LEVEL="debug") as (d,):
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
        log = d.log()
    assert "starting" in log
    assert "s3cr3t-pass" not in log


@pytest.mark.slow
def test_a_30_second_database_outage_loses_and_duplicates_nothing(database_url: str) -> None:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from tests.system.proxy import CuttableProxy

    parts = conninfo_to_dict(database_url)
    total = 3000
    target = (str(parts.get("host", "127.0.0.1")), int(parts.get("port", 5432)))
    with CuttableProxy(target) as proxy:
        through_proxy = make_conninfo(**{**parts, "host": "127.0.0.1",  # type: ignore[arg-type]
                                         "port": str(proxy.port)})
        env = {"TASKD_HEARTBEAT_INTERVAL": "1", "TASKD_LEASE_TIMEOUT": "60",
               "TASKD_POLL_INTERVAL": "0.5", "TASKD_QUEUES__STANDARD__INITIAL": "20"}
        submit(database_url, total, kind="sleep", ms=20)
        with daemons(through_proxy, 2, **env) as running:
            wait_for(lambda: counts(database_url).get("completed", 0) >= 300,
                     message="300 completions")
            proxy.cut()
            cut_at = time.monotonic()
            done_at_cut = counts(database_url).get("completed", 0)
            while time.monotonic() - cut_at < 30:
                assert all(d.proc.poll() is None for d in running), "a daemon died"
                time.sleep(0.5)  # the outage itself: a fixed 30 s, by design
            frozen = counts(database_url).get("completed", 0)
            assert frozen - done_at_cut < 100  # nothing can be recorded while cut off...
            proxy.restore()
            restored_at = time.monotonic()
            wait_for(lambda: counts(database_url).get("completed", 0) > frozen, timeout=15,
                     message="work resumed")
            resumed_after = time.monotonic() - restored_at
            wait_for(lambda: counts(database_url).get("completed", 0) == total, timeout=120,
                     message="all work finished after the outage")
            assert all(d.proc.poll() is None for d in running)
    assert counts(database_url) == {"completed": total}
    assert query(database_url, "SELECT status, completed FROM taskd.tasks") == [
        ("completed", total)
    ]
    assert resumed_after < 10, resumed_after


def test_systemd_hears_ready_watchdog_and_stopping(database_url: str, tmp_path: Any) -> None:
    import socket as socketlib

    path = str(tmp_path / "notify.sock")
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(20)
        # WATCHDOG_USEC of 2 s: the heartbeat pings at least every second.
        with daemons(database_url, 1, NOTIFY_SOCKET=path, WATCHDOG_USEC="2000000") as (d,):
            heard = [sock.recv(4096).decode() for _ in range(2)]
            d.signal(signal.SIGTERM)
            while "STOPPING=1" not in heard:
                heard.append(sock.recv(4096).decode())
            assert d.wait(timeout=30) == 0
    assert heard[0] == "READY=1"
    assert "WATCHDOG=1" in heard


def test_metrics_port_in_use_stops_the_daemon_with_one_line(database_url: str) -> None:
    import os
    import socket as socketlib
    import subprocess
    import sys

    with socketlib.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        done = subprocess.run(
            [sys.executable, "-m", "taskd", "run"], capture_output=True, text=True, timeout=60,
            env={**env, "TASKD_DATABASE_URL": database_url,
                 "TASKD_METRICS_ADDR": f"127.0.0.1:{port}"}, check=False,
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"metrics_addr 127.0.0.1:{port}" in done.stderr.splitlines()[-1]


def test_a_payload_too_deep_for_python_fails_alone_and_the_daemon_lives(
    database_url: str,
) -> None:
    # PostgreSQL stores JSON nested 10,000 deep; Python's decoder cannot read it back.
    # Regression: the claim that fetched it raised RecursionError and the daemon exited.
    # submit_task refuses such payloads now (migration 0003): write around it, as a direct
    # INSERT could.
    deep = "[" * 10_000 + "]" * 10_000
    query(database_url, """
        WITH t AS (INSERT INTO taskd.tasks (queue, kind, total)
                   VALUES ('standard', 'noop', 1) RETURNING id)
        INSERT INTO taskd.subtasks (task_id, queue, kind, payload)
        SELECT id, 'standard', 'noop', %s::jsonb FROM t RETURNING id""", f'{{"deep": {deep}}}')
    with daemons(database_url, 1, **FAST) as (d,):
        wait_for(lambda: scalar(database_url, "SELECT status FROM taskd.tasks") == "failed",
                 timeout=20, message="the unreadable subtask failed")
        after = submit(database_url, 2, kind="noop")
        wait_for(lambda: scalar(database_url, "SELECT status FROM taskd.tasks WHERE id = %s",
                                after) == "completed", timeout=20, message="later work ran")
        assert d.proc.poll() is None
    status, attempt, error = query(
        database_url, "SELECT status, attempt, error FROM taskd.subtasks ORDER BY id LIMIT 1"
    )[0]
    assert (status, attempt) == ("failed", 1)
    assert "nested too deeply" in error
