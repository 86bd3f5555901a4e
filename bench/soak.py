"""``python -m bench soak``: a steady offered load for a long time on a PostgreSQL cluster of
the bench's own with stock settings (autovacuum on), reported per interval: what a queue's
speed is after the dead row versions have piled up, not in a burst on a fresh table.

The cluster is initdb'd in a temporary directory on a free port of 127.0.0.1 (the shared
server is never used: its autovacuum may be off and its settings are not stock), and removed
afterwards. Each system gets a cluster of its own, one after the other, in the same run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bench.common import REPO, connect, free_port, print_table, queue_env, scalar

SUBMIT = "SELECT taskd.submit_task(queue => 'standard', kind => 'noop', payloads => %s::jsonb)"
# What migration 0016 sets on taskd's tables; ``--table-settings stock`` resets them, so one
# run can measure the schema with and without them.
TABLE_OPTIONS = {
    "subtasks": ("fillfactor", "autovacuum_vacuum_scale_factor", "autovacuum_vacuum_threshold",
                 "autovacuum_vacuum_insert_scale_factor", "autovacuum_vacuum_insert_threshold",
                 "autovacuum_vacuum_cost_delay", "autovacuum_vacuum_cost_limit",
                 "autovacuum_analyze_scale_factor", "autovacuum_analyze_threshold"),
    "tasks": ("fillfactor", "autovacuum_vacuum_scale_factor", "autovacuum_vacuum_threshold",
              "autovacuum_vacuum_insert_scale_factor", "autovacuum_vacuum_insert_threshold",
              "autovacuum_vacuum_cost_delay", "autovacuum_vacuum_cost_limit",
              "autovacuum_analyze_scale_factor", "autovacuum_analyze_threshold"),
}


# -- a cluster of the bench's own ---------------------------------------------------------------

def _bindir() -> Path:
    """The installed PostgreSQL's programs, else the ``pgserver`` wheel's."""
    found = shutil.which("pg_config")
    if found:
        done = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=True,
                              timeout=30)
        return Path(done.stdout.strip())
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@contextmanager
def stock_cluster(settings: dict[str, str] | None = None) -> Iterator[str]:
    """initdb in a temporary directory, stock postgresql.conf but for where it listens (and
    ``settings``, for experiments); yields a superuser URL of database ``postgres``. Under root
    the server runs as pgserver's unprivileged user ``pgserver`` (PostgreSQL refuses root)."""
    bindir = _bindir()
    user = None
    base = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    if os.geteuid() == 0:
        import pwd

        from pgserver.utils import ensure_user_exists

        ensure_user_exists("pgserver")
        user = "pgserver"
        entry = pwd.getpwnam(user)
        os.chmod(base, 0o755)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    data, port = base / "data", free_port()

    def pg(program: str, *args: str) -> None:
        subprocess.run([str(bindir / program), *args], check=True, capture_output=True,
                       timeout=120, user=user, cwd=base)

    pg("initdb", "-D", str(data), "-U", "postgres", "--encoding=utf8", "--auth=trust")
    conf = {"listen_addresses": "'127.0.0.1'", "port": str(port),
            "unix_socket_directories": f"'{base}'", **(settings or {})}
    with (data / "postgresql.conf").open("a") as f:
        f.writelines(f"{k} = {v}\n" for k, v in conf.items())
    pg("pg_ctl", "-D", str(data), "-l", str(base / "postgres.log"), "-w", "-t", "60", "start")
    try:
        yield make_conninfo(host="127.0.0.1", port=str(port), user="postgres",
                            dbname="postgres")
    finally:
        try:
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(base, ignore_errors=True)


def server_settings(url: str) -> dict[str, str]:
    names = ("server_version", "autovacuum", "autovacuum_vacuum_scale_factor",
             "autovacuum_vacuum_cost_delay", "autovacuum_naptime", "shared_buffers",
             "synchronous_commit", "fsync", "max_wal_size")
    return {n: str(scalar(url, "SELECT current_setting(%s)", n)) for n in names}


# -- the load and the report ----------------------------------------------------------------------

class Pacer(threading.Thread):
    """Calls ``send()`` (which submits ``batch`` items) so that ``rate`` items a second are
    offered, until stopped; behind schedule it sends without sleeping, so the offered load
    stays the rate for as long as the submitter keeps up. ``sent`` counts items."""

    def __init__(self, rate: float, batch: int, send: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.interval = batch / rate
        self.batch = batch
        self.send = send
        self.sent = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        i = 0
        try:
            while not self.stopping.is_set():
                delay = start + i * self.interval - time.perf_counter()
                if delay > 0 and self.stopping.wait(delay):
                    break
                self.send()
                self.sent += self.batch
                i += 1
        except BaseException as exc:  # reported by the caller
            self.error = exc


# Per-interval figures for taskd: subtasks that completed in [t0, t1) (noops start and complete
# within milliseconds), through subtasks_finished_idx.
TASKD_WINDOW = """
SELECT count(*),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
           (ORDER BY extract(epoch FROM started_at - created_at) * 1000)
  FROM taskd.subtasks
 WHERE completed_at >= %s AND completed_at < %s
"""
TASKD_STORAGE = """
SELECT (SELECT count(*) FROM taskd.subtasks WHERE status = 'pending'),
       s.n_dead_tup, pg_relation_size('taskd.subtasks'),
       pg_relation_size('taskd.subtasks_claim_idx'),
       pg_indexes_size('taskd.subtasks'),
       s.autovacuum_count + coalesce(t.autovacuum_count, 0),
       100.0 * s.n_tup_hot_upd / greatest(s.n_tup_upd, 1),
       100.0 * t.n_tup_hot_upd / greatest(t.n_tup_upd, 1)
  FROM pg_stat_user_tables s, pg_stat_user_tables t
 WHERE s.relid = 'taskd.subtasks'::regclass AND t.relid = 'taskd.tasks'::regclass
"""
# PgQueuer keeps a job's history in pgqueuer_log (queued, picked, successful); the latency of
# every 10th job picked in the window, so that the report's own join stays small.
PGQ_WINDOW = """
SELECT (SELECT count(*) FROM pgqueuer_log
         WHERE created >= %(t0)s AND created < %(t1)s AND status = 'successful'),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
           (ORDER BY extract(epoch FROM p.created - q.created) * 1000)
  FROM pgqueuer_log p
  CROSS JOIN LATERAL (SELECT created FROM pgqueuer_log q
                       WHERE q.job_id = p.job_id AND q.status = 'queued' LIMIT 1) q
 WHERE p.created >= %(t0)s AND p.created < %(t1)s AND p.status = 'picked'
   AND p.job_id %% 10 = 0
"""
PGQ_STORAGE = """
SELECT (SELECT count(*) FROM pgqueuer WHERE status = 'queued'),
       s.n_dead_tup, pg_relation_size('pgqueuer'),
       (SELECT sum(pg_relation_size(indexrelid)) FROM pg_index i
         WHERE i.indrelid = 'pgqueuer'::regclass
           AND pg_get_expr(i.indpred, i.indrelid) LIKE '%%''queued''%%'),
       pg_indexes_size('pgqueuer'),
       s.autovacuum_count, 100.0 * s.n_tup_hot_upd / greatest(s.n_tup_upd, 1), NULL
  FROM pg_stat_user_tables s
 WHERE s.relid = 'pgqueuer'::regclass
"""

MB = 1024 * 1024


def _watch(url: str, system: str, pacer: Pacer, seconds: float, every: float,
           on_row: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """One row per ``every`` seconds (database time) until ``seconds`` have passed."""
    window, storage = (TASKD_WINDOW, TASKD_STORAGE) if system == "taskd" else (
        PGQ_WINDOW, PGQ_STORAGE)
    table: list[dict[str, Any]] = []
    with connect(url) as conn:
        def now() -> Any:
            return conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]

        t0 = now()
        sent0 = pacer.sent
        vacuums0 = conn.execute(storage).fetchone()[5]  # type: ignore[index]
        started = time.monotonic()
        k = 0
        while time.monotonic() - started < seconds - 1e-6:
            k += 1
            wake = started + min(k * every, seconds)
            while time.monotonic() < wake:
                if pacer.error is not None:
                    raise RuntimeError(f"{system} submitter failed") from pacer.error
                time.sleep(min(0.5, max(0.0, wake - time.monotonic())))
            t1 = now()
            span = (t1 - t0).total_seconds()
            sent = pacer.sent
            params: Any = (t0, t1) if system == "taskd" else {"t0": t0, "t1": t1}
            done, pct = conn.execute(window, params).fetchone()  # type: ignore[misc]
            backlog, dead, heap, claim, indexes, vacuums, hot, hot_tasks = conn.execute(
                storage).fetchone()  # type: ignore[misc]
            p50, p95, p99 = pct if pct else (float("nan"),) * 3
            row = {
                "system": system, "minute": round(k * every / 60, 2),
                "offered_per_s": (sent - sent0) / span, "completed_per_s": done / span,
                "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "backlog": backlog,
                "dead_tuples": dead, "heap_mb": heap / MB, "claim_index_mb": float(claim or 0) / MB,
                "indexes_mb": indexes / MB, "autovacuums": vacuums - vacuums0,
                # HOT updates so far (no index entries written), of the queue table and of
                # taskd's tasks (its counters).
                "hot_pct": float(hot), "tasks_hot_pct": float(hot_tasks or 0),
                "load_1m": os.getloadavg()[0],
            }
            table.append(row)
            on_row(row)
            t0, sent0 = t1, sent
    return table


def _print_row(row: dict[str, Any]) -> None:
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in row.items()), flush=True)


def soak_taskd(rate: float, seconds: float, every: float, *, daemons: int = 2,
               batch: int = 100, concurrency: int = 1000, table_settings: str = "shipped",
               reloptions: Sequence[str] = (), pg_settings: dict[str, str] | None = None,
               history: int = 0,
               on_row: Callable[[dict[str, Any]], None] = _print_row) -> dict[str, Any]:
    """taskd's daemons under ``rate`` noop subtasks a second, submitted ``batch`` at a time
    through ``taskd.submit_task``, for ``seconds``; a report row every ``every`` seconds.

    ``history`` finished subtasks are in the table from the start: hours of operation in a
    minute (stock autovacuum waits for 20 % of the live rows to be dead, so the history decides
    how often it runs)."""
    from bench.common import daemons as start_daemons
    from bench.taskd_workloads import fill_history
    from taskd.queue import migrations

    with stock_cluster(pg_settings) as admin:
        with connect(admin) as conn:
            conn.execute("CREATE DATABASE soak")
        url = make_conninfo(admin, dbname="soak")
        migrations.migrate_blocking(url)
        with connect(url) as conn:
            if table_settings == "stock":
                for table, options in TABLE_OPTIONS.items():
                    conn.execute(f"ALTER TABLE taskd.{table} RESET ({', '.join(options)})")
            for spec in reloptions:
                table, _, options = spec.partition(":")
                conn.execute(f"ALTER TABLE taskd.{table} SET ({options})")
        if history:
            fill_history(url, history)
        with connect(url) as conn:
            applied = {r[0]: r[1] for r in conn.execute(
                "SELECT relname, reloptions FROM pg_class"
                " WHERE relnamespace = 'taskd'::regnamespace AND relkind = 'r'"
                " AND reloptions IS NOT NULL").fetchall()}
        settings = server_settings(url)
        payloads = "[" + ",".join(["{}"] * batch) + "]"
        with start_daemons(url, daemons, queue_env("standard", concurrency)), \
                connect(url) as submitter:
            pacer = Pacer(rate, batch, lambda: submitter.execute(SUBMIT, (payloads,)))
            pacer.start()
            try:
                table = _watch(url, "taskd", pacer, seconds, every, on_row)
            finally:
                pacer.stopping.set()
                pacer.join(30)
    label = f"taskd ({daemons} daemons, table settings {table_settings}" + (
        f", {history:,} finished rows before" if history else "") + (
        f", {' '.join(reloptions)})" if reloptions else ")")
    return {"system": label, "server": settings, "reloptions": applied,
            "rows": [{**r, "system": label} for r in table]}


def soak_pgqueuer(rate: float, seconds: float, every: float, *, workers: int = 2,
                  batch: int = 100, pg_settings: dict[str, str] | None = None,
                  on_row: Callable[[dict[str, Any]], None] = _print_row) -> dict[str, Any]:
    """PgQueuer's workers under the same offered load, enqueued ``batch`` at a time."""
    from pgqueuer.db import SyncPsycopgDriver
    from pgqueuer.queries import SyncQueries

    from bench.peers import _pgqueuer_install, peer_workers

    with stock_cluster(pg_settings) as admin:
        with connect(admin) as conn:
            conn.execute("CREATE DATABASE soak")
        url = make_conninfo(admin, dbname="soak")
        asyncio.run(_pgqueuer_install(url))
        settings = server_settings(url)
        with peer_workers("pgqueuer", url, workers, "--batch", str(batch)), \
                psycopg.connect(url, autocommit=True) as submitter:
            queries = SyncQueries(SyncPsycopgDriver(submitter))
            names, payloads, priorities = ["noop"] * batch, [None] * batch, [0] * batch
            pacer = Pacer(rate, batch, lambda: queries.enqueue(names, payloads, priorities))
            pacer.start()
            try:
                table = _watch(url, "pgqueuer", pacer, seconds, every, on_row)
            finally:
                pacer.stopping.set()
                pacer.join(30)
    label = f"PgQueuer ({workers} workers, batch {batch})"
    return {"system": label, "server": settings, "rows": [{**r, "system": label} for r in table]}


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """First interval against the last: the drift."""
    table = run["rows"]
    first, last = table[0], table[-1]
    return {
        "system": run["system"], "intervals": len(table),
        "offered_per_s": sum(r["offered_per_s"] for r in table) / len(table),
        "completed_per_s_min": min(r["completed_per_s"] for r in table),
        "p50_first_ms": first["p50_ms"], "p50_last_ms": last["p50_ms"],
        "p99_first_ms": first["p99_ms"], "p99_last_ms": last["p99_ms"],
        "p99_last_vs_first": last["p99_ms"] / first["p99_ms"],
        "claim_index_mb_max": max(r["claim_index_mb"] for r in table),
        "claim_index_mb_last": last["claim_index_mb"],
        "dead_tuples_max": max(r["dead_tuples"] for r in table),
        "autovacuums": sum(r["autovacuums"] for r in table),
        "backlog_max": max(r["backlog"] for r in table),
    }


def soak(rate: float, minutes: float, every: float, *, systems: Sequence[str],
         daemons: int, batch: int, concurrency: int, table_settings: Sequence[str],
         reloptions: Sequence[str], pg_settings: dict[str, str],
         history: int = 0) -> dict[str, Any]:
    """Each of ``systems`` (taskd once per ``table_settings``) in turn, each on a fresh cluster."""
    runs = []
    load0 = os.getloadavg()
    for system in systems:
        if system == "taskd":
            for variant in table_settings:
                runs.append(soak_taskd(rate, minutes * 60, every, daemons=daemons,
                                       batch=batch, concurrency=concurrency,
                                       table_settings=variant, reloptions=reloptions,
                                       pg_settings=pg_settings, history=history))
        else:
            runs.append(soak_pgqueuer(rate, minutes * 60, every, workers=daemons, batch=batch,
                                      pg_settings=pg_settings))
    for run in runs:
        print_table(f"soak: {run['system']} at {rate:g}/s offered", run["rows"])
    sums = [summary(r) for r in runs]
    print_table(f"soak summary: {rate:g}/s for {minutes:g} min, first interval vs last "
                f"(load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f})", sums)
    return {"rate": rate, "minutes": minutes, "runs": runs, "summary": sums,
            "loadavg_start": load0, "loadavg_end": os.getloadavg(), "repo": str(REPO)}

