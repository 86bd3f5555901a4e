"""Load: the API under 200 concurrent clients while a daemon drains what they create; and a
daemon with 1,000 subtasks in flight inside its connection budget.

Both print their figures; neither asserts on speed beyond "no errors".
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import anyio
import httpx
import pytest

from taskd.api.auth import mint_token
from taskd.queue import Store
from taskd.settings import ApiSettings
from tests.system.daemons import daemons, query, scalar, wait_for
from tests.system.test_api_process import SECRET, _token, api_process

CLIENTS = 200
DURATION = 30.0
MAX_REQUESTS_PER_CLIENT = 2_000  # the loop is bounded by count as well as by time
API_POOL_SIZE = 10


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _client_loop(url: str, token: str, deadline: float, latencies: list[float],
                       failures: list[str], created: list[int]) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=30) as client:
        mine: list[int] = []
        for n in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= deadline:
                return
            kind = n % 3
            t0 = time.perf_counter()
            try:
                if kind == 0 or not mine:
                    r = await client.post("/v1/tasks", json={
                        "kind": "noop", "subtasks": [{"n": n}, {"n": n + 1}]})
                    expected = 201
                elif kind == 1:
                    r = await client.get(f"/v1/tasks/{mine[-1]}")
                    expected = 200
                else:
                    r = await client.get("/v1/tasks", params={"limit": "5"})
                    expected = 200
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - t0)
            if r.status_code != expected:
                failures.append(f"{r.status_code}: {r.text[:200]}")
            elif expected == 201:
                mine.append(r.json()["id"])
                created.append(mine[-1])


@pytest.mark.slow
@pytest.mark.system
def test_api_under_200_concurrent_clients_while_a_daemon_drains(database_url: str) -> None:
    users = [f"load{i}" for i in range(CLIENTS)]
    with api_process(database_url, TASKD_API__POOL_SIZE=str(API_POOL_SIZE)) as (url, proc), \
            daemons(database_url, 1, TASKD_QUEUES__STANDARD__INITIAL="50",
                    TASKD_QUEUES__STANDARD__MAX="50", TASKD_POLL_INTERVAL="0.5"):
        admin = httpx.Client(base_url=url, headers={
            "Authorization": f"Bearer {_token('root', admin=True)}"}, timeout=30)
        for user in users:
            r = admin.put(f"/v1/accounts/{user}",
                          json={"is_member": True, "quota_remaining": 1_000_000})
            assert r.status_code == 200, r.text
        admin.close()
        # Minted in-process with the API's secret: 200 `taskd api token` runs would take long.
        tokens = [mint_token(ApiSettings(jwt_secret=SECRET), u, ttl=600) for u in users]
        latencies: list[float] = []
        failures: list[str] = []
        created: list[int] = []
        peak_connections = 0

        async def watch_connections(deadline: float) -> None:
            nonlocal peak_connections
            while time.monotonic() < deadline:
                rows = await anyio.to_thread.run_sync(lambda: query(
                    database_url, "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'taskd-api'"))
                peak_connections = max(peak_connections, int(rows[0][0]))
                await anyio.sleep(0.5)

        async def main() -> float:
            started = time.monotonic()
            deadline = started + DURATION
            await asyncio.gather(
                watch_connections(deadline),
                *(_client_loop(url, token, deadline, latencies, failures, created)
                  for token in tokens))
            return time.monotonic() - started

        elapsed = anyio.run(main)
        total = len(latencies) + sum(1 for f in failures if not f[:3].isdigit())
        print(f"\nAPI load: {CLIENTS} clients, {elapsed:.1f} s, {total} requests "
              f"({total / elapsed:.0f}/s), {len(created)} tasks created, "
              f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {_percentile(latencies, 0.99) * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms, errors {len(failures)}, "
              f"peak API connections {peak_connections}/{API_POOL_SIZE}")
        assert failures == [], failures[:10]
        assert proc.poll() is None
        assert 0 < peak_connections <= API_POOL_SIZE
        # The daemon drains everything the clients created.
        expected = len(created) * 2
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.subtasks "
                                "WHERE status = 'completed'") == expected,
                 timeout=60, interval=0.5, message=f"{expected} subtasks completed")
        assert scalar(database_url, "SELECT count(*) FROM taskd.tasks") == len(created)
    ledger = query(database_url, "SELECT count(*) FROM taskd.quota_ledger WHERE reason = 'deduct'")
    assert ledger == [(len(created),)]


@pytest.mark.slow
@pytest.mark.system
def test_a_daemon_with_1000_subtasks_in_flight_holds_its_connection_budget(
    database_url: str,
) -> None:
    pool_size = 5

    async def submit() -> int:
        store = await Store.open(database_url)
        try:
            return await store.submit("standard", "sleep", [{"ms": 20_000}] * 1000)
        finally:
            await store.close()

    with daemons(database_url, 1, TASKD_QUEUES__STANDARD__INITIAL="1000",
                 TASKD_QUEUES__STANDARD__MAX="1000", TASKD_POOL_SIZE=str(pool_size),
                 TASKD_HEARTBEAT_INTERVAL="1", TASKD_LEASE_TIMEOUT="60",
                 TASKD_SHUTDOWN_GRACE="0") as (daemon,):
        anyio.run(submit)
        started = time.monotonic()
        wait_for(lambda: scalar(database_url, "SELECT count(*) FROM taskd.subtasks "
                                "WHERE status = 'processing'") == 1000,
                 timeout=30, interval=0.2, message="1,000 subtasks processing")
        claim_seconds = time.monotonic() - started
        samples: list[int] = []
        by_name: dict[str, int] = {}
        # Sample while heartbeats extend 1,000 leases, for a few heartbeat intervals.
        for _ in itertools.count():
            rows = query(database_url, "SELECT application_name, count(*) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND application_name LIKE 'taskd%%'"
                         " GROUP BY application_name")
            by_name = {name: int(n) for name, n in rows}
            samples.append(sum(by_name.values()))
            if len(samples) >= 25:
                break
            time.sleep(0.2)  # a sampling rate, not a synchronisation
        processing = scalar(database_url, "SELECT count(*) FROM taskd.subtasks "
                            "WHERE status = 'processing'")
        print(f"\n1,000 in flight after {claim_seconds:.1f} s; connections by application_name"
              f" {by_name}; peak {max(samples)} (budget {pool_size} + 1 LISTEN)")
        assert processing == 1000
        assert max(samples) <= pool_size + 1, (samples, by_name)
        assert daemon.proc.poll() is None
