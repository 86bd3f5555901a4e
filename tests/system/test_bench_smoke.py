"""Each benchmark workload's code path, once, with tiny sizes: the harness must not rot.

These time nothing and assert no speed: only that every workload runs and counts what it ran.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import pytest
from bench import (
    api_submit,
    common,
    console,
    fleet,
    http_clients,
    notifications,
    peers,
    task_end,
    taskd_workloads,
)
from bench.__main__ import compare

pytestmark = [pytest.mark.system, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _server(admin_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "ADMIN_URL", admin_url)


def test_throughput_and_growth() -> None:
    result = taskd_workloads.throughput(60, [1], concurrency=20)
    assert result["results"][0]["completed"] == 60
    # In clock ticks (10 ms): 60 noops may read 0, never less.
    assert result["results"][0]["client_cpu_us"] >= 0
    assert result["results"][0]["pg_cpu_us"] >= 0
    grown = taskd_workloads.growth([0, 500], 30, processes=1, concurrency=10, repeat=2)
    assert [r["completed"] for r in grown["results"]] == [30, 30, 30, 30]
    assert [r["finished_rows"] for r in grown["summary"]] == [0, 500]
    assert grown["summary"][0]["vs_empty"] == 1.0


def test_notifications() -> None:
    result = notifications.notifications(40, 30, processes=1, concurrency=10, repeat=1,
                                         max_connections=5, batch_size=10)
    assert [(r["trigger"], r["completed"], r["outbox_rows"]) for r in result["drain"]] == [
        ("14 (outbox)", 40, 0), ("10 (none)", 40, 0)]
    assert [r["n"] for r in result["deliveries"]] == [30]
    assert {r["trigger"] for r in result["statement"]} == {"10", "14"}
    assert result["deliveries"][0]["deliveries_per_s"] > 0


def test_task_end() -> None:
    rows = task_end.task_end(40, [1, 20], processes=1, concurrency=10, repeat=1)["results"]
    assert [(r["subtasks_per_task"], r["completed"]) for r in rows] == [
        (1, 40), (1, 40), (20, 40), (20, 40)]
    assert {r["trigger"] for r in rows} == {"8 (notify)", "4 (none)"}


def test_latency() -> None:
    result = taskd_workloads.latency(rate=20, seconds=0.3)
    (row,) = result["results"]
    assert row["n"] == 6
    # Taken apart on the database's clock: the submission, then the rest of the way.
    assert row["submit_own_p50_ms"] > 0 and 0 < row["after_submit_p50_ms"] <= row["max_ms"]


def test_external_api() -> None:
    result = taskd_workloads.external_api(4, job_seconds=0.05, limit=2, polling=0.02)
    assert result["results"][0]["not_completed"] == 0


def test_http_clients() -> None:
    rows = http_clients.http_clients(tasks=2, interval=0.02, seconds=0.1)["results"]
    assert [r["client"] for r in rows] == list(http_clients.CLIENTS)
    assert all(r["requests"] >= 2 for r in rows), rows


def test_submit() -> None:
    assert taskd_workloads.submit_sql(2, 10)["results"][1]["subtasks_per_call"] == 10
    if importlib.util.find_spec("fastapi") and importlib.util.find_spec("jwt"):
        row = api_submit.submit_http(2, 0.3, 1)["results"][0]
        assert row["requests"] > 0 and row["failed"] == 0, row["failures"]


def test_footprint() -> None:
    row = taskd_workloads.footprint(20, concurrency=5, sleep_ms=5)["results"][0]
    assert row["peak_rss_mib"] > 0
    assert row["peak_connections"] >= 1


def test_bare_loops() -> None:
    batch = peers.bare_batch(300, connections=2, batch=50)
    assert batch["n"] == 300 and batch["client_cpu_us"] > 0 and batch["pg_cpu_us"] >= 0
    assert peers.bare_listen_latency(rate=20, seconds=0.3)["n"] == 6
    own = peers.taskd_sql_batch(300, connections=2, batch=50)
    assert own["n"] == 300 and own["client_cpu_us"] > 0 and own["pg_cpu_us"] >= 0


@pytest.mark.skipif(importlib.util.find_spec("pgqueuer") is None, reason="bench group")
def test_pgqueuer() -> None:
    assert peers.pgqueuer_throughput(50, 1, 10)["n"] == 50
    assert peers.pgqueuer_latency(rate=20, seconds=0.3)["n"] == 6


@pytest.mark.skipif(importlib.util.find_spec("pgqueuer") is None, reason="bench group")
def test_peers_ends_with_the_targets_round_by_round() -> None:
    args = argparse.Namespace(n=60, concurrency=20, procrastinate_n=0, rate=20.0, seconds=0.3,
                              repeat=1, graphile=False)
    summary = compare(args)["targets"]
    assert len(summary) == 5
    # Every target found both of its systems in the round.
    assert all(row["met"].endswith("of 1") for row in summary), summary


@pytest.mark.skipif(importlib.util.find_spec("procrastinate") is None, reason="bench group")
def test_procrastinate() -> None:
    assert peers.procrastinate_throughput(20, 1, 2)["n"] == 20
    assert peers.procrastinate_latency(rate=20, seconds=0.3)["n"] == 6


@pytest.mark.skipif(not common.postgres_cpu(), reason="the server runs on another machine")
def test_cpu_per_item_counts_this_process_and_the_servers_open_backends(admin_url: str) -> None:
    with common.connect(admin_url) as conn, common.cpu_per_item(10) as cpu:
        start = time.process_time()
        while time.process_time() - start < 0.05:
            pass
        # ~0.1 s or more of the backend's CPU, on a connection still open at the end
        conn.execute("SELECT count(*) FROM generate_series(1, 3000000)").fetchone()
    assert cpu["client_cpu_us"] >= 0.05 / 10 * 1e6
    assert cpu["server_cpu_us"] >= 0.05 / 10 * 1e6


def test_fleet() -> None:
    if not (fleet.PG_BIN / "postgres").exists():
        message = "bench fleet needs PostgreSQL 15 (Debian postgresql-15; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    # Idle for 1.5 s: longer than poll_interval (1 s), so each daemon polls in it.
    result = fleet.fleet([1, 2], 40, concurrency=5, idle_seconds=1.5)
    rows = result["results"]
    assert [r["daemons"] for r in rows] == [1, 2]
    # Each daemon holds pool_size (5) connections, all opened at its start.
    assert all(0 < r["idle_connections"] <= 5 * r["daemons"] for r in rows), rows
    # A claim takes at most a daemon's free slots (5): at least 8 claims for 40 subtasks.
    assert all(r["claims_per_subtask"] >= 40 / 5 / 40 for r in rows), rows
    # In clock ticks (10 ms): 40 noops may read 0, never less.
    assert all(r["pg_cpu_us_per_subtask"] >= 0 for r in rows), rows
    assert all(r["idle_statements_per_s"] > 0 for r in rows), rows
    # One rescuer round per rescue_interval (5 s) for the fleet: at most one in 1.5 s, whatever
    # the size (each daemon passing would make up to two at 2 daemons).
    assert all(r["idle_rescue_passes_per_s"] <= 1 / 1.5 for r in rows), rows
    assert all("after_drain_dispersion" in r for r in rows), rows
    assert result["summary"]["largest_vs_best_median"] > 0
    assert len(result["summary"]["largest_vs_best_per_round"]) == 1


def test_fleet_of_sleeps() -> None:
    if not (fleet.PG_BIN / "postgres").exists():
        pytest.skip("bench fleet needs PostgreSQL 15 (test_fleet says so in CI)")
    # 20 sleeps of 100 ms on 5 slots: 4 waves, an ideal of 50/s.
    result = fleet.fleet([1], 20, concurrency=5, idle_seconds=0.5, sleep_ms=100)
    (row,) = result["results"]
    assert row["ideal_per_s"] == 50
    # Never faster than the sleeps allow; slower only by the daemon's own turns.
    assert 0 < row["of_ideal"] <= 1.05, row
    assert set(result["summary"]["of_ideal_median"]) == {1}
    with pytest.raises(SystemExit, match="--sleep-ms must be 0"):
        fleet.fleet([1], 20, concurrency=5, idle_seconds=0.5, sleep_ms=-1)


def test_console() -> None:
    result = console.console(400, repeat=1, pending=8)
    assert result["fill"]["finished_subtasks"] == 400
    assert [r["page"] for r in result["results"]] == [name for name, _ in console.pages(100)]
    assert all(r["under_200ms"].endswith("/1") for r in result["results"])
