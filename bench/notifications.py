"""Task-end webhooks (issue 27): what the outbox costs the drain when no task fails, and how
many deliveries per second one daemon makes to a local receiver.

Drain cost: N tasks of one subtask each (every completion ends a task: the trigger's worst
case), each with a notify_url (notify_on failed), the queue with a default target and an
operator's target for failed tasks: every end looks for targets and finds none to write.
Against the same database with schema 10's counter trigger put back (no outbox), in
alternating runs, because the machine's speed drifts between runs.

Deliveries: N failed tasks with a target on a receiver in this process (a threading HTTP/1.1
server on loopback that answers 200), one daemon, from its start to the last delivery.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.common import connect, daemons, print_table, queue_env, scalar, temp_database, wait_for
from bench.taskd_workloads import drain_stats, wait_completed
from taskd.queue import migrations

SUBMIT_WITH_TARGET = (
    "SELECT taskd.submit_task('standard', 'noop', '[{}]', notify_url => %s)"
    " FROM generate_series(1, %s)")
TARGET = "https://hooks.example/bench"


def _trigger_of_version(version: int) -> str:
    """The counter trigger's CREATE OR REPLACE as migration ``version`` wrote it."""
    migration = next(m for m in migrations.migrations() if m.version == version)
    match = re.search(r"CREATE OR REPLACE FUNCTION taskd\.subtasks_count_outcomes\(\).*?\$\$;",
                      migration.sql, re.DOTALL)
    if match is None:
        raise RuntimeError(f"migration {version} does not define the counter trigger")
    return match.group(0)


def _drain(n: int, processes: int, concurrency: int, outbox: bool) -> dict[str, Any]:
    with temp_database() as url:
        with connect(url) as conn:
            if outbox:
                conn.execute("INSERT INTO taskd.notify_routes VALUES"
                             " ('standard', 'https://hooks.example/queue', '{failed}'),"
                             " ('*', 'https://ops.example/taskd', '{failed}')")
            else:
                conn.execute(_trigger_of_version(10).encode())
        # The dispatcher idles either way (nothing to deliver): it is not what is measured.
        with daemons(url, processes, queue_env("standard", concurrency)):
            time.sleep(0.5)
            with connect(url) as conn, conn.transaction():
                conn.execute(SUBMIT_WITH_TARGET, (TARGET, n))
            wait_completed(url, n, timeout=max(120.0, n / 200))
            rows = scalar(url, "SELECT count(*) FROM taskd.notifications")
        return {**drain_stats(url), "outbox_rows": rows}


def drain_cost(n: int, processes: int, concurrency: int, repeat: int) -> list[dict[str, Any]]:
    table = []
    for r in range(repeat):
        order = (True, False) if r % 2 == 0 else (False, True)
        for outbox in order:
            stats = _drain(n, processes, concurrency, outbox)
            table.append({"trigger": "14 (outbox)" if outbox else "10 (none)", "run": r + 1,
                          "n": n, **stats})
    by_run: dict[int, dict[str, float]] = {}
    for row in table:
        by_run.setdefault(row["run"], {})[row["trigger"]] = row["per_s"]
    for row in table:
        pair = by_run[row["run"]]
        row["outbox_vs_none"] = pair["14 (outbox)"] / pair["10 (none)"]
    print_table(f"drain of {n:,} one-subtask tasks with targets, none failing, by {processes} "
                "daemon(s): schema 14's outbox trigger vs schema 10's", table)
    return table


def statement_cost(rows: int, repeat: int) -> list[dict[str, Any]]:
    """The completion statement alone, the trigger's whole cost: ``rows`` processing subtasks
    of as many tasks (each with a target, none failing) completed by one UPDATE, under schema
    14's trigger and schema 10's, alternating, ``repeat`` times each. No daemon: on a loaded
    machine this isolates the trigger better than a drain does."""
    table = []
    with temp_database() as url, connect(url) as conn:
        conn.execute("INSERT INTO taskd.notify_routes VALUES"
                     " ('standard', 'https://hooks.example/queue', '{failed}'),"
                     " ('*', 'https://ops.example/taskd', '{failed}')")
        for r in range(repeat):
            for version in ((14, 10) if r % 2 == 0 else (10, 14)):
                conn.execute(_trigger_of_version(version).encode())
                conn.execute("TRUNCATE taskd.tasks, taskd.subtasks, taskd.notifications")
                conn.execute(SUBMIT_WITH_TARGET, (TARGET, rows))
                conn.execute("UPDATE taskd.subtasks SET status = 'processing', locked_by = 'b',"
                             " attempt = 1, started_at = now()")
                conn.execute("VACUUM ANALYZE taskd.subtasks, taskd.tasks")
                cpu_before = _backend_cpu_ms(conn.info.backend_pid)
                started = time.perf_counter()
                conn.execute("UPDATE taskd.subtasks SET status = 'completed', locked_by = NULL,"
                             " completed_at = now() WHERE status = 'processing'")
                ms = (time.perf_counter() - started) * 1000
                cpu = _backend_cpu_ms(conn.info.backend_pid) - cpu_before
                table.append({"trigger": f"{version}", "run": r + 1, "rows": rows, "ms": ms,
                              "backend_cpu_ms": cpu})
    print_table(f"one UPDATE completing {rows:,} subtasks of {rows:,} tasks with targets "
                f"({repeat} alternating runs each)", table)
    summary = []
    for v in (10, 14):
        mine = [row for row in table if row["trigger"] == str(v)]
        walls = sorted(row["ms"] for row in mine)
        summary.append({"trigger": str(v), "median_ms": walls[len(walls) // 2],
                        "backend_cpu_ms_total": sum(row["backend_cpu_ms"] for row in mine)})
    for row in summary:
        row["median_vs_10"] = row["median_ms"] / summary[0]["median_ms"]
        row["cpu_vs_10"] = row["backend_cpu_ms_total"] / (summary[0]["backend_cpu_ms_total"]
                                                         or float("nan"))
    print_table("per trigger: median wall time; the backend's CPU summed over the runs "
                "(clock ticks of 10 ms: sum many runs)", summary)
    return [*table, *summary]


def _backend_cpu_ms(pid: int) -> float:
    """utime + stime of a local PostgreSQL backend, in ms (0 when /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        with _Ok.lock:
            _Ok.count += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    # socketserver's backlog of 5 resets connections a dispatcher opens in a burst.
    request_queue_size = 128
    daemon_threads = True


@contextmanager
def _receiver() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        server.shutdown()
        server.server_close()


def deliveries(n: int, max_connections: int, batch_size: int, repeat: int
               ) -> list[dict[str, Any]]:
    table = []
    for r in range(repeat):
        with temp_database() as url, _receiver() as target:
            migrations.migrate_blocking(url, allow_http_private=True)
            with connect(url) as conn:
                conn.execute(SUBMIT_WITH_TARGET, (target, n))
                conn.execute("UPDATE taskd.subtasks SET status = 'failed', error = 'x: y',"
                             " completed_at = now()")
            env = {"TASKD_NOTIFICATIONS__SIGNING_KEY": "bench",
                   "TASKD_NOTIFICATIONS__MAX_CONNECTIONS": str(max_connections),
                   "TASKD_NOTIFICATIONS__BATCH_SIZE": str(batch_size),
                   "TASKD_NOTIFICATIONS__POLL_INTERVAL": "0.2"}
            with daemons(url, 1, env):
                wait_for(lambda: scalar(url, "SELECT count(*) FROM taskd.notifications"
                                             " WHERE status = 'delivered'") == n,
                         timeout=max(120.0, n / 20), interval=0.1, what="all delivered")
                seconds = float(scalar(
                    url, "SELECT extract(epoch FROM max(delivered_at) - min(delivered_at))"
                         " FROM taskd.notifications"))
            # From the first delivery to the last, on the database clock: n - 1 intervals.
            table.append({"run": r + 1, "n": n, "max_connections": max_connections,
                          "batch_size": batch_size, "seconds": seconds,
                          "deliveries_per_s": (n - 1) / seconds if seconds else 0.0})
    print_table(f"{n:,} webhook deliveries by one daemon to a local receiver", table)
    return table


def notifications(n: int, deliveries_n: int, processes: int, concurrency: int, repeat: int,
                  max_connections: int, batch_size: int) -> dict[str, Any]:
    return {
        "statement": statement_cost(min(n, 2000), 10 * repeat),
        "drain": drain_cost(n, processes, concurrency, repeat),
        "deliveries": deliveries(deliveries_n, max_connections, batch_size, repeat),
    }
