"""OpenTelemetry tracing: each door stores the submitter's traceparent, and a daemon's claim,
run and outcome-batch spans (the SDK's in-memory exporter) link each run to its submitter."""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from taskd.errors import InvalidInput
from taskd.executor.daemon import Daemon
from taskd.executor.tracing import Tracing
from taskd.queue.store import Store
from taskd.settings import QueueSettings, Settings
from tests.integration.api_support import Client, create, put_account

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
INVALID = ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
           "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
           "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
           "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
           "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"]  # upper case


async def traceparent_of(conn: Any, task_id: int) -> str | None:
    cur = await conn.execute("SELECT traceparent FROM taskd.tasks WHERE id = %s", (task_id,))
    row = await cur.fetchone()
    return row[0]


async def test_sql_and_python_store_the_traceparent_and_refuse_a_malformed_one(
    store: Store, conn: Any,
) -> None:
    cur = await conn.execute(
        "SELECT taskd.submit_task('standard', 'noop', '[{}]', traceparent => %s)",
        (TRACEPARENT,))
    by_sql = (await cur.fetchone())[0]
    by_python = await store.submit("standard", "noop", [{}], traceparent=TRACEPARENT)
    # Callers that do not name it: every other positional argument.
    cur = await conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]', 'n', 0, "
                             "'{}', 3, NULL)")
    old_call = (await cur.fetchone())[0]
    assert await traceparent_of(conn, by_sql) == TRACEPARENT
    assert await traceparent_of(conn, by_python) == TRACEPARENT
    assert await traceparent_of(conn, old_call) is None
    for bad in INVALID:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a W3C traceparent"):
            await conn.execute("SELECT taskd.submit_task('standard', 'noop', '[{}]', "
                               "traceparent => %s)", (bad,))
        with pytest.raises(InvalidInput, match="not a W3C traceparent"):
            await store.submit("standard", "noop", [{}], traceparent=bad)
    cur = await conn.execute("SELECT count(*) FROM taskd.tasks")
    assert (await cur.fetchone())[0] == 3


async def test_the_api_stores_the_traceparent_header_and_ignores_an_invalid_one(
    client: Client, conn: Any,
) -> None:
    put_account(client, "alice")
    alice = client("alice")
    ok = alice.post(
        "/v1/tasks", json={"kind": "noop", "subtasks": [{"n": 1}]},
        headers={"traceparent": TRACEPARENT})
    assert ok.status_code == 201, ok.text
    assert await traceparent_of(conn, ok.json()["id"]) == TRACEPARENT
    ignored = alice.post("/v1/tasks", json={"kind": "noop", "subtasks": [{"n": 1}]},
                         headers={"traceparent": INVALID[1]})
    assert ignored.status_code == 201, ignored.text
    assert await traceparent_of(conn, ignored.json()["id"]) is None
    plain = create(alice)
    assert await traceparent_of(conn, plain.json()["id"]) is None


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_daemon_spans_claims_runs_and_outcome_batches(
    store: Store, database_url: str,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("a service").start_as_current_span("signup") as submitter:
        context = submitter.get_span_context()
        traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
        traced = await store.submit("standard", "noop", [{"n": 1}, {"n": 2}],
                                    traceparent=traceparent)
    untraced = await store.submit("standard", "fail", [{"permanent": True}])
    settings = Settings(
        database_url=database_url, metrics_addr="127.0.0.1:0", executor_id="traced",
        handlers={}, poll_interval=0.1, shutdown_grace=5,
        queues={"standard": QueueSettings(initial=2, max=2),
                "lumina": QueueSettings(enabled=False)},
    )
    daemon = Daemon(settings, tracing=Tracing(provider))
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.fail_after(30):
            while True:
                tasks = [await store.get_task(t) for t in (traced, untraced)]
                if all(t is not None and t.status in ("completed", "failed") for t in tasks):
                    break
                await anyio.sleep(0.05)
        daemon.stopping.set()
    spans = exporter.get_finished_spans()

    runs = sorted((s for s in spans if s.name == "taskd.run noop"),
                  key=lambda s: _attributes(s)["taskd.subtask_id"])
    assert [_attributes(s)["taskd.outcome"] for s in runs] == ["completed", "completed"]
    for span in runs:
        attributes = _attributes(span)
        assert attributes["taskd.queue"] == "standard" and attributes["taskd.kind"] == "noop"
        assert (attributes["taskd.task_id"], attributes["taskd.attempt"]) == (traced, 1)
        assert span.kind == SpanKind.CONSUMER and span.parent is None
        [link] = span.links
        assert (link.context.trace_id, link.context.span_id) == (
            context.trace_id, context.span_id)
        assert span.context is not None and span.context.trace_id != context.trace_id
    [failed] = [s for s in spans if s.name == "taskd.run fail"]
    assert _attributes(failed)["taskd.outcome"] == "failed" and not failed.links
    assert failed.status.status_code == StatusCode.ERROR
    assert "PermanentError" in (failed.status.description or "")

    claims = [s for s in spans if s.name == "taskd.claim standard"]
    assert sum(_attributes(s)["taskd.claimed"] for s in claims) == 3
    batches = [s for s in spans if s.name == "taskd.record_outcomes"]
    assert sum(_attributes(s)["taskd.outcomes"] for s in batches) == 3
