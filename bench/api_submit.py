"""``POST /v1/tasks`` under concurrent clients: requests/s, latency of the 201s, and what the
API process(es) and their PostgreSQL backends spend in CPU a request.

``taskd api`` runs as its own process(es) (``workers`` of them on one port with
``api.reuse_port``). With ``baseline`` (a git revision) the same load also runs against that
revision's ``src/`` (exported with ``git archive``, run by this interpreter with
``PYTHONPATH``, on a database of its own that its ``taskd migrate`` made), alternating with
this tree in each round, so the two are compared on the same machine minutes apart: ratios
within a round are what to read, not absolute figures.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    free_port,
    latency_summary,
    print_table,
    process_cpu_seconds,
    rows,
    temp_database,
    wait_for,
)

SECRET = "bench-" + "x" * 40
THIS_TREE = "this tree"


async def _http_clients(base: str, tokens: list[str], clients: int, seconds: float,
                        per_request: int) -> tuple[list[float], Counter[str]]:
    """Latencies (ms) of the requests answered 201, and what went wrong with the others
    (a status code, or a transport error's name): counted and reported, not raised, so that
    one dropped connection does not lose the run.

    The load comes from aiohttp: it costs about a fifth of httpx's CPU per request
    (``python -m bench http-clients``), and the generator shares the machine's cores with the
    API it measures."""
    import aiohttp

    body = {"name": "bench", "kind": "noop", "subtasks": [{"i": 1}] * per_request}
    deadline = time.perf_counter() + seconds
    times: list[float] = []
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one(token: str) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.post("/v1/tasks", json=body, headers=headers) as r:
                        await r.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                if r.status == 201:
                    times.append((time.perf_counter() - t0) * 1000)
                else:
                    errors[str(r.status)] += 1

        await asyncio.gather(*(one(tokens[i % len(tokens)]) for i in range(clients)))
    return times, errors


@contextmanager
def exported_source(revision: str) -> Iterator[Path]:
    """``src/`` of a git revision in a temporary directory (``git archive``: no worktree)."""
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        archive = Path(tmp) / "src.tar"
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive),
                        revision, "src"], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp) / "src"


@contextmanager
def api_processes(url: str, workers: int, src: Path | None = None) -> Iterator[
        tuple[str, list[subprocess.Popen[bytes]]]]:
    """``workers`` ``taskd api`` processes on one loopback port (``api.reuse_port`` when more
    than one), from ``src`` when given, else this tree; yields the base URL and the processes
    once each answers."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env = {**clean, "TASKD_DATABASE_URL": url, "TASKD_API__JWT_SECRET": SECRET,
           "TASKD_API__ADDR": f"127.0.0.1:{port}"}
    if workers > 1:
        env["TASKD_API__REUSE_PORT"] = "true"
    if src is not None:
        env["PYTHONPATH"] = str(src)
    base = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen([sys.executable, "-m", "taskd", "api"], cwd=REPO,
                                          env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            _wait_listening(base, procs[-1])
        yield base, procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _wait_listening(base: str, proc: subprocess.Popen[bytes]) -> None:
    import httpx

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"taskd api exited with {proc.returncode}")
        try:
            return httpx.get(base + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, what="taskd api listening")


def _tokens(base: str, users: int) -> list[str]:
    """Tokens of ``users`` member accounts with a quota that will not run out."""
    import httpx
    import jwt

    exp = int(time.time()) + 3600
    admin = jwt.encode({"sub": "bench-admin", "role": "admin", "exp": exp}, SECRET,
                       algorithm="HS256")
    tokens = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as client:
        for i in range(users):
            r = client.put(f"/v1/accounts/bench{i}",
                           json={"is_member": True, "quota_remaining": 10_000_000})
            r.raise_for_status()
            tokens.append(jwt.encode({"sub": f"bench{i}", "exp": exp}, SECRET,
                                     algorithm="HS256"))
    return tokens


def _backend_pids(url: str) -> list[int]:
    """The PostgreSQL backends the API holds open on the bench database."""
    return [int(r[0]) for r in rows(
        url, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
             " AND application_name = 'taskd-api'")]


def _cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with suppress(OSError):  # a backend that ended meanwhile
            total += process_cpu_seconds(pid)
    return total


def _round(url: str, base: str, procs: Sequence[subprocess.Popen[bytes]], tokens: list[str],
           clients: int, seconds: float, per_request: int) -> dict[str, Any]:
    api_pids = [p.pid for p in procs]
    # Warm up: every worker's pool opens its connections before the measured span.
    asyncio.run(_http_clients(base, tokens, clients, min(2.0, seconds / 4), per_request))
    backends = _backend_pids(url)
    load0 = os.getloadavg()[0]
    api0, pg0, own0 = _cpu(api_pids), _cpu(backends), time.process_time()
    times, errors = asyncio.run(_http_clients(base, tokens, clients, seconds, per_request))
    api_cpu, pg_cpu = _cpu(api_pids) - api0, _cpu(backends) - pg0
    own_cpu = time.process_time() - own0
    n = len(times)
    return {"clients": clients, "requests": n, "requests_per_s": n / seconds,
            **{k: v for k, v in latency_summary(times).items() if k != "n"},
            "failed": sum(errors.values()),
            "failures": ", ".join(f"{c} {what}" for what, c in errors.most_common()) or "-",
            "api_cpu_ms_per_request": api_cpu / n * 1000 if n else float("nan"),
            "pg_cpu_ms_per_request": pg_cpu / n * 1000 if n else float("nan"),
            "client_cpu_ms_per_request": own_cpu / n * 1000 if n else float("nan"),
            "loadavg_1m": load0}


def submit_http(clients: int | Sequence[int], seconds: float, per_request: int,
                users: int | None = None, *, workers: int = 1, baseline: str | None = None,
                rounds: int = 1) -> dict[str, Any]:
    """POST /v1/tasks from each count of concurrent ``clients`` as ``users`` accounts
    (default one per client: one account's creates queue on its quota row lock, by design),
    ``rounds`` times; with ``baseline``, that revision's API first in each round, with one
    worker (it may predate ``api.reuse_port``), then this tree's with ``workers``."""
    counts = [clients] if isinstance(clients, int) else list(clients)
    table: list[dict[str, Any]] = []
    with ExitStack() as stack:
        variants: list[tuple[str, Path | None, int, str]] = []
        if baseline is not None:
            src = stack.enter_context(exported_source(baseline))
            variants.append((baseline, src, 1, _migrated(stack, src)))
        variants.append((THIS_TREE, None, workers, stack.enter_context(temp_database())))
        for r in range(1, rounds + 1):
            for name, src, n_workers, url in variants:
                with api_processes(url, n_workers, src) as (base, procs):
                    tokens = _tokens(base, users or max(counts))
                    for c in counts:
                        row = _round(url, base, procs, tokens, c, seconds, per_request)
                        table.append({"round": r, "api": name, "workers": n_workers,
                                      "users": len(tokens),
                                      "subtasks_per_request": per_request, **row})
    if baseline is not None:
        _ratios(table, baseline)
    print_table(f"submit: POST /v1/tasks for {seconds:g} s a run; CPU a request of the API "
                "process(es), of their PostgreSQL backends, and of the load generator", table)
    return {"results": table}


def _migrated(stack: ExitStack, src: Path) -> str:
    """A database of its own for ``src``, migrated by that revision's ``taskd migrate``: an
    older revision refuses a schema newer than it knows."""
    url = stack.enter_context(temp_database(taskd_schema=False))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    subprocess.run([sys.executable, "-m", "taskd", "migrate"], cwd=REPO, check=True,
                   env={**clean, "TASKD_DATABASE_URL": url, "PYTHONPATH": str(src)},
                   stdout=subprocess.DEVNULL)
    return url


def _ratios(table: list[dict[str, Any]], baseline: str) -> None:
    """This tree / the baseline, within each round and client count."""
    for row in table:
        if row["api"] != THIS_TREE:
            continue
        [old] = [o for o in table if o["api"] == baseline and o["round"] == row["round"]
                 and o["clients"] == row["clients"]]
        row["cpu_vs_baseline"] = row["api_cpu_ms_per_request"] / old["api_cpu_ms_per_request"]
        row["rps_vs_baseline"] = row["requests_per_s"] / old["requests_per_s"]
        row["p99_vs_baseline"] = row["p99_ms"] / old["p99_ms"]
