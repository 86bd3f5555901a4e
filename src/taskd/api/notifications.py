"""``/v1/admin/notifications``: the task-end webhooks' outbox, for admins: list, redeliver."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from taskd.api import errors as codes
from taskd.api.dependencies import Api, Caller, require_admin
from taskd.api.errors import ApiError
from taskd.queue.notifications import list_notifications, redeliver_notifications

router = APIRouter(tags=["notifications"])
MAX_ID = 2**63 - 1


class NotificationOut(BaseModel):
    id: int
    task_id: int
    url: str
    event: Literal["failed", "completed", "cancelled"]
    status: Literal["pending", "delivered", "dead"] = Field(
        description="pending: undelivered, still tried; delivered; dead: given up")
    attempts: int
    run_after: datetime = Field(description="when it is next tried (pending)")
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None


class RedeliverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        None, min_length=1, max_length=10000, description="these dead notifications")
    task_id: int | None = Field(None, ge=1, le=MAX_ID,
                                description="every dead notification of this task")
    all_dead: bool = Field(False, description="every dead notification")


class RedeliverOut(BaseModel):
    redelivered: list[int] = Field(description="ids of the dead notifications now due again")


@router.get("/v1/admin/notifications", response_model=list[NotificationOut])
async def list_route(
    caller: Caller,
    api: Api,
    status: Literal["pending", "delivered", "dead"] | None = None,
    task_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[NotificationOut]:
    """Task-end notifications, newest first (admins only)."""
    require_admin(caller)
    rows = await list_notifications(api.store, status=status, task_id=task_id, limit=limit)
    return [NotificationOut.model_validate(r, from_attributes=True) for r in rows]


@router.post("/v1/admin/notifications/redeliver", response_model=RedeliverOut)
async def redeliver_route(body: RedeliverRequest, caller: Caller, api: Api) -> RedeliverOut:
    """Dead notifications due again now, with a fresh retry window (admins only). Name them:
    ``ids``, ``task_id`` or ``all_dead``."""
    require_admin(caller)
    if body.ids is None and body.task_id is None and not body.all_dead:
        raise ApiError(422, codes.INVALID_INPUT, "name the notifications to redeliver",
                       [{"field": "ids", "problem": "give ids, task_id or all_dead"}])
    ids = await redeliver_notifications(api.store, ids=body.ids, task_id=body.task_id)
    return RedeliverOut(redelivered=ids)
