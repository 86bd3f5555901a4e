"""The console's page latency with many finished subtasks (issue 33: each page within 200 ms
with 1 M finished subtasks, its queries on indexes).

``python -m bench console --subtasks 1000000`` fills a fresh database with that many finished
subtasks (4 per task, spread over a day, 1 task in 100 failed with one of 20 errors, plus a
pending backlog), starts ``taskd api`` as its own process on loopback, signs in and asks each
page ``--repeat`` times in turn, one request at a time; it reports p50, p95 and the slowest
answer per page, in milliseconds, as the client saw them.
"""

from __future__ import annotations

import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx
from psycopg import connect
from pydantic import SecretStr

from bench.common import REPO, free_port, print_table, temp_database

PER_TASK = 4
ERRORS = 20

FILL_TASKS = """
INSERT INTO taskd.tasks (id, name, queue, kind, priority, user_id, params, status, total,
                         completed, failed, created_at, updated_at, completed_at,
                         first_subtask_id, last_subtask_id)
OVERRIDING SYSTEM VALUE
SELECT g, 'bench-' || g, (ARRAY['standard', 'lumina', 'reports'])[1 + g %% 3],
       (ARRAY['noop', 'resize', 'render', 'lumina', 'export'])[1 + g %% 5], (g %% 11) - 5,
       'user-' || (g %% 50), jsonb_build_object('n', g),
       CASE WHEN failed THEN 'failed' ELSE 'completed' END, k,
       CASE WHEN failed THEN 0 ELSE k END, CASE WHEN failed THEN k ELSE 0 END,
       at, at + interval '1 s', at + interval '1 s', (g - 1) * k + 1, g * k
  FROM (SELECT g, g %% 100 = 0 AS failed, %(k)s::integer AS k,
               now() - make_interval(secs => (%(tasks)s::bigint - g) * 86400.0
                                             / %(tasks)s::bigint) AS at
          FROM generate_series(%(start)s::bigint, %(stop)s::bigint) g) series
"""

FILL_SUBTASKS = """
INSERT INTO taskd.subtasks (id, task_id, queue, kind, priority, status, payload, result, error,
                            attempt, run_after, created_at, started_at, completed_at, updated_at)
OVERRIDING SYSTEM VALUE
SELECT (t.id - 1) * %(k)s::integer + j, t.id, t.queue, t.kind, t.priority,
       CASE WHEN t.status = 'failed' THEN 'failed' ELSE 'completed' END,
       jsonb_build_object('n', j, 'image', 'img-' || t.id || '-' || j || '.png'),
       CASE WHEN t.status = 'failed' THEN NULL ELSE '{"ok": true}'::jsonb END,
       CASE WHEN t.status = 'failed'
            THEN 'ValueError: bad input ' || (t.id / 100) %% %(errors)s::integer END,
       CASE WHEN t.status = 'failed' THEN 4 ELSE 1 END,
       t.created_at, t.created_at, t.created_at, t.completed_at, t.completed_at
  FROM taskd.tasks t, generate_series(1, %(k)s::integer) j
 WHERE t.id BETWEEN %(start)s::bigint AND %(stop)s::bigint
"""

FILL_ERRORS = """
INSERT INTO taskd.error_logs (error_type, error_message, count, stack_trace, queue, kind,
                              first_occurred_at, last_occurred_at)
SELECT 'ValueError', 'bad input ' || e, count(*),
       'Traceback (most recent call last):\n  File "handler.py", line 7\nValueError',
       max(s.queue), max(s.kind), min(s.completed_at), max(s.completed_at)
  FROM generate_series(0, %(errors)s::integer - 1) e
  JOIN taskd.subtasks s ON s.status = 'failed' AND s.error = 'ValueError: bad input ' || e
 GROUP BY e
"""


def fill(url: str, subtasks: int, pending: int) -> dict[str, Any]:
    """``subtasks`` finished subtasks in ``subtasks / 4`` tasks, then ``pending`` waiting ones
    submitted the usual way; returns the fill's numbers."""
    tasks = subtasks // PER_TASK
    started = time.perf_counter()
    with connect(url, autocommit=True) as conn:
        step = 50_000
        for start in range(1, tasks + 1, step):
            stop = min(tasks, start + step - 1)
            params = {"k": PER_TASK, "tasks": tasks, "start": start, "stop": stop,
                      "errors": ERRORS}
            conn.execute(FILL_TASKS, params)
            conn.execute(FILL_SUBTASKS, params)
        conn.execute(FILL_ERRORS, {"errors": ERRORS})
        for table in ("tasks", "subtasks"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('taskd.{table}', 'id'),"  # noqa: S608
                         f" (SELECT max(id) FROM taskd.{table}))")
        for i in range(pending // PER_TASK):
            conn.execute("SELECT taskd.submit_task_for_user(user_id => %s, queue => 'standard',"
                         " kind => 'noop', payloads => %s::jsonb)",
                         (f"user-{i % 50}", "[" + ",".join(['{"n": 1}'] * PER_TASK) + "]"))
        conn.execute("VACUUM ANALYZE taskd.tasks")
        conn.execute("VACUUM ANALYZE taskd.subtasks")
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('taskd.subtasks'))"
                            ).fetchone()
    return {"finished_subtasks": tasks * PER_TASK, "tasks": tasks, "pending_subtasks": pending,
            "fill_s": time.perf_counter() - started, "subtasks_size": size[0] if size else ""}


def _sign_in(client: httpx.Client, token: str) -> None:
    form = client.get("/console/login").text
    csrf = re.search(r'name="csrf" value="([^"]*)"', form)
    assert csrf
    done = client.post("/console/login", data={"csrf": csrf[1], "token": token})
    assert done.status_code == 303, done.text


def pages(tasks: int) -> list[tuple[str, str]]:
    failed_task = (tasks // 100) * 100 or 100
    return [
        ("overview", "/console/overview"),
        ("overview refresh (htmx)", "/console/overview/live"),
        ("tasks, newest", "/console/tasks"),
        ("tasks, failed", "/console/tasks?status=failed"),
        ("tasks, by priority", "/console/tasks?sort=priority"),
        ("tasks, page 20 by priority", f"/console/tasks?sort=priority&after=0:{tasks // 2}"),
        ("tasks, one user, failed", "/console/tasks?user=user-0&status=failed"),
        ("tasks, queue + kind", "/console/tasks?queue=reports&kind=export"),
        ("tasks, an hour ago", "/console/tasks?from=" + time.strftime(
            "%Y-%m-%dT%H:%M", time.gmtime(time.time() - 7200)) + "&to=" + time.strftime(
            "%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3600))),
        ("task page (failed)", f"/console/tasks/{failed_task}"),
        ("errors", "/console/errors"),
        ("error → failed subtasks", "/console/errors/1"),
        ("bulk confirm (count)", "/console/bulk/confirm?action=retry_failed&queue=standard"),
        ("audit log", "/console/audit"),
    ]


def console(subtasks: int, repeat: int, pending: int = 2000) -> dict[str, Any]:
    """Fill, serve, measure; see the module's docstring."""
    with temp_database() as url:
        filled = fill(url, subtasks, pending)
        print_table("console: the database", [filled])
        port = free_port()
        secret = secrets.token_hex(32)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        env.update(TASKD_DATABASE_URL=url, TASKD_API__JWT_SECRET=secret,
                   TASKD_API__ADDR=f"127.0.0.1:{port}", PYTHONPATH=str(REPO / "src"))
        api = subprocess.Popen([sys.executable, "-m", "taskd", "api"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or api.poll() is not None:
                    raise RuntimeError("taskd api did not start")
                time.sleep(0.2)
            from taskd.api.auth import mint_token
            from taskd.settings import ApiSettings

            settings = ApiSettings(jwt_secret=SecretStr(secret))
            token = mint_token(settings, "bench", admin=True, ttl=3600)
            table = []
            with httpx.Client(base_url=base, timeout=60) as client:
                _sign_in(client, token)
                targets = pages(filled["tasks"])
                for _, path in targets:  # warm: connections, plans, the cache
                    assert client.get(path).status_code == 200, path
                times: dict[str, list[float]] = {name: [] for name, _ in targets}
                for _ in range(repeat):
                    for name, path in targets:
                        began = time.perf_counter()
                        response = client.get(path)
                        times[name].append((time.perf_counter() - began) * 1000)
                        assert response.status_code == 200, (path, response.text[:300])
                for name, _ in targets:
                    ms = sorted(times[name])
                    table.append({
                        "page": name, "p50_ms": statistics.median(ms),
                        "p95_ms": ms[min(len(ms) - 1, int(len(ms) * 0.95))],
                        "max_ms": ms[-1], "under_200ms": f"{sum(m < 200 for m in ms)}/{len(ms)}",
                    })
        finally:
            api.terminate()
            api.wait(timeout=30)
    print_table(f"console: page latency, {filled['finished_subtasks']:,} finished subtasks, "
                f"{repeat} requests per page", table)
    return {"fill": filled, "results": table}
