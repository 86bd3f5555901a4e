"""What announcing task ends costs the drain: the counter trigger of schema 8 (one
``NOTIFY taskd_task_end`` per task that a statement ends) against the same database with
schema 4's trigger put back (no notification), in alternating runs.

Tasks of one subtask are the worst case: every completion ends a task, so a claim batch of
1,000 sends 1,000 notifications at its commit. Tasks of 100 subtasks send one per 100.
"""

from __future__ import annotations

import re
import time
from typing import Any

from bench.common import connect, cpu_per_item, daemons, print_table, queue_env, temp_database
from bench.taskd_workloads import drain_stats, wait_completed
from taskd.queue import migrations

# One statement: n tasks of per_task subtasks each.
SUBMIT_MANY = ("SELECT taskd.submit_task('standard', 'noop', %s::jsonb)"
               " FROM generate_series(1, %s)")


def _trigger_of_version(version: int) -> str:
    """The counter trigger's CREATE OR REPLACE as migration ``version`` wrote it."""
    text = next(m for m in migrations.migrations() if m.version == version).sql
    match = re.search(r"CREATE OR REPLACE FUNCTION taskd\.subtasks_count_outcomes\(\).*?\$\$;",
                      text, re.DOTALL)
    if match is None:
        raise RuntimeError(f"migration {version} does not define the counter trigger")
    return match.group(0)


def _drain(n: int, per_task: int, processes: int, concurrency: int,
           notify: bool) -> dict[str, Any]:
    with temp_database() as url:
        if not notify:
            with connect(url) as conn:
                conn.execute(_trigger_of_version(4).encode())
        with daemons(url, processes, queue_env("standard", concurrency)) as started:
            time.sleep(0.5)
            with connect(url) as conn, conn.transaction():
                conn.execute(SUBMIT_MANY, ("[" + ",".join(["{}"] * per_task) + "]",
                                           n // per_task))
            with cpu_per_item(n, [d.pid for d in started]) as cpu:
                wait_completed(url, n, timeout=max(120.0, n / 200))
        return {**drain_stats(url), "client_cpu_us": cpu["client_cpu_us"],
                "pg_cpu_us": cpu["server_cpu_us"]}


def task_end(n: int, per_task: list[int], processes: int, concurrency: int,
             repeat: int) -> dict[str, Any]:
    table = []
    for size in per_task:
        for r in range(repeat):
            # Alternate which goes first: the machine's speed drifts between runs.
            order = (True, False) if r % 2 == 0 else (False, True)
            for notify in order:
                stats = _drain(n, size, processes, concurrency, notify)
                table.append({"subtasks_per_task": size, "trigger": "8 (notify)" if notify
                              else "4 (none)", "run": r + 1, "n": n, **stats})
    print_table(f"drain of {n:,} noops by {processes} daemon(s): task-end notifications",
                table)
    return {"n": n, "processes": processes, "concurrency": concurrency, "results": table}
