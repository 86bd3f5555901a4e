"""`taskd status`, `taskd errors` and `taskd tasks` as an operator runs them: real processes
against a real database with arranged rows."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from taskd.queue.store import Store
from taskd.types import Outcome
from tests import factories
from tests.integration.test_status import DEAD_AFTER, arrange_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.system]

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"


def _env(url: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKD_")}
    return {**clean, "TASKD_DATABASE_URL": url,
            "TASKD_EXECUTOR_DEAD_AFTER": str(DEAD_AFTER), "COLUMNS": "200", **extra}


async def taskd(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "taskd", *args], env=_env(url), check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def test_status_json_reports_the_cluster_and_exits_0(
    store: Store, database_url: str
) -> None:
    await arrange_cluster(store)
    done = await taskd(database_url, "status", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["healthy"] is True and data["problems"] == []
    assert [(e["id"], e["status"], e["leases"]) for e in data["executors"]] == [
        ("exec-a", "running", 1), ("exec-b", "running", 1), ("exec-c", "dead", 0),
    ]
    queues = {q["queue"]: q for q in data["queues"]}
    assert {k: queues["standard"][k] for k in (
        "ready", "scheduled", "processing", "completed_last_hour", "failed_last_hour",
    )} == {"ready": 4, "scheduled": 1, "processing": 2, "completed_last_hour": 2,
           "failed_last_hour": 1}
    assert queues["standard"]["rate_per_minute"] == {"1m": 3.0, "5m": 0.6, "15m": 0.2}
    assert (queues["lumina"]["ready"], queues["lumina"]["scheduled"]) == (0, 3)
    assert [(e["error_type"], e["count"]) for e in data["errors"]] == [
        ("ValueError", 3), ("TimeoutError", 1),
    ]
    assert data["database"]["size_bytes"] > 0
    subtasks = data["storage"]["tables"]["subtasks"]
    assert subtasks["size_bytes"] > 0 and subtasks["indexes"]["subtasks_claim_idx"] > 0


async def test_status_tables_show_every_section(store: Store, database_url: str) -> None:
    await arrange_cluster(store)
    done = await taskd(database_url, "status")
    assert done.returncode == 0, done.stderr
    for text in ("exec-a", "host-3", "dead", "standard", "lumina", "ValueError", "bad n",
                 "database: PostgreSQL", "healthy", "storage", "claim index", "since vacuum",
                 "sessions: "):
        assert text in done.stdout, text


@pytest.mark.parametrize(
    ("arrangement", "problem"),
    [
        ({"live": False}, "no_live_executor"),
        ({"dead_holds_lease": True}, "dead_executor_holds_leases"),
    ],
)
async def test_status_exits_1_when_something_needs_attention(
    store: Store, database_url: str, arrangement: dict[str, Any], problem: str
) -> None:
    await arrange_cluster(store, **arrangement)
    done = await taskd(database_url, "status", "--json")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["healthy"] is False
    assert problem in {p["code"] for p in data["problems"]}
    tables = await taskd(database_url, "status")
    assert tables.returncode == 1
    assert "attention:" in tables.stdout


@pytest.mark.parametrize(
    "args", [("status", "--json"), ("tasks", "list")]
)
async def test_unreachable_database_exits_2_with_one_line(args: tuple[str, ...]) -> None:
    done = await taskd(UNREACHABLE, *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskd: error: database unavailable")


async def test_status_watch_refreshes_until_interrupted(
    store: Store, database_url: str
) -> None:
    await arrange_cluster(store, live=False)
    async with await anyio.open_process(
        [sys.executable, "-m", "taskd", "status", "--watch", "--json", "--interval", "0.2"],
        env=_env(database_url),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines = BufferedByteReceiveStream(proc.stdout)
        with anyio.fail_after(30):
            # Each refresh is one JSON line; wait for two, so it did refresh.
            for _ in range(2):
                line = await lines.receive_until(b"\n", 1 << 20)
                assert json.loads(line)["healthy"] is False
            proc.send_signal(signal.SIGINT)
            code = await proc.wait()
        stderr = b""
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                stderr += await proc.stderr.receive()
    assert code == 1  # the last refresh's verdict
    assert b"Traceback" not in stderr


async def test_errors_lists_newest_first(store: Store, database_url: str) -> None:
    await arrange_cluster(store)
    done = await taskd(database_url, "errors", "--json")
    assert done.returncode == 0, done.stderr
    assert [e["error_type"] for e in json.loads(done.stdout)] == ["TimeoutError", "ValueError"]
    done = await taskd(database_url, "errors", "--queue", "standard")
    assert "ValueError" in done.stdout and "TimeoutError" not in done.stdout


async def test_tasks_list_show_retry_cancel(store: Store, database_url: str) -> None:
    cluster = await arrange_cluster(store)
    listed = await taskd(database_url, "tasks", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["id"] for t in json.loads(listed.stdout)] == [
        cluster.lumina_task, cluster.standard_task,
    ]
    shown = await taskd(database_url, "tasks", "show", str(cluster.standard_task), "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["subtasks_by_status"] == {
        "completed": 2, "failed": 1, "processing": 2, "ready": 4, "scheduled": 1,
    }
    assert len(data["subtasks"]) == 10

    retried = await taskd(database_url, "tasks", "retry", str(cluster.standard_task))
    assert retried.returncode == 0, retried.stderr
    assert "1 failed subtasks back to pending" in retried.stdout
    cancelled = await taskd(database_url, "tasks", "cancel", str(cluster.lumina_task))
    assert cancelled.returncode == 0, cancelled.stderr
    assert "3 pending subtasks cancelled" in cancelled.stdout
    task = await store.get_task(cluster.lumina_task)
    assert task is not None and task.status == "cancelled"

    for command in ("show", "retry", "cancel"):
        missing = await taskd(database_url, "tasks", command, "999999")
        assert missing.returncode == 1
        assert missing.stderr.strip() == "taskd: error: no task 999999"


async def test_tasks_show_tables(store: Store, database_url: str) -> None:
    task_id = await factories.submit(store, 2)
    claimed = await store.claim_subtasks("standard", "x", 1, 60)
    await store.record_outcomes("x", [Outcome(claimed[0].id, 1, "failed", error="boom!")])
    done = await taskd(database_url, "tasks", "show", str(task_id))
    assert done.returncode == 0, done.stderr
    assert "boom!" in done.stdout and "1 failed" in done.stdout and "1 ready" in done.stdout
