"""graphile-worker (Node.js) in ``bench peers``: installed from npm into a directory of the
bench's own (``bench/.graphile-worker``, git-ignored) when ``node`` and ``npm`` are on PATH;
skipped with one line otherwise. Its batched preset: 2 worker processes, concurrency 24, a
local queue of 500 jobs, completions batched (``completeJobBatchDelay`` 0)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from bench.common import REPO, connect, cpu_per_item, scalar, temp_database, wait_for

VERSION = "0.18.0"
HOME = REPO / "bench" / ".graphile-worker"
SCRIPT = REPO / "bench" / "graphile_worker.mjs"

ENQUEUE = """
SELECT graphile_worker.add_jobs(array_agg(
           ROW('noop', '{}'::json, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec))
  FROM generate_series(1, %s)
"""


def missing() -> str | None:
    """Why graphile-worker cannot run here, or None; installs it on first use."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "graphile-worker skipped: node and npm are not on PATH"
    if not (HOME / "node_modules" / "graphile-worker" / "package.json").exists():
        HOME.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--prefix", str(HOME), "--no-audit", "--no-fund",
             f"graphile-worker@{VERSION}"], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return f"graphile-worker skipped: npm install failed: {done.stderr.strip()[-300:]}"
    return None


@contextmanager
def workers(url: str, count: int, concurrency: int, local_queue: int) -> Iterator[list[int]]:
    """``count`` worker processes, each ready (its schema installed); their pids."""
    # Node resolves "graphile-worker" from the script's directory upwards: run a copy in HOME.
    script = HOME / SCRIPT.name
    shutil.copyfile(SCRIPT, script)
    env = {**os.environ, "NODE_ENV": "production"}
    # node-postgres takes a URI, not libpq's key=value form.
    c = conninfo_to_dict(url)
    secret = f":{c['password']}" if c.get("password") else ""
    uri = (f"postgresql://{c.get('user', 'postgres')}{secret}@{c.get('host', '127.0.0.1')}:"
           f"{c.get('port', 5432)}/{c['dbname']}")
    procs = [subprocess.Popen(["node", str(script), uri, str(concurrency), str(local_queue)],
                              cwd=HOME, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
             for _ in range(count)]
    try:
        for p in procs:
            assert p.stdout is not None
            while True:  # it logs its own lines before ours
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError("graphile-worker did not start")
                if line.strip() == "ready":
                    break
        yield [p.pid for p in procs]
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


def throughput(n: int, processes: int = 2, concurrency: int = 24,
               local_queue: int = 500) -> dict[str, Any]:
    """Workers idle, then ``n`` noop jobs in one commit; until the last is deleted (done)."""
    system = (f"graphile-worker {VERSION} ({processes} proc, concurrency {concurrency}, "
              f"local queue {local_queue})")
    with temp_database(taskd_schema=False) as url:
        with workers(url, processes, concurrency, local_queue) as pids:
            time.sleep(0.5)
            with connect(url) as conn:
                conn.execute(ENQUEUE, (n,))
            start = time.perf_counter()
            with cpu_per_item(n, pids) as cpu:
                wait_for(lambda: scalar(url, "SELECT count(*) FROM graphile_worker._private_jobs")
                         == 0, timeout=max(120.0, n / 200), interval=0.05,
                         what="graphile-worker drained")
            seconds = time.perf_counter() - start
    return {"system": system, "n": n, "seconds": seconds, "per_s": n / seconds,
            "client_cpu_us": cpu["client_cpu_us"], "pg_cpu_us": cpu["server_cpu_us"]}
