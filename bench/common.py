"""Shared plumbing: throw-away databases, daemon processes, percentiles, tables and JSON."""

from __future__ import annotations

import itertools
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from taskd.queue import migrations

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ADMIN_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


# Listening ports come from below the kernel's ephemeral range (32768-60999 on Linux), so an
# outgoing connection's local port can never take one between the pick and the server's bind;
# each pytest-xdist worker draws from a slice of its own, so two workers never pick the same.
_PORTS = range(20000, 32000)


def _port_candidates() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    slices = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
    index = int(worker) if worker.isdigit() else 0
    width = len(_PORTS) // slices
    mine = range(_PORTS.start + index * width, _PORTS.start + (index + 1) * width)
    start = random.randrange(len(mine))
    return itertools.islice(itertools.cycle(mine), start, start + len(mine))


_candidates: Iterator[int] | None = None


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on nor lingers on (TIME_WAIT), for a server to bind.

    Successive calls in a process return different ports (a cluster asks for several before it
    starts any)."""
    global _candidates
    if _candidates is None:
        _candidates = _port_candidates()
    for port in _candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    _candidates = None
    raise RuntimeError(f"no free port of 127.0.0.1 in {_PORTS.start}-{_PORTS.stop - 1}")


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def scalar(url: str, query: str, *params: Any) -> Any:
    with connect(url) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return conn.execute(query, params).fetchall()


@contextmanager
def temp_database(*, taskd_schema: bool = True) -> Iterator[str]:
    """A fresh database ``bench_<uuid>`` (migrated for taskd unless told not to), dropped after."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with connect(ADMIN_URL) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(ADMIN_URL, dbname=name)
    try:
        if taskd_schema:
            migrations.migrate_blocking(url)
        yield url
    finally:
        with connect(ADMIN_URL) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()", (name,)
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


def wait_for(condition: Callable[[], T], *, timeout: float, interval: float = 0.05,
             what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Daemon:
    """One ``taskd run`` child process (log in a temporary file)."""

    def __init__(self, url: str, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
        full_env = {
            **clean,
            "TASKD_DATABASE_URL": url,
            "TASKD_EXECUTOR_ID": name,
            "TASKD_METRICS_ADDR": "127.0.0.1:0",
            "TASKD_LOG_FORMAT": "json",
            **env,
        }
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskd", "run"], cwd=REPO, env=full_env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon {self.name} exited:\n{self.log()[-4000:]}")
        return '"message": "ready"' in self.log() or '"message":"ready"' in self.log()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@contextmanager
def daemons(url: str, count: int, env: dict[str, str],
            ready_within: float = 60.0) -> Iterator[list[Daemon]]:
    """Start ``count`` daemons and wait until each says it is ready (all within
    ``ready_within`` seconds); stop them after."""
    started = [Daemon(url, f"bench-{i}-{uuid.uuid4().hex[:6]}", env) for i in range(count)]
    try:
        deadline = time.monotonic() + ready_within
        for d in started:
            wait_for(d.ready, timeout=max(1.0, deadline - time.monotonic()),
                     what=f"daemon {d.name} ready")
        yield started
    finally:
        for d in started:
            d.stop()


def queue_env(queue: str, concurrency: int) -> dict[str, str]:
    """Fixed concurrency for one queue (initial = max: the scaler does not move it)."""
    q = queue.upper()
    return {f"TASKD_QUEUES__{q}__INITIAL": str(concurrency),
            f"TASKD_QUEUES__{q}__MAX": str(concurrency)}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> dict[int, float]:
    """CPU so far of every process named ``postgres`` on this machine, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = process_cpu_seconds(int(entry.name))
            except OSError:  # it exited meanwhile
                pass
    return found


@contextmanager
def cpu_per_item(n: int, pids: Sequence[int] = ()) -> Iterator[dict[str, float]]:
    """CPU microseconds per item spent between entry and exit: ``client_cpu_us`` by ``pids``
    (this process's own threads when none are given) and ``server_cpu_us`` by the local
    PostgreSQL server's processes. The dict is filled on exit.

    The server's figure counts only processes alive at exit, from their reading at entry (or
    from their start): keep the measured connections open until the block ends. It is 0 when
    the database runs on another machine.
    """
    def client() -> float:
        return sum(process_cpu_seconds(p) for p in pids) if pids else time.process_time()

    result: dict[str, float] = {}
    client0, server0 = client(), postgres_cpu()
    yield result
    client1, server1 = client(), postgres_cpu()
    result["client_cpu_us"] = (client1 - client0) / n * 1e6
    result["server_cpu_us"] = sum(
        cpu - server0.get(pid, 0.0) for pid, cpu in server1.items()) / n * 1e6


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms) if ms else float("nan"),
            "mean_ms": statistics.fmean(ms) if ms else float("nan")}


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    pg = {}
    try:
        with connect(ADMIN_URL) as conn:
            pg["version"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            for name in ("shared_buffers", "synchronous_commit", "max_connections",
                         "work_mem", "fsync"):
                pg[name] = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))
                                        ).fetchone()[0]  # type: ignore[index]
    except psycopg.Error:
        pass
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_1_5_15": load, "postgres": pg,
            "host": conninfo_to_dict(ADMIN_URL).get("host")}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, table: Sequence[dict[str, Any]]) -> None:
    print(f"\n## {title}")
    if not table:
        print("(no rows)")
        return
    columns = list(dict.fromkeys(k for row in table for k in row))
    cells = [[fmt(row.get(c, "")) for c in columns] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


def write_json(workload: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{workload}-{stamp}.json"
    payload = {"workload": workload, "at": stamp, "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"(written {path.relative_to(REPO)})")
    return path
