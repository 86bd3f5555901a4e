"""``python -m bench fleet``: 1 … 32 daemons against one PostgreSQL, busy and idle.

The PostgreSQL is the benchmark's own (PostgreSQL 15 from ``/usr/lib/postgresql/15/bin``,
``initdb`` in a temporary directory, a free port of 127.0.0.1, ``pg_stat_statements`` loaded,
``max_connections`` 500), so that 32 daemons' connections fit and the CPU counted is only that
server's: the shared server on 5432 is never touched. Under root it runs as ``postgres``.

Per fleet size: the daemons start idle and are measured idle (PostgreSQL CPU per second, its
statements per second, rescuer passes per second, connections), then one commit makes the
backlog visible and the drain is measured (throughput, PostgreSQL CPU and statements per
subtask, claims per subtask, and lock waits sampled from ``pg_stat_activity``); then, idle again
after the drain, whether the daemons' statements start in step (the dispersion of their starts
per 100 ms).

With ``sleep_ms``, the backlog is ``sleep`` subtasks of that many milliseconds instead of noops:
work the machine can carry at every size (its ideal rate, ``daemons * concurrency * 1000 /
sleep_ms``, is reported beside the measured one), so that what limits the larger fleets is the
coordination through PostgreSQL and not this machine's two cores, which noops saturate from
four daemons on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import (
    connect,
    daemons,
    free_port,
    print_table,
    process_cpu_seconds,
    queue_env,
    rows,
    scalar,
)
from bench.taskd_workloads import drain_stats, submit_noops, wait_completed
from taskd.queue import migrations

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnedServer:
    """A PostgreSQL 15 of the benchmark's own in a temporary directory."""

    def __init__(self, max_connections: int = 500) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user: tuple[int, int] | None = None
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam("postgres")
            self.user = (entry.pw_uid, entry.pw_gid)
            os.chown(self.dir, *self.user)
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.dir}'\n"
                       f"max_connections = {max_connections}\nshared_buffers = '256MB'\n"
                       "shared_preload_libraries = 'pg_stat_statements'\n"
                       "pg_stat_statements.max = 1000\n")
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                   "-l", str(self.dir / "server.log"), "start"])
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        try:
            # In template1: every database created for a fleet size has it.
            with connect(f"postgresql://postgres@127.0.0.1:{self.port}/template1") as conn:
                conn.execute("CREATE EXTENSION pg_stat_statements")
        except BaseException:
            self.close()
            raise

    def _run(self, args: list[str]) -> None:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user[0], "group": self.user[1], "extra_groups": []}
        subprocess.run(args, check=True, capture_output=True, cwd=self.dir, timeout=120,
                       **kwargs)

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def cpu_seconds(self) -> float:
        """CPU so far of the postmaster and every process it started that is alive now."""
        root = self.postmaster()
        total = process_cpu_seconds(root)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == root:
                    total += process_cpu_seconds(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
        return total

    @contextmanager
    def database(self) -> Iterator[str]:
        name = f"fleet_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
        with connect(self.admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
        try:
            migrations.migrate_blocking(url)
            yield url
        finally:
            with connect(self.admin_url) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        try:
            pid = self.postmaster()
        except (OSError, ValueError):
            pid = None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGINT)  # fast shutdown
                deadline = time.monotonic() + 30
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                if Path(f"/proc/{pid}").exists():
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def statements(url: str) -> Counter[str]:
    """Calls per statement of ``url``'s database since the last reset, keyed by the
    statement's first words."""
    found: Counter[str] = Counter()
    for text, calls in rows(url, """
            SELECT query, calls FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"""):
        found[kind_of(text)] += int(calls)
    return found


def _named() -> dict[str, str]:
    """First line -> name of taskd's named queries (names joined by ``|`` where two share
    it): pg_stat_statements keeps a statement's leading comment, so it names the query."""
    from taskd.queue.queries import load_queries

    named: dict[str, str] = {}
    for name, text in load_queries().items():
        if text.strip():
            first = text.strip().splitlines()[0].strip()
            named[first] = f"{named[first]}|{name}" if first in named else name
    return named


NAMED = _named()


# The claims a daemon of the fleet makes (no rate limit, no cluster_max): the function since
# version 27, the statement before (a baseline's).
CLAIMS = {"claim_subtasks", "claim_subtasks_plain"}


def kind_of(text: str) -> str:
    """The taskd query's name, ``claim`` for a claim (:data:`CLAIMS`); else the statement's
    start."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    name = NAMED.get(first)
    if name in CLAIMS:
        return "claim"
    return name or " ".join(text.split())[:40]


def statement_times(url: str) -> dict[str, tuple[int, float, int]]:
    """Calls, total execution time (ms) and rows per statement kind of ``url``'s database
    since the last reset (as :func:`statements` names them)."""
    found: dict[str, tuple[int, float, int]] = {}
    for text, calls, ms, n in rows(url, """
            SELECT query, calls, total_exec_time + total_plan_time, rows
              FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"""):
        kind = kind_of(text)
        c0, m0, r0 = found.get(kind, (0, 0.0, 0))
        found[kind] = (c0 + int(calls), m0 + float(ms), r0 + int(n))
    return found


def reset_statements(url: str) -> None:
    with connect(url) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


class WaitSampler(threading.Thread):
    """Samples ``pg_stat_activity`` of one database every ``interval`` s: how many of its
    backends wait on a heavyweight lock (``Lock``) or a lightweight one (``LWLock``)."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.stop = threading.Event()
        self.samples = 0
        self.waiting: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def run(self) -> None:
        with connect(self.url) as conn:
            while not self.stop.is_set():
                for kind, event, n in conn.execute("""
                        SELECT wait_event_type, wait_event, count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()
                           AND state = 'active' AND wait_event_type IN ('Lock', 'LWLock')
                         GROUP BY 1, 2""").fetchall():
                    self.waiting[kind] += n
                    self.events[f"{kind}:{event}"] += n
                self.samples += 1
                self.stop.wait(self.interval)

    def mean(self, kind: str) -> float:
        return self.waiting[kind] / self.samples if self.samples else float("nan")


class StartSampler(threading.Thread):
    """Samples ``pg_stat_activity`` of one database every ``interval`` s and keeps each
    statement's start (``query_start``, database clock) once: when the fleet's statements
    start, to see whether the daemons fire in step. A backend that starts two statements
    within one interval shows one; an idle daemon sends a few a second."""

    def __init__(self, url: str, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.stop = threading.Event()
        self.starts: set[tuple[int, float]] = set()

    def run(self) -> None:
        with connect(self.url) as conn:
            while not self.stop.is_set():
                for pid, started in conn.execute("""
                        SELECT pid, extract(epoch FROM query_start)::float8
                          FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()
                           AND query_start IS NOT NULL""").fetchall():
                    self.starts.add((pid, started))
                self.stop.wait(self.interval)

    def dispersion(self, since: float, until: float, width: float = 0.1) -> float:
        """Variance / mean of the statements started per ``width``-second bin between
        ``since`` and ``until`` (epoch seconds, database clock): about 1 when the daemons'
        statements start at independent moments, growing with the fleet when they fire in
        step."""
        bins = max(1, int((until - since) / width))
        counts = [0] * bins
        for _, started in self.starts:
            k = int((started - since) / width)
            if 0 <= k < bins:
                counts[k] += 1
        mean = sum(counts) / bins
        if not mean:
            return float("nan")
        return sum((c - mean) ** 2 for c in counts) / bins / mean


def measure_size(server: OwnedServer, size: int, n: int, concurrency: int,
                 idle_seconds: float, per_task: int, warmup: int = 0,
                 sleep_ms: int = 0) -> dict[str, Any]:
    env = {**queue_env("standard", concurrency)}
    # Python daemons starting on a loaded 2-core machine: a few seconds of CPU each.
    with server.database() as url, daemons(url, size, env,
                                           ready_within=60 + 10 * size) as started:
        def daemons_cpu() -> float:
            return sum(process_cpu_seconds(d.pid) for d in started)

        if warmup:
            # A fleet that has worked before: every server process has run claims and
            # outcomes (its memory, caches and page tables grown), as in a fleet that has run
            # for a while; the warm-up's rows are deleted before anything is measured.
            with connect(url) as conn, conn.transaction():
                submit_noops(conn, warmup, per_task=per_task)
            wait_completed(url, warmup, timeout=max(300.0, warmup / 50))
            with connect(url) as conn:
                conn.execute("DELETE FROM taskd.tasks")
        time.sleep(2.0)  # by design: the start's own work (registration, first polls) passes
        connections = scalar(url, "SELECT count(*) FROM pg_stat_activity"
                                  " WHERE datname = current_database()"
                                  " AND pid <> pg_backend_pid()")
        reset_statements(url)
        cpu0, t0, own0 = server.cpu_seconds(), time.monotonic(), daemons_cpu()
        time.sleep(idle_seconds)  # by design: the idle cost is what a quiet period costs
        idle_cpu, idle_t = server.cpu_seconds() - cpu0, time.monotonic() - t0
        idle_own = daemons_cpu() - own0
        idle_calls = statements(url)
        with connect(url) as conn, conn.transaction():
            if sleep_ms:
                submit_noops(conn, n, kind="sleep", payload={"ms": sleep_ms},
                             per_task=per_task)
            else:
                submit_noops(conn, n, per_task=per_task)
        reset_statements(url)
        sampler = WaitSampler(url)
        sampler.start()
        cpu0, own0 = server.cpu_seconds(), daemons_cpu()
        try:
            wait_completed(url, n, timeout=max(300.0, n / 50)
                           + n * sleep_ms / 1000 / (size * concurrency) * 3)
        finally:
            sampler.stop.set()
            sampler.join(timeout=10)
        busy_cpu = server.cpu_seconds() - cpu0
        busy_own = daemons_cpu() - own0
        busy_calls = statements(url)
        busy_times = statement_times(url)
        stats = drain_stats(url)
        # After the drain every daemon was woken by the same NOTIFY and ran dry at about the
        # same moment: the case where polls would fire in step. Sampled apart from the idle
        # cost above (sampling every 10 ms costs the server CPU of its own).
        starts = StartSampler(url)
        starts.start()
        since = float(scalar(url, "SELECT extract(epoch FROM now())"))
        time.sleep(idle_seconds)  # by design: a quiet period's statements are what is sampled
        until = float(scalar(url, "SELECT extract(epoch FROM now())"))
        starts.stop.set()
        starts.join(timeout=10)
    idle_total = sum(idle_calls.values())
    ideal = size * concurrency * 1000 / sleep_ms if sleep_ms else None
    return {
        "daemons": size, "concurrency_each": concurrency, "n": n, "per_task": per_task,
        "warmup": warmup,
        "per_s": stats["per_s"], "seconds": stats["seconds"],
        **({"sleep_ms": sleep_ms, "ideal_per_s": ideal, "of_ideal": stats["per_s"] / ideal}
           if ideal else {}),
        "pg_cpu_us_per_subtask": busy_cpu / n * 1e6,
        "daemons_cpu_us_per_subtask": busy_own / n * 1e6,
        "statements_per_subtask": sum(busy_calls.values()) / n,
        "claims_per_subtask": busy_calls["claim"] / n,
        "lock_waiting_backends": sampler.mean("Lock"),
        "lwlock_waiting_backends": sampler.mean("LWLock"),
        "idle_connections": connections,
        "idle_pg_cpu_ms_per_s": idle_cpu / idle_t * 1e3,
        "idle_daemons_cpu_ms_per_s": idle_own / idle_t * 1e3,
        "idle_statements_per_s": idle_total / idle_t,
        "idle_rescue_passes_per_s": idle_calls["rescue_expired_leases"] / idle_t,
        "after_drain_dispersion": starts.dispersion(since, until),
        "idle_top": ", ".join(f"{k[:40]}={v / idle_t:.1f}/s"
                              for k, v in idle_calls.most_common(3)),
        "wait_events": dict(sampler.events.most_common(4)),
        # Per statement kind during the drain, by total time: calls a subtask, mean ms,
        # rows a call.
        "busy_statements": {
            k: {"per_subtask": round(c / n, 4), "mean_ms": round(ms / c, 3) if c else 0,
                "rows": round(r / c, 1) if c else 0, "total_ms": round(ms)}
            for k, (c, ms, r) in sorted(busy_times.items(), key=lambda kv: -kv[1][1])[:8]},
    }


def fleet(sizes: Sequence[int], n: int, concurrency: int, idle_seconds: float,
          repeat: int = 1, per_task: int = 10_000, warmup: int = 0,
          sleep_ms: int = 0) -> dict[str, Any]:
    """The fleet table; ``best``: the highest throughput; the largest size against it (the
    slowest of its rounds, and its median against the best size's median) and the idle cost
    per daemon in the summary. The backlog is tasks of ``per_task`` subtasks:
    every outcome of one task updates that task's counters, so few large tasks make the
    completers of every daemon take turns on a few rows. ``warmup``: subtasks drained (and
    deleted) before the idle window, so that the fleet measured has worked before. With
    ``sleep_ms``, ``sleep`` subtasks instead of noops (see the module's docstring)."""
    if sleep_ms < 0:
        raise SystemExit(f"--sleep-ms must be 0 (noops) or more, not {sleep_ms}")
    if not (PG_BIN / "postgres").exists():
        raise SystemExit(f"bench fleet needs PostgreSQL 15 in {PG_BIN} (Debian postgresql-15)")
    server = OwnedServer(max_connections=max(200, 12 * max(sizes) + 50))
    table = []
    try:
        for r in range(repeat):
            for size in sizes:
                row = measure_size(server, size, n, concurrency, idle_seconds, per_task,
                                   warmup, sleep_ms)
                table.append({"run": r + 1, **row})
                print(f"fleet: {json.dumps(row, default=str)}", flush=True)
    finally:
        server.close()
    shown = [{k: v for k, v in row.items() if k not in ("wait_events", "busy_statements")}
             for row in table]
    work = f"sleep subtasks of {sleep_ms} ms" if sleep_ms else "noop subtasks"
    print_table(f"fleet: {n:,} {work} in tasks of {per_task:,}, concurrency"
                f" {concurrency} per daemon; idle for {idle_seconds:g} s", shown)
    best = max(row["per_s"] for row in table)
    largest = max(sizes)
    # With --repeat, each size's median over the rounds: the shared machine's load moves
    # between minutes more than a size moves the throughput.
    medians = {size: statistics.median(row["per_s"] for row in table if row["daemons"] == size)
               for size in sizes}
    best_median = max(medians.values())
    # The goal's reading: the largest size against the best size of the same round.
    per_round = [
        max(row["per_s"] for row in table if row["run"] == r and row["daemons"] == largest)
        / max(row["per_s"] for row in table if row["run"] == r)
        for r in range(1, repeat + 1)]
    summary = {
        "best_per_s": best,
        "largest_vs_best": min(row["per_s"] for row in table if row["daemons"] == largest)
        / best,
        "median_per_s": medians,
        "largest_vs_best_median": medians[largest] / best_median,
        "largest_vs_best_per_round": per_round,
        "idle_pg_cpu_ms_per_s_per_daemon": {
            row["daemons"]: row["idle_pg_cpu_ms_per_s"] / row["daemons"] for row in table},
    }
    if sleep_ms:
        # Each size against its own ideal: where coordination (not the machine) is the limit,
        # the fraction falls as daemons are added.
        summary["of_ideal_median"] = {
            size: statistics.median(row["of_ideal"] for row in table if row["daemons"] == size)
            for size in sizes}
    print_table("fleet summary", [{
        "best_per_s": best, f"{largest}_daemons_vs_best": summary["largest_vs_best"],
        **{f"median_{size}": medians[size] for size in sizes},
        f"median_{largest}_vs_best_median": summary["largest_vs_best_median"],
        f"{largest}_vs_best_per_round": " ".join(f"{x:.2f}" for x in per_round),
        **{f"of_ideal_{size}": x for size, x in summary.get("of_ideal_median", {}).items()}}])
    return {"n": n, "per_task": per_task, "concurrency": concurrency, "warmup": warmup,
            "idle_seconds": idle_seconds, "sleep_ms": sleep_ms,
            "results": table, "summary": summary}
