"""``python -m bench queues``: many queues against one. The same backlog drained from one queue
and from Q queues (the same total concurrency split between them), and what Q idle queues cost
PostgreSQL against one: statements and server CPU while the daemons wait for work.

Runs on a cluster of the bench's own (``bench.soak.stock_cluster``), so that the server's CPU
and statement counts are taskd's alone, not the shared server's other databases'.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.common import (
    connect,
    daemons,
    print_table,
    process_cpu_seconds,
    scalar,
)
from bench.soak import stock_cluster
from bench.taskd_workloads import SUBMIT, drain_stats, wait_completed


def queue_names(count: int) -> list[str]:
    return ["standard"] if count == 1 else [f"q{i:02d}" for i in range(1, count + 1)]


def queues_env(names: list[str], total_concurrency: int) -> dict[str, str]:
    """Each queue a fixed concurrency (initial = max), the total split evenly; lumina off."""
    each = max(1, total_concurrency // len(names))
    env = {"TASKD_QUEUES__LUMINA__ENABLED": "false"}
    if "standard" not in names:
        env["TASKD_QUEUES__STANDARD__ENABLED"] = "false"
    for name in names:
        q = name.upper()
        env[f"TASKD_QUEUES__{q}__INITIAL"] = str(each)
        env[f"TASKD_QUEUES__{q}__MAX"] = str(each)
    return env


def cluster_cpu(url: str) -> float:
    """CPU seconds so far of the cluster's postmaster and its children (live ones)."""
    data = Path(str(scalar(url, "SELECT current_setting('data_directory')")))
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    total = process_cpu_seconds(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    total += process_cpu_seconds(int(entry.name))
            except (OSError, ValueError):
                pass
    return total


def transactions(url: str) -> int:
    return int(scalar(url, "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                           " WHERE datname = current_database()") or 0)


@contextmanager
def database(admin: str) -> Iterator[str]:
    from taskd.queue import migrations

    name = f"q{int(time.time() * 1000) % 10**9}"
    with connect(admin) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(admin, dbname=name)
    migrations.migrate_blocking(url)
    try:
        yield url
    finally:
        with connect(admin) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def drain(admin: str, count: int, n: int, processes: int, concurrency: int) -> dict[str, Any]:
    names = queue_names(count)
    with database(admin) as url:
        with daemons(url, processes, queues_env(names, concurrency)):
            time.sleep(0.5)
            with connect(url) as conn, conn.transaction():
                per = n // count
                for name in names:
                    left = per
                    while left:
                        k = min(10_000, left)
                        conn.execute(SUBMIT, (name, "noop", "[" + ",".join(["{}"] * k) + "]"))
                        left -= k
            wait_completed(url, per * count, timeout=max(120.0, n / 200))
        stats = drain_stats(url)
    return {"queues": count, "concurrency_each": max(1, concurrency // count), **stats}


def idle(admin: str, count: int, processes: int, seconds: float) -> dict[str, Any]:
    names = queue_names(count)
    with database(admin) as url:
        with daemons(url, processes, queues_env(names, 20 * count)):
            time.sleep(3.0)  # past the start's own statements
            tx0, cpu0, t0 = transactions(url), cluster_cpu(url), time.monotonic()
            time.sleep(seconds)
            tx1, cpu1, t1 = transactions(url), cluster_cpu(url), time.monotonic()
    span = t1 - t0
    return {"queues": count, "seconds": span, "transactions_per_s": (tx1 - tx0) / span,
            "server_cpu_ms_per_s": (cpu1 - cpu0) / span * 1000}


def queues(counts: list[int], n: int, processes: int, concurrency: int, idle_seconds: float,
           repeat: int) -> dict[str, Any]:
    """Drain and idle rounds, the queue counts alternating within each round."""
    drains: list[dict[str, Any]] = []
    idles: list[dict[str, Any]] = []
    with stock_cluster() as admin:
        host = conninfo_to_dict(admin).get("port")
        for r in range(1, repeat + 1):
            for count in counts:
                drains.append({"round": r, **drain(admin, count, n, processes, concurrency)})
            for count in counts:
                idles.append({"round": r, **idle(admin, count, processes, idle_seconds)})
    for table, key in ((drains, "per_s"), (idles, "transactions_per_s")):
        base = {row["round"]: row[key] for row in table if row["queues"] == counts[0]}
        for row in table:
            row[f"vs_{counts[0]}_queue"] = row[key] / base[row["round"]]
    base_cpu = {row["round"]: row["server_cpu_ms_per_s"] for row in idles
                if row["queues"] == counts[0]}
    for row in idles:
        row[f"cpu_vs_{counts[0]}_queue"] = (row["server_cpu_ms_per_s"] / base_cpu[row["round"]]
                                           if base_cpu[row["round"]] else float("nan"))
    load = os.getloadavg()[0]
    print_table(f"drain: {n:,} noops over Q queues, {processes} daemons, total concurrency "
                f"{concurrency} (load {load:.1f}; cluster port {host})", drains)
    print_table(f"idle: {processes} daemons serving Q empty queues for {idle_seconds:g} s",
                idles)
    return {"drain": drains, "idle": idles}
