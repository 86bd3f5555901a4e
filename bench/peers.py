"""The same throughput and latency workloads on PgQueuer, Procrastinate, a bare psycopg batch
loop and a bare LISTEN/NOTIFY loop, all on the same server in the same run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from bench.common import (
    REPO,
    connect,
    cpu_per_item,
    latency_summary,
    rows,
    scalar,
    temp_database,
    wait_for,
)
from bench.taskd_workloads import paced, submit_noops
from taskd.queue.queries import load_queries

# -- bare psycopg batch loop ------------------------------------------------------------------

BARE_SCHEMA = """
CREATE TABLE jobs (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status    text NOT NULL DEFAULT 'queued',
    payload   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    picked_at timestamptz,
    done_at   timestamptz
);
CREATE INDEX jobs_queued_idx ON jobs (id) WHERE status = 'queued';
"""
BARE_CLAIM = """
UPDATE jobs SET status = 'picked', picked_at = now()
 WHERE id = ANY(ARRAY(SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT %s
                      FOR UPDATE SKIP LOCKED))
RETURNING id
"""
BARE_COMPLETE = "UPDATE jobs SET status = 'done', done_at = now() WHERE id = ANY(%s)"


def bare_batch(n: int, connections: int = 4, batch: int = 100) -> dict[str, Any]:
    """Claim ``batch`` with SKIP LOCKED, complete them in one statement; ``connections`` loops."""
    with temp_database(taskd_schema=False) as url:
        with connect(url) as conn:
            conn.execute(BARE_SCHEMA)

        def step(conn: psycopg.Connection[Any], _k: int) -> int:
            ids = [r[0] for r in conn.execute(BARE_CLAIM, (batch,)).fetchall()]
            if ids:
                conn.execute(BARE_COMPLETE, (ids,))
            return len(ids)

        def fill() -> None:
            with connect(url) as conn:
                conn.execute("INSERT INTO jobs (payload) SELECT '{}'::jsonb"
                             " FROM generate_series(1, %s)", (n,))

        cpu = _loops(url, n, connections, step, fill)
        count, first, last = rows(url, "SELECT count(*), min(picked_at), max(done_at) FROM jobs"
                                       " WHERE status = 'done'")[0]
    seconds = (last - first).total_seconds()
    return {"system": f"bare batch loop ({connections} conns, batch {batch})", "n": count,
            "seconds": seconds, "per_s": count / seconds, **cpu}


def taskd_sql_batch(n: int, connections: int = 4, batch: int = 1000) -> dict[str, Any]:
    """taskd's own claim and completion statements in the bare loop, no daemon: how fast
    taskd's schema drains when the executor costs nothing (its ceiling on this server)."""
    # The claim a daemon makes (one queue, no rate limit, no cluster_max), as it makes it.
    claim, record = load_queries()["claim_subtasks_plain"], load_queries()["record_outcomes"]
    # Each loop's claims resume after its last, as a producer's do (taskd.executor.producer).
    last: dict[int, tuple[Any, ...] | None] = {}
    with temp_database() as url:

        def step(conn: psycopg.Connection[Any], k: int) -> int:
            after = last.get(k)
            params = {"queue": "standard", "executor_id": f"bench-sql-{k}", "limit": batch,
                      "lease_timeout": 60.0, "cluster_max": None, "now": None,
                      "after_priority": after and after[4], "after_run_after": after and after[9],
                      "after_id": after and after[0], "suspect_after": 2}
            rows = conn.execute(claim, params).fetchall()
            last[k] = rows[-1] if len(rows) == batch else None  # short: from the head next
            # id and attempt: the first and the eighth column the claim returns
            claimed = [(r[0], r[7]) for r in rows]
            if claimed:
                outcomes = ",".join(f'{{"id":{i},"attempt":{a},"verdict":"completed",'
                                    f'"result":{{}}}}' for i, a in claimed)
                applied = conn.execute(record, {"executor_id": params["executor_id"],
                                                "outcomes": f"[{outcomes}]", "now": None})
                if len(applied.fetchall()) != len(claimed):
                    raise RuntimeError("a fenced completion matched fewer rows than claimed")
            return len(claimed)

        def fill() -> None:
            with connect(url) as conn, conn.transaction():
                submit_noops(conn, n)

        # The daemon's session setting (see taskd.queue.connection.connection_kwargs).
        cpu = _loops(url, n, connections, step, fill, "SET plan_cache_mode = force_custom_plan")
        count, first, last = rows(url, "SELECT count(*), min(started_at), max(completed_at)"
                                       " FROM taskd.subtasks WHERE status = 'completed'")[0]
    seconds = (last - first).total_seconds()
    return {"system": f"taskd's SQL in the bare loop ({connections} conns, batch {batch})",
            "n": count, "seconds": seconds, "per_s": count / seconds, **cpu}


def _loops(url: str, n: int, connections: int, step: Callable[[psycopg.Connection[Any], int], int],
           fill: Callable[[], None], setup: str | None = None) -> dict[str, float]:
    """``connections`` threads call ``step(conn, k)`` (rows done) until ``n`` rows are done,
    from when ``fill()`` has made them visible; CPU per row of these threads and the server."""
    done = [0]
    lock = threading.Lock()
    go = threading.Event()
    # Connections stay open until the CPU is read: an exited backend's CPU is lost.
    drained = threading.Barrier(connections + 1)
    measured = threading.Event()
    failed = threading.Event()

    def loop(k: int) -> None:
        try:
            with connect(url) as conn:
                if setup:
                    conn.execute(setup)
                go.wait()
                while True:
                    if count := step(conn, k):
                        with lock:
                            done[0] += count
                    elif done[0] >= n or failed.is_set():
                        break
                    else:
                        time.sleep(0.001)
                drained.wait()
                measured.wait()
        except BaseException:
            drained.abort()  # the caller's wait fails instead of hanging
            raise

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    try:
        fill()
        with cpu_per_item(n) as cpu:  # this process's threads: the loops' client side
            go.set()
            drained.wait()
    except BaseException:
        failed.set()
        drained.abort()
        raise
    finally:
        go.set()
        measured.set()
        for t in threads:
            t.join()
    return {"client_cpu_us": cpu["client_cpu_us"], "pg_cpu_us": cpu["server_cpu_us"]}


def bare_listen_latency(rate: float, seconds: float) -> dict[str, Any]:
    """A listener picks each job as its NOTIFY arrives; enqueue-to-pick from DB timestamps."""
    with temp_database(taskd_schema=False) as url:
        with connect(url) as conn:
            conn.execute(BARE_SCHEMA)
        count = int(rate * seconds)
        listening = threading.Event()

        def listener() -> None:
            with connect(url) as conn, connect(url) as worker:
                conn.execute("LISTEN bench")
                listening.set()
                for seen, note in enumerate(conn.notifies(), 1):
                    worker.execute("UPDATE jobs SET status = 'done', picked_at = now(),"
                                   " done_at = now() WHERE id = %s", (int(note.payload),))
                    if seen >= count:
                        return

        thread = threading.Thread(target=listener)
        thread.start()
        listening.wait(10)
        with connect(url) as conn:
            paced(rate, seconds, lambda _i: conn.execute(
                "WITH j AS (INSERT INTO jobs DEFAULT VALUES RETURNING id)"
                " SELECT pg_notify('bench', id::text) FROM j"))
        thread.join(30)
        ms = [float(r[0]) for r in rows(
            url, "SELECT extract(epoch FROM picked_at - created_at) * 1000 FROM jobs"
                 " WHERE picked_at IS NOT NULL")]
    return {"system": "bare LISTEN/NOTIFY loop", "rate_per_s": rate, **latency_summary(ms)}


# -- PgQueuer ---------------------------------------------------------------------------------

@contextmanager
def peer_workers(system: str, url: str, count: int, *args: str) -> Iterator[None]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "bench.peer_worker", system, url, *args],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
             for _ in range(count)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{system} worker did not start")
        time.sleep(1.0)  # the worker's own setup after it said ready
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


async def _pgqueuer_install(url: str) -> None:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    async with conn:
        await Queries(PsycopgDriver(conn)).install()


async def _pgqueuer_enqueue(url: str, n: int) -> None:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    async with conn:
        q = Queries(PsycopgDriver(conn))
        await q.enqueue(["noop"] * n, [None] * n, [0] * n)


def _pgqueuer_done(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'") or 0)


def pgqueuer_throughput(n: int, processes: int, batch: int) -> dict[str, Any]:
    with temp_database(taskd_schema=False) as url:
        asyncio.run(_pgqueuer_install(url))
        with peer_workers("pgqueuer", url, processes, "--batch", str(batch)):
            asyncio.run(_pgqueuer_enqueue(url, n))
            wait_for(lambda: _pgqueuer_done(url) >= n, timeout=max(120.0, n / 200),
                     interval=0.1, what="pgqueuer drained")
        first, last = rows(url, "SELECT min(created) FILTER (WHERE status = 'picked'),"
                                "       max(created) FILTER (WHERE status = 'successful')"
                                "  FROM pgqueuer_log")[0]
        if first is None:  # no 'picked' log rows: fall back to the enqueue log
            first = scalar(url, "SELECT min(created) FROM pgqueuer_log")
    seconds = (last - first).total_seconds()
    return {"system": f"PgQueuer ({processes} proc, batch {batch})", "n": n,
            "seconds": seconds, "per_s": n / seconds}


def pgqueuer_latency(rate: float, seconds: float) -> dict[str, Any]:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    count = int(rate * seconds)
    with temp_database(taskd_schema=False) as url:
        asyncio.run(_pgqueuer_install(url))
        with peer_workers("pgqueuer", url, 1, "--batch", "10"):
            async def send_all() -> None:
                conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
                async with conn:
                    q = Queries(PsycopgDriver(conn))
                    start = time.perf_counter()
                    for i in range(count):
                        delay = start + i / rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        await q.enqueue("noop", None)

            asyncio.run(send_all())
            wait_for(lambda: _pgqueuer_done(url) >= count, timeout=60, what="pgqueuer done")
        ms = [float(r[0]) for r in rows(
            url, "SELECT extract(epoch FROM p.created - q.created) * 1000"
                 "  FROM pgqueuer_log q JOIN pgqueuer_log p USING (job_id)"
                 " WHERE q.status = 'queued' AND p.status = 'picked'")]
    return {"system": "PgQueuer", "rate_per_s": rate, **latency_summary(ms)}


# -- Procrastinate ------------------------------------------------------------------------------

async def _procrastinate_setup(url: str, n: int | None) -> None:
    os.environ["BENCH_PROCRASTINATE_URL"] = url
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=url))
    async with app.open_async():
        if n is None:
            await app.schema_manager.apply_schema_async()
        else:
            task = app.configure_task("noop", queue="default")
            await task.batch_defer_async(*([{}] * n))


def _procrastinate_done(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
               or 0)


def procrastinate_throughput(n: int, processes: int, concurrency: int) -> dict[str, Any]:
    with temp_database(taskd_schema=False) as url:
        asyncio.run(_procrastinate_setup(url, None))
        with peer_workers("procrastinate", url, processes, "--concurrency", str(concurrency)):
            asyncio.run(_procrastinate_setup(url, n))
            wait_for(lambda: _procrastinate_done(url) >= n, timeout=max(300.0, n / 20),
                     interval=0.2, what="procrastinate drained")
        first, last = rows(url, "SELECT min(at) FILTER (WHERE type = 'started'),"
                                "       max(at) FILTER (WHERE type = 'succeeded')"
                                "  FROM procrastinate_events")[0]
    seconds = (last - first).total_seconds()
    return {"system": f"Procrastinate ({processes} proc, concurrency {concurrency})", "n": n,
            "seconds": seconds, "per_s": n / seconds}


def procrastinate_latency(rate: float, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    with temp_database(taskd_schema=False) as url:
        asyncio.run(_procrastinate_setup(url, None))
        with peer_workers("procrastinate", url, 1, "--concurrency", "1"):
            os.environ["BENCH_PROCRASTINATE_URL"] = url
            from procrastinate import App, PsycopgConnector

            async def send_all() -> None:
                app = App(connector=PsycopgConnector(conninfo=url))
                async with app.open_async():
                    task = app.configure_task("noop", queue="default")
                    start = time.perf_counter()
                    for i in range(count):
                        delay = start + i / rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        await task.defer_async()

            asyncio.run(send_all())
            wait_for(lambda: _procrastinate_done(url) >= count, timeout=60,
                     what="procrastinate done")
        ms = [float(r[0]) for r in rows(
            url, "SELECT extract(epoch FROM s.at - d.at) * 1000"
                 "  FROM procrastinate_events d JOIN procrastinate_events s USING (job_id)"
                 " WHERE d.type = 'deferred' AND s.type = 'started'")]
    return {"system": "Procrastinate", "rate_per_s": rate, **latency_summary(ms)}
