"""``/v1/queues`` (admin): list the queues, pause and resume one for every executor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from taskd.api.dependencies import Api, Caller, Config, require_admin
from taskd.api.models import QueueControlOut
from taskd.errors import QueueNotFound
from taskd.queue.controls import (
    QueueControl,
    list_queue_controls,
    pause_queue,
    resume_queue,
)
from taskd.settings import QUEUE_NAME_PATTERN

QueueName = Annotated[str, Path(pattern=QUEUE_NAME_PATTERN, description="the queue's name")]

router = APIRouter(tags=["queues"])


def _out(control: QueueControl, changed: bool | None = None) -> QueueControlOut:
    return QueueControlOut(
        queue=control.queue, paused=control.paused, paused_at=control.paused_at,
        paused_by=control.paused_by, resumed_at=control.resumed_at,
        rate_limit=control.rate_limit, rate_window_used=control.rate_window_used,
        changed=changed,
    )


@router.get("/v1/queues", response_model=list[QueueControlOut])
async def list_queues(caller: Caller, api: Api) -> list[QueueControlOut]:
    """The queues the database knows (served by a daemon, or paused) with their controls
    (admin)."""
    require_admin(caller)
    return [_out(c) for c in await list_queue_controls(api.store)]


async def _one(api: Api, queue: str, changed: bool) -> QueueControlOut:
    found = [c for c in await list_queue_controls(api.store) if c.queue == queue]
    if not found:  # not reached: the change found the row
        raise QueueNotFound(f"unknown queue {queue!r}")
    return _out(found[0], changed)


@router.post("/v1/queues/{queue}/pause", response_model=QueueControlOut)
async def pause(caller: Caller, api: Api, settings: Config, queue: QueueName) -> QueueControlOut:
    """Pause the queue on every executor (admin): claims stop from the answer on, running
    subtasks finish, submissions are still accepted; it stays paused across restarts.
    Idempotent (``changed`` false when it already was). 404 for an unknown queue."""
    require_admin(caller)
    changed = await pause_queue(api.store, queue, by=caller.user_id,
                                configured=settings.queues)
    return await _one(api, queue, changed)


@router.post("/v1/queues/{queue}/resume", response_model=QueueControlOut)
async def resume(caller: Caller, api: Api, settings: Config, queue: QueueName) -> QueueControlOut:
    """Resume the queue (admin): every executor is woken and claims from it at once.
    Idempotent (``changed`` false when it was not paused). 404 for an unknown queue."""
    require_admin(caller)
    changed = await resume_queue(api.store, queue, configured=settings.queues)
    return await _one(api, queue, changed)
