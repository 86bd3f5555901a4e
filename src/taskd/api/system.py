"""``/healthz`` (no token) and ``/v1/status`` (admin): the API's and the system's health."""

from __future__ import annotations

import time
from collections import Counter

from fastapi import APIRouter, Request

import taskd
from taskd.api.dependencies import Api, Caller, Config, require_admin
from taskd.api.models import DatabaseStatus, HealthOut, ProcessingRate, QueueStatus, StatusOut
from taskd.queue.status import StatusReport, read_status

RATE_WINDOW = 60.0

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=HealthOut)
async def healthz(api: Api) -> HealthOut:
    """Liveness and readiness: 200 when the database answers, 503 when it does not."""
    await api.database_info()
    return HealthOut(status="ok")


@router.get("/v1/status", response_model=StatusOut)
async def system_status(
    caller: Caller, api: Api, settings: Config, request: Request
) -> StatusOut:
    """Health, uptime, version, per-queue concurrency / running / pending, task and subtask
    counts by status, processing rate and the database (admin)."""
    require_admin(caller)
    t0 = time.perf_counter()
    await api.database_info()
    latency_ms = (time.perf_counter() - t0) * 1000
    # The view `taskd status` shows: an executor is live only with a recent heartbeat. The
    # API shows no errors, so none are read.
    report = await read_status(api.store, dead_after=settings.executor_dead_after,
                               error_limit=0)
    completed, failed = await api.finished_in_window(RATE_WINDOW)
    started: float = request.app.state.started
    return StatusOut(
        health="ok" if any(e.alive and e.status == "running" for e in report.executors)
        else "degraded",
        version=taskd.__version__,
        uptime_seconds=round(time.monotonic() - started, 3),
        database=DatabaseStatus(status="ok", latency_ms=round(latency_ms, 3),
                                server_version=report.database.server_version),
        executors=dict(Counter(e.status for e in report.executors)),
        queues=_queue_statuses(report),
        tasks=report.tasks,
        subtasks=report.subtasks,
        processing_rate=ProcessingRate(
            window_seconds=RATE_WINDOW, completed=completed, failed=failed,
            completed_per_second=round(completed / RATE_WINDOW, 3),
            failed_per_second=round(failed / RATE_WINDOW, 3),
        ),
    )


def _queue_statuses(report: StatusReport) -> dict[str, QueueStatus]:
    """Per queue, by name: the live executors' limits and running counts, and the backlog."""
    queues: dict[str, QueueStatus] = {}

    def queue(name: str) -> QueueStatus:
        return queues.setdefault(name, QueueStatus(
            concurrency=0, running=0, pending=0, scheduled=0, processing=0,
            oldest_pending_seconds=None))

    for e in report.executors:
        if not e.alive:
            continue
        for name, slots in e.queues.items():
            entry = queue(name)
            entry.concurrency += slots.limit or 0
            entry.running += slots.running
    for q in report.queues:
        entry = queue(q.queue)
        entry.pending, entry.scheduled, entry.processing = q.ready, q.scheduled, q.processing
        entry.oldest_pending_seconds = q.oldest_pending_seconds
        entry.paused, entry.rate_limit = q.paused, q.rate_limit
        entry.waiting_on_dependencies = q.waiting_on_dependencies
        entry.unique_duplicates = q.unique_duplicates
    return dict(sorted(queues.items()))
