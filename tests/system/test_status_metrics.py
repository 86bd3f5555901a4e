"""A real `taskd run` process: after a known workload its /metrics counters say exactly that,
and `taskd status` sees it live."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskd.queue.store import Store
from tests.system.test_promtool import run_promtool
from tests.system.test_status_cli import taskd

pytestmark = [pytest.mark.anyio, pytest.mark.system, pytest.mark.slow]

COMPLETED, FAILED, RETRIED = 5, 3, 2


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def finished(values: dict[Any, float], outcome: str) -> float:
    return values.get(
        ("taskd_subtasks_finished_total", (("outcome", outcome), ("queue", "standard"))), 0.0
    )


async def poll(condition: Callable[[], Any]) -> Any:
    """Await ``condition()`` (a coroutine function) until it is truthy; at most 30 s."""
    with anyio.fail_after(30):
        while True:
            value = await condition()
            if value:
                return value
            await anyio.sleep(0.1)


async def test_counters_match_a_known_workload(store: Store, database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env.update({
        "TASKD_DATABASE_URL": database_url, "TASKD_METRICS_ADDR": "127.0.0.1:0",
        "TASKD_EXECUTOR_ID": "metrics-test", "TASKD_QUEUES": '{"standard": {}}',
        "TASKD_QUEUES__STANDARD__RETRY_BASE": "0.05", "TASKD_QUEUES__STANDARD__RETRY_MAX": "0.1",
        "TASKD_POLL_INTERVAL": "0.1", "TASKD_STATS_INTERVAL": "0.2",
    })
    async with await anyio.open_process(
        [sys.executable, "-m", "taskd", "run"], env=env,
    ) as proc:
        try:
            async def metrics_url() -> str | None:
                rows = await store.fetch_rows("executor_overview", {})
                return next((r["metrics_url"] for r in rows if r["id"] == "metrics-test"), None)

            url = await poll(metrics_url)
            tasks = [
                await store.submit("standard", "noop", [{"n": i} for i in range(COMPLETED)]),
                await store.submit("standard", "fail", [{"permanent": True}] * FAILED,
                                   max_attempts=3),
                await store.submit("standard", "fail", [{"until_attempt": 2}] * RETRIED,
                                   max_attempts=3),
            ]

            async def all_finished() -> bool:
                for task_id in tasks:
                    task = await store.get_task(task_id)
                    if task is None or task.status not in ("completed", "failed"):
                        return False
                return True

            await poll(all_finished)
            async with httpx.AsyncClient() as http:
                async def counted() -> dict[Any, float] | None:
                    values = samples((await http.get(url)).text)
                    done = finished(values, "completed") + finished(values, "failed")
                    return values if done >= COMPLETED + RETRIED + FAILED else None

                values = await poll(counted)
                text = (await http.get(url)).text
                assert (await http.get(url.replace("/metrics", "/healthz"))).status_code == 200
                assert (await http.get(url.replace("/metrics", "/readyz"))).status_code == 200

            assert finished(values, "completed") == COMPLETED + RETRIED
            assert finished(values, "failed") == FAILED
            assert finished(values, "retried") == RETRIED
            assert values[("taskd_subtasks_claimed_total", (("queue", "standard"),))] == (
                COMPLETED + FAILED + 2 * RETRIED
            )
            assert values.get(("taskd_leases_lost_total", (("queue", "standard"),)), 0) == 0

            linted = await anyio.to_thread.run_sync(
                lambda: run_promtool("check", "metrics", stdin=text)
            )
            assert linted.returncode == 0, linted.stdout + linted.stderr

            status = await taskd(database_url, "status", "--json")
            assert status.returncode == 0, status.stderr
            data = json.loads(status.stdout)
            executor = next(e for e in data["executors"] if e["id"] == "metrics-test")
            assert executor["alive"] is True and executor["status"] == "running"
            standard = next(q for q in data["queues"] if q["queue"] == "standard")
            assert (standard["completed_last_hour"], standard["failed_last_hour"]) == (
                COMPLETED + RETRIED, FAILED
            )
            assert standard["ready"] == standard["processing"] == 0
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    code = await proc.wait()
                assert code == 0


async def test_a_fresh_daemon_exports_every_queue_series_at_0_and_no_created_series(
    store: Store, database_url: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    env.pop("PROMETHEUS_DISABLE_CREATED_SERIES", None)
    env.update({
        "TASKD_DATABASE_URL": database_url, "TASKD_METRICS_ADDR": "127.0.0.1:0",
        "TASKD_EXECUTOR_ID": "fresh-metrics", "TASKD_QUEUES": '{"standard": {}, "extra": {}}',
    })
    async with await anyio.open_process([sys.executable, "-m", "taskd", "run"], env=env) as proc:
        try:
            async def metrics_url() -> str | None:
                rows = await store.fetch_rows("executor_overview", {})
                return next((r["metrics_url"] for r in rows if r["id"] == "fresh-metrics"),
                            None)

            url = await poll(metrics_url)
            async with httpx.AsyncClient() as http:
                text = (await http.get(url)).text
        finally:
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await proc.wait()
    values = samples(text)
    for queue in ("standard", "lumina", "extra"):
        q = (("queue", queue),)
        for name in ("taskd_leases_rescued_total", "taskd_leases_lost_total",
                     "taskd_subtasks_claimed_total", "taskd_queue_running"):
            assert values[(name, q)] == 0, (name, queue)
        for outcome in ("completed", "failed", "retried", "snoozed", "cancelled"):
            key = ("taskd_subtasks_finished_total", (("outcome", outcome), *q))
            assert values[key] == 0
        for direction in ("up", "down"):
            key = ("taskd_scaler_adjustments_total", (("direction", direction), *q))
            assert values[key] == 0
    # (a label value may hold "_created", as the index unique_keys_created_idx does)
    assert not [line for line in text.splitlines()
                if line.split("{")[0].split(" ")[0].endswith("_created")], "created series"
    linted = await anyio.to_thread.run_sync(lambda: run_promtool("check", "metrics", stdin=text))
    assert linted.returncode == 0, linted.stdout + linted.stderr
