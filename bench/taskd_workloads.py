"""Workloads that measure taskd itself: throughput, latency, growth, external API, submit,
footprint. Each returns a dict (what its JSON holds) and prints a table."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    connect,
    cpu_per_item,
    daemons,
    latency_summary,
    print_table,
    queue_env,
    rows,
    scalar,
    temp_database,
    wait_for,
)

SUBMIT = ("SELECT taskd.submit_task(queue => %s, kind => %s, payloads => %s::jsonb,"
          " max_attempts => 3)")
CHUNK = 10_000


def submit_noops(conn: psycopg.Connection[Any], n: int, *, queue: str = "standard",
                 kind: str = "noop", payload: dict[str, Any] | None = None,
                 per_task: int = CHUNK) -> None:
    """Insert ``n`` subtasks as tasks of up to ``per_task`` (10,000), in the caller's
    transaction."""
    text = json.dumps(payload or {})
    left = n
    while left > 0:
        k = min(per_task, left)
        conn.execute(SUBMIT, (queue, kind, "[" + ",".join([text] * k) + "]"))
        left -= k


def drain_stats(url: str) -> dict[str, Any]:
    """Completed subtasks and the span from the first claim to the last completion."""
    n, first, last = rows(
        url, "SELECT count(*), min(started_at), max(completed_at) FROM taskd.subtasks"
             " WHERE status = 'completed' AND task_id NOT IN"
             " (SELECT id FROM taskd.tasks WHERE name = 'bench-history')")[0]
    seconds = (last - first).total_seconds() if n else float("nan")
    return {"completed": n, "seconds": seconds, "per_s": n / seconds if n and seconds else 0.0}


def wait_completed(url: str, n: int, timeout: float) -> None:
    wait_for(lambda: (scalar(url, "SELECT coalesce(sum(completed + failed), 0)"
                                  " FROM taskd.tasks") or 0) >= n,
             timeout=timeout, interval=0.1, what=f"{n} subtasks finished")


def drain(url: str, n: int, processes: int, concurrency: int,
          extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start the daemons idle, then make ``n`` noop subtasks visible in one commit."""
    env = {**queue_env("standard", concurrency), **(extra_env or {})}
    with daemons(url, processes, env) as started:
        time.sleep(0.5)  # let the first idle polls pass
        with connect(url) as conn, conn.transaction():
            submit_noops(conn, n)
        # From the commit, so that the submission's own work (and its WAL) is not counted:
        # the client's figure is the daemons', the server's mostly their backends'.
        with cpu_per_item(n, [d.pid for d in started]) as cpu:
            wait_completed(url, n, timeout=max(120.0, n / 200))
    return {**drain_stats(url), "client_cpu_us": cpu["client_cpu_us"],
            "pg_cpu_us": cpu["server_cpu_us"]}


def throughput(n: int, processes: Sequence[int], concurrency: int,
               repeat: int = 1) -> dict[str, Any]:
    table = []
    for p in processes:
        for r in range(repeat):
            with temp_database() as url:
                stats = drain(url, n, p, concurrency)
            table.append({"system": "taskd", "processes": p, "concurrency": concurrency,
                          "run": r + 1, "n": n, **stats})
    print_table(f"throughput: {n:,} noop subtasks", table)
    return {"n": n, "concurrency": concurrency, "results": table}


def paced(rate: float, seconds: float, send: Any) -> None:
    """Call ``send(i)`` at a steady ``rate`` per second for ``seconds`` seconds."""
    count = int(rate * seconds)
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(i)


def latency(rate: float, seconds: float) -> dict[str, Any]:
    """An idle daemon; one subtask per submit_task call at ``rate``/s; enqueue-to-start."""
    ends: dict[int, Any] = {}  # task id -> the submission's end (before its commit)
    with temp_database() as url:
        with daemons(url, 1, queue_env("standard", 10)):
            time.sleep(1.0)
            with connect(url) as conn:

                def send(_i: int) -> None:
                    task_id, end = conn.execute(SUBMIT + ", clock_timestamp()",
                                                ("standard", "noop", "[{}]")).fetchone()  # type: ignore[misc]
                    ends[task_id] = end

                paced(rate, seconds, send)
            count = int(rate * seconds)
            wait_completed(url, count, timeout=60)
        found = rows(url, "SELECT task_id, created_at, started_at FROM taskd.subtasks")
    ms = [(started - created).total_seconds() * 1000 for _, created, started in found]
    # Taken apart: the submission's own execution, and its end to the claim's start (its
    # commit and flush, the notification, the daemon's reaction); docs/benchmarks.md.
    own = [(ends[t] - created).total_seconds() * 1000 for t, created, _ in found]
    after = [(started - ends[t]).total_seconds() * 1000 for t, _, started in found]
    summary = {"system": "taskd", "rate_per_s": rate, **latency_summary(ms),
               "submit_own_p50_ms": round(statistics.median(own), 3),
               "after_submit_p50_ms": round(statistics.median(after), 3)}
    print_table(f"latency: enqueue-to-start at {rate:g}/s for {seconds:g} s", [summary])
    return {"rate": rate, "seconds": seconds, "results": [summary]}


FILL = """
INSERT INTO taskd.subtasks (task_id, queue, kind, status, payload, attempt, run_after,
                            created_at, started_at, completed_at, updated_at, result)
SELECT %(task_id)s, 'standard', 'noop', 'completed', '{}'::jsonb, 1, now(), now(), now(),
       now(), now(), 'null'::jsonb
  FROM generate_series(1, %(n)s)
"""


def fill_history(url: str, n: int) -> float:
    """Add ``n`` finished subtasks (INSERT ... SELECT generate_series); return seconds."""
    started = time.perf_counter()
    with connect(url) as conn:
        task_id = conn.execute(
            "INSERT INTO taskd.tasks (name, queue, kind, total, status) VALUES"
            " ('bench-history', 'standard', 'noop', 1, 'completed') RETURNING id").fetchone()[0]  # type: ignore[index]
        step = 1_000_000
        for done in range(0, n, step):
            conn.execute(FILL, {"task_id": task_id, "n": min(step, n - done)})
        conn.execute("VACUUM ANALYZE taskd.subtasks")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def growth(history: Sequence[int], n: int, processes: int, concurrency: int,
           repeat: int = 1) -> dict[str, Any]:
    """Drain ``n`` noops after each amount of history, ``repeat`` rounds (sizes alternate).

    A drain lasts a few seconds, so one run moves by ~10% from the next: the ratio to the empty
    table is taken between the best run of each size.
    """
    table = []
    for r in range(repeat):
        for h in history:
            with temp_database() as url:
                fill_s = fill_history(url, h) if h else 0.0
                stats = drain(url, n, processes, concurrency)
                size = scalar(url, "SELECT pg_size_pretty(pg_relation_size('taskd.subtasks'))")
            table.append({"finished_rows": h, "run": r + 1, "fill_s": fill_s, "table_size": size,
                          "processes": processes, "n": n, **stats})
    best = {h: max(row["per_s"] for row in table if row["finished_rows"] == h) for h in history}
    base = best.get(0)
    summary = [{"finished_rows": h, "best_per_s": per_s,
                "vs_empty": per_s / base if base else float("nan")}
               for h, per_s in best.items()]
    print_table(f"growth: {n:,} noop subtasks after N finished rows", table)
    print_table("growth: best run of each size, and its ratio to the empty table's best", summary)
    return {"n": n, "processes": processes, "results": table, "summary": summary}


@contextmanager
def fake_lumina_process(job_seconds: float) -> Iterator[str]:
    """The fake Lumina API in a process of its own, as a real API would be; yields its URL."""
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = subprocess.Popen(
        [sys.executable, "-m", "taskd.testing.fake_apis", "--port", str(port),
         "--job-seconds", str(job_seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(base + "/v1/stats").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, what="fake Lumina API")
        yield base
    finally:
        api.terminate()
        api.wait(timeout=10)


def external_api(n: int, job_seconds: float, limit: int, polling: float) -> dict[str, Any]:
    """``n`` lumina subtasks against the fake API (its own process, as a real API would be)."""
    import httpx

    with fake_lumina_process(job_seconds) as base:
        with temp_database() as url:
            env = {**queue_env("lumina", limit), "TASKD_QUEUES__LUMINA__BASE_URL": base,
                   "TASKD_QUEUES__LUMINA__POLLING_INTERVAL": str(polling)}
            with daemons(url, 1, env):
                time.sleep(0.5)
                started = time.perf_counter()
                with connect(url) as conn:
                    submit_noops(conn, n, queue="lumina", kind="lumina",
                                 payload={"prompt": "bench"})
                wait_completed(url, n, timeout=max(120.0, n * job_seconds))
                wall = time.perf_counter() - started
            failed = scalar(url,
                            "SELECT count(*) FROM taskd.subtasks WHERE status <> 'completed'")
            # The same span on the database's clock: without the harness's own polling for
            # the end (every 0.1 s) and its client-side submission.
            span = scalar(url, "SELECT extract(epoch FROM max(completed_at) - min(created_at))"
                               "  FROM taskd.subtasks")
        stats = httpx.get(base + "/v1/stats").json()
    ideal = n * job_seconds / limit
    row = {"system": "taskd", "n": n, "job_s": job_seconds, "limit": limit,
           "polling_s": polling, "ideal_s": ideal, "wall_s": wall, "wall_vs_ideal": wall / ideal,
           "db_span_s": float(span), "db_span_vs_ideal": float(span) / ideal,
           "not_completed": failed, "max_in_flight": stats.get("max_in_flight"),
           "jobs": stats.get("jobs"), "polls": stats.get("polls")}
    print_table("external API: lumina subtasks against the fake API", [row])
    return {"results": [row]}


def submit_sql(tasks: int, per_task: int) -> dict[str, Any]:
    """Subtasks/s through taskd.submit_task, one call per task of ``per_task`` subtasks."""
    table = []
    with temp_database() as url, connect(url) as conn:
        for size in (1, per_task):
            count = tasks if size > 1 else tasks * 10
            payloads = "[" + ",".join(['{"i":1}'] * size) + "]"
            started = time.perf_counter()
            for _ in range(count):
                conn.execute(SUBMIT, ("standard", "noop", payloads))
            seconds = time.perf_counter() - started
            table.append({"path": "taskd.submit_task", "subtasks_per_call": size,
                          "calls": count, "seconds": seconds, "calls_per_s": count / seconds,
                          "subtasks_per_s": count * size / seconds})
    print_table("submit: taskd.submit_task, one connection", table)
    return {"results": table}


def _rss_kib(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    status = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def footprint(n: int, concurrency: int, sleep_ms: int) -> dict[str, Any]:
    """RSS of one daemon running ``n`` sleep subtasks at ``concurrency``; its connections."""
    with temp_database() as url:
        dbname = scalar(url, "SELECT current_database()")
        with daemons(url, 1, queue_env("standard", concurrency)) as (d,):
            idle_rss, _ = _rss_kib(d.pid)
            with connect(url) as conn, conn.transaction():
                submit_noops(conn, n, kind="sleep", payload={"ms": sleep_ms})
            peak_conns = 0
            rss_samples = []
            deadline = time.monotonic() + max(120.0, n * sleep_ms / 1000 / concurrency * 3)
            while time.monotonic() < deadline:
                done = scalar(url, "SELECT coalesce(sum(completed + failed), 0) FROM taskd.tasks")
                conns = scalar(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                    " AND application_name LIKE 'taskd%%'", dbname)
                peak_conns = max(peak_conns, conns)
                rss_samples.append(_rss_kib(d.pid)[0])
                if done >= n:
                    break
                time.sleep(0.2)
            _, hwm = _rss_kib(d.pid)
            metrics = _metric_pool_max(d.log())
    row = {"system": "taskd", "n": n, "concurrency": concurrency, "sleep_ms": sleep_ms,
           "idle_rss_mib": idle_rss / 1024, "peak_rss_mib": max(rss_samples) / 1024,
           "hwm_rss_mib": hwm / 1024, "peak_connections": peak_conns,
           "pool_size_reported": metrics}
    print_table("footprint: one daemon", [row])
    return {"results": [row]}


def _metric_pool_max(log: str) -> Any:
    """The daemon's reported pool size, from its /metrics (``db_pool_connections{max}``)."""
    import re

    import httpx

    for line in log.splitlines():
        match = re.search(r'"metrics_url": "([^"]+)"', line)
        if match:
            url = match.group(1).replace(match.group(1).split("//")[1].split(":")[0],
                                         "127.0.0.1")
            try:
                text = httpx.get(url, timeout=5).text
            except httpx.HTTPError:
                return None
            for m in text.splitlines():
                if m.startswith('taskd_db_pool_connections{state="max"}'):
                    return float(m.split()[-1])
    return None
