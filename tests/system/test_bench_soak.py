"""``python -m bench soak`` for a few seconds at a low rate: its own cluster with stock
settings, the paced submitter, the per-interval report, taskd and PgQueuer. Times nothing."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
from bench import soak

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_soak_reports_every_interval_on_a_stock_cluster() -> None:
    run = soak.soak_taskd(200, 6, 2, daemons=1, batch=20, concurrency=50,
                          table_settings="stock", on_row=lambda _row: None)
    # Its own cluster, stock settings: autovacuum on (the shared test server has it off).
    assert run["server"]["autovacuum"] == "on"
    assert run["server"]["autovacuum_vacuum_scale_factor"] == "0.2"
    # "stock" resets every storage parameter of taskd's tables.
    assert run["reloptions"] == {}
    rows = run["rows"]
    assert [r["minute"] for r in rows] == [round(2 * k / 60, 2) for k in (1, 2, 3)]
    for r in rows:
        assert 120 < r["offered_per_s"] < 300, r
        assert r["completed_per_s"] > 0, r
        assert 0 <= r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"], r
        assert r["claim_index_mb"] > 0 and r["heap_mb"] > 0
    # Every claim and completion left dead row versions that the report sees.
    assert rows[-1]["dead_tuples"] > 0
    total = soak.summary(run)
    assert total["intervals"] == 3 and total["completed_per_s_min"] > 0


def test_reloptions_reach_the_table() -> None:
    run = soak.soak_taskd(100, 2, 2, daemons=1, batch=10, concurrency=20,
                          table_settings="stock", reloptions=["subtasks:fillfactor=70"],
                          on_row=lambda _row: None)
    assert run["reloptions"] == {"subtasks": ["fillfactor=70"]}


@pytest.mark.skipif(importlib.util.find_spec("pgqueuer") is None, reason="bench group")
def test_soak_runs_pgqueuer_at_the_same_load() -> None:
    run = soak.soak_pgqueuer(200, 4, 2, workers=1, batch=20, on_row=lambda _row: None)
    assert len(run["rows"]) == 2
    assert all(r["completed_per_s"] > 0 and 120 < r["offered_per_s"] < 300 for r in run["rows"])
    assert run["rows"][-1]["dead_tuples"] > 0


def test_queues_drains_many_queues_and_counts_idle_cost() -> None:
    from bench import queues

    result = queues.queues([1, 3], n=90, processes=1, concurrency=30, idle_seconds=1.5,
                           repeat=1)
    assert [(r["queues"], r["completed"]) for r in result["drain"]] == [(1, 90), (3, 90)]
    assert [r["concurrency_each"] for r in result["drain"]] == [30, 10]
    idle = result["idle"]
    assert [r["queues"] for r in idle] == [1, 3]
    # Idle daemons still poll, heartbeat and collect statistics: never zero statements.
    assert all(r["transactions_per_s"] > 0 and r["server_cpu_ms_per_s"] >= 0 for r in idle)
    assert idle[0]["vs_1_queue"] == 1.0


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                    reason="graphile-worker needs node and npm")
def test_graphile_worker_drains_its_jobs(admin_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import common, graphile

    monkeypatch.setattr(common, "ADMIN_URL", admin_url)
    assert graphile.missing() is None  # installed into bench/.graphile-worker on first use
    row = graphile.throughput(300, processes=1, concurrency=4, local_queue=50)
    assert row["n"] == 300 and row["per_s"] > 0
    assert row["system"].startswith(f"graphile-worker {graphile.VERSION}")
