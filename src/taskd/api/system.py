"""``/healthz`` (no token) and ``/v1/status`` (admin): the API's and the system's health."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

import taskd
from taskd.api.dependencies import Api, Caller, require_admin
from taskd.api.models import DatabaseStatus, HealthOut, ProcessingRate, QueueStatus, StatusOut

RATE_WINDOW = 60.0

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=HealthOut)
async def healthz(api: Api) -> HealthOut:
    """Liveness and readiness: 200 when the database answers, 503 when it does not."""
    await api.database_info()
    return HealthOut(status="ok")


def _as_int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


@router.get("/v1/status", response_model=StatusOut)
async def system_status(caller: Caller, api: Api, request: Request) -> StatusOut:
    """Health, uptime, version, per-queue concurrency / running / pending, task counts,
    processing rate and the database (admin)."""
    require_admin(caller)
    t0 = time.perf_counter()
    db = await api.database_info()
    latency_ms = (time.perf_counter() - t0) * 1000
    overview = await api.store.overview()
    stats = await api.task_statistics()
    completed, failed = await api.finished_in_window(RATE_WINDOW)
    executors: dict[str, int] = {}
    queues: dict[str, QueueStatus] = {}

    def queue(name: str) -> QueueStatus:
        return queues.setdefault(name, QueueStatus(
            concurrency=0, running=0, pending=0, scheduled=0, processing=0,
            oldest_pending_seconds=None))

    for e in overview["executors"]:
        executors[e["status"]] = executors.get(e["status"], 0) + 1
        if e["status"] not in ("running", "stopping"):
            continue
        for name, limit in (e["concurrency"] or {}).items():
            queue(str(name)).concurrency += _as_int(limit)
        for name, running in (e["running"] or {}).items():
            queue(str(name)).running += _as_int(running)
    for q in overview["queues"]:
        entry = queue(q["queue"])
        entry.pending, entry.scheduled = int(q["ready"]), int(q["scheduled"])
        entry.processing = int(q["processing"])
        entry.oldest_pending_seconds = q["oldest_pending_seconds"]
    started: float = request.app.state.started
    return StatusOut(
        health="ok" if executors.get("running") else "degraded",
        version=taskd.__version__,
        uptime_seconds=round(time.monotonic() - started, 3),
        database=DatabaseStatus(status="ok", latency_ms=round(latency_ms, 3),
                                server_version=str(db["server_version"])),
        executors=executors,
        queues=dict(sorted(queues.items())),
        tasks=stats,
        processing_rate=ProcessingRate(
            window_seconds=RATE_WINDOW, completed=completed, failed=failed,
            completed_per_second=round(completed / RATE_WINDOW, 3),
            failed_per_second=round(failed / RATE_WINDOW, 3),
        ),
    )
