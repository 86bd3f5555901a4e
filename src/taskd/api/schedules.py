"""``/v1/schedules`` (admin): cron schedules at run time, as ``taskd schedules`` manages them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from taskd.api.dependencies import Api, Caller, Config, require_admin
from taskd.queue import schedules as sched
from taskd.settings import SCHEDULE_NAME_PATTERN, ScheduleSettings

Name = Annotated[str, Path(pattern=SCHEDULE_NAME_PATTERN, description="the schedule's name")]

router = APIRouter(tags=["schedules"])


@router.get("/v1/schedules")
async def list_schedules(caller: Caller, api: Api) -> dict[str, Any]:
    """Every schedule: its definition, state, last and next tick (by the database clock) and
    its last task's id and status (admin)."""
    require_admin(caller)
    return {"schedules": [r.to_json() for r in await sched.list_schedules(api.store)]}


@router.get("/v1/schedules/{name}")
async def get_schedule(caller: Caller, api: Api, name: Name) -> dict[str, Any]:
    """One schedule (admin); 404 when there is none."""
    require_admin(caller)
    return (await sched.get_schedule(api.store, name)).to_json()


@router.put("/v1/schedules/{name}", status_code=201,
            responses={200: {"description": "an existing schedule was replaced"}})
async def put_schedule(
    caller: Caller, api: Api, settings: Config, name: Name, body: ScheduleSettings,
    response: Response,
) -> dict[str, Any]:
    """Create a schedule (201), or replace an existing one's definition (200; its paused
    state is kept). The body has the fields of ``[schedules.<name>]``; an invalid cron
    expression or time zone is answered 422 and nothing is written (admin)."""
    require_admin(caller)
    created = await sched.put_schedule(api.store, name, body, replace=True,
                                       max_payload_bytes=settings.max_payload_bytes)
    if not created:
        response.status_code = 200
    return (await sched.get_schedule(api.store, name)).to_json()


@router.post("/v1/schedules/{name}/pause")
async def pause_schedule(caller: Caller, api: Api, name: Name) -> dict[str, Any]:
    """Pause: no tick is created until it is resumed (admin)."""
    require_admin(caller)
    await sched.set_schedule_enabled(api.store, name, False)
    return (await sched.get_schedule(api.store, name)).to_json()


@router.post("/v1/schedules/{name}/resume")
async def resume_schedule(caller: Caller, api: Api, name: Name) -> dict[str, Any]:
    """Resume from the next tick; the ticks of the pause are not caught up (admin)."""
    require_admin(caller)
    await sched.set_schedule_enabled(api.store, name, True)
    return (await sched.get_schedule(api.store, name)).to_json()


@router.post("/v1/schedules/{name}/run-now", status_code=201)
async def run_schedule_now(caller: Caller, api: Api, name: Name) -> dict[str, Any]:
    """Submit the schedule's task now, outside its ticks (admin)."""
    require_admin(caller)
    return {"task_id": await sched.run_schedule_now(api.store, name)}


@router.delete("/v1/schedules/{name}", status_code=204)
async def delete_schedule(caller: Caller, api: Api, name: Name) -> Response:
    """Delete the schedule and its tick history; its tasks stay (admin)."""
    require_admin(caller)
    await sched.delete_schedule(api.store, name)
    return Response(status_code=204)
