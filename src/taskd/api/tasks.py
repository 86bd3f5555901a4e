"""``/v1/tasks``: create, list, read, change the priority of, page through subtasks, cancel and
retry.

The routes raise taskd's exceptions as they come (TaskNotFound, QuotaExhausted, ...);
:func:`taskd.api.errors.taskd_error_response` answers them.

``POST /v1/tasks`` is the hot route: :class:`CreateRoute` answers its common request (a JSON
body that validates, no Idempotency-Key, no query string) without FastAPI's per-request
machinery, and hands every other request to FastAPI's own handler; the route's declaration,
and so the OpenAPI document, is FastAPI's as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from taskd.api import errors as codes
from taskd.api.auth import USER_ID_PATTERN, Principal
from taskd.api.dependencies import Api, Caller, Config, require_admin
from taskd.api.errors import ApiError
from taskd.api.models import (
    CancelOut,
    CreateTaskRequest,
    Progress,
    RetryOut,
    Status,
    SubtaskList,
    SubtaskOut,
    TaskCreated,
    TaskList,
    TaskOut,
    TaskPatch,
    TaskSummaryOut,
)
from taskd.errors import InvalidInput, TaskNotFound
from taskd.queue.accounts import ApiStore, NewTask, TaskDetail
from taskd.queue.submission import valid_traceparent
from taskd.queue.tasks import set_task_priority
from taskd.settings import DEFAULT_MAX_ATTEMPTS, Settings
from taskd.types import Task

MAX_ID = 2**63 - 1
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
CURSOR_PATTERN = r"^[0-9]{1,18}$"

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="the task's id")]
Limit = Annotated[int, Query(ge=1, le=100, description="page size, at most 100")]
Cursor = Annotated[str | None, Query(pattern=CURSOR_PATTERN,
                                     description="next_cursor of the previous page")]

router = APIRouter(tags=["tasks"])


def _progress(t: Task | TaskDetail) -> Progress:
    finished = t.completed + t.failed + t.cancelled
    return Progress(total=t.total, completed=t.completed, failed=t.failed,
                    cancelled=t.cancelled, percent=round(100.0 * finished / t.total, 2))


def _summary(t: Task) -> TaskSummaryOut:
    return TaskSummaryOut(
        id=t.id, name=t.name, kind=t.kind, queue=t.queue, status=t.status,
        priority=t.priority, user_id=t.user_id, params=t.params, progress=_progress(t),
        created_at=t.created_at, updated_at=t.updated_at, completed_at=t.completed_at,
    )


def _detail(t: TaskDetail) -> dict[str, Any]:
    return {
        "id": t.id, "name": t.name, "kind": t.kind, "queue": t.queue, "status": t.status,
        "priority": t.priority, "user_id": t.user_id, "params": t.params,
        "progress": _progress(t), "created_at": t.created_at, "updated_at": t.updated_at,
        "completed_at": t.completed_at, "running": t.processing, "batch_size": t.batch_size,
        "total_images": t.total * t.batch_size, "results": t.results, "error": t.error,
        "result_urls": t.result_urls,
    }


async def _visible_task(api: ApiStore, caller: Principal, task_id: int) -> None:
    """Raises TaskNotFound unless the task exists and the caller owns it or is an admin:
    another user's task is answered exactly as a missing one, so nothing of it is revealed."""
    owner = await api.task_owner(task_id)
    if not caller.is_admin and owner != caller.user_id:
        raise TaskNotFound(f"task {task_id} not found")


def _queue_of(body: CreateTaskRequest, settings: Settings) -> str:
    """The queue the task goes to: its kind's, or the one asked for if it is served."""
    queue = settings.api.kinds.get(body.kind)
    if queue is None:
        raise ApiError(400, codes.INVALID_INPUT, "invalid task type",
                       {"kind": body.kind, "allowed": sorted(settings.api.kinds)})
    if body.queue is not None and body.queue != queue:
        if body.queue not in settings.queues:
            raise ApiError(422, codes.INVALID_INPUT, f"queue {body.queue!r} is not served",
                           [{"field": "queue", "problem": "not a configured queue"}])
        queue = body.queue
    return queue


async def _create(
    body: CreateTaskRequest, caller: Principal, api: ApiStore, settings: Settings,
    idempotency_key: str | None, traceparent: str | None,
) -> tuple[dict[str, Any], int]:
    """POST /v1/tasks's work, whichever path the request took: the answer and its status."""
    queue = _queue_of(body, settings)
    for dependency in body.after or ():
        # Only tasks the caller may see: another user's is answered as a missing one.
        try:
            await _visible_task(api, caller, dependency)
        except TaskNotFound:
            raise InvalidInput(f"after names unknown tasks: {dependency}", field="after") from None
    payloads, _batch = body.plan(settings.api.templates.get(body.kind))
    queue_settings = settings.queues.get(queue)
    created = await api.create_task(NewTask(
        user_id=caller.user_id, name=body.name, kind=body.kind, queue=queue,
        priority=body.priority, params=body.params, payloads=payloads,
        max_attempts=(queue_settings.max_attempts if queue_settings
                      else DEFAULT_MAX_ATTEMPTS),
        idempotency_key=idempotency_key,
        max_payload_bytes=settings.max_payload_bytes,
        traceparent=traceparent if traceparent and valid_traceparent(traceparent) else None,
        notify_url=body.notify_url, notify_on=body.notify_on,
        unique_key=body.unique_key, unique_scope=body.unique_scope, after=body.after,
    ))
    return ({**_detail(created.detail), "replayed": created.replayed,
             "quota_remaining": created.quota_remaining}, 200 if created.replayed else 201)


_TASK_CREATED = TypeAdapter(TaskCreated)


async def _lean_create(request: Request) -> Response | None:
    """The common ``POST /v1/tasks`` answered directly, or None: FastAPI's handler answers it.

    Taken only when FastAPI would run the endpoint with the same arguments: no query string
    (``reject_unknown_query`` refuses any), a caller (AuthMiddleware's), ``application/json``,
    no Idempotency-Key (FastAPI checks its pattern), and a body that ``json.loads`` reads and
    :class:`CreateTaskRequest` accepts, as FastAPI reads and validates it. Every refusal is
    left to FastAPI, so its 4xx answers stay exactly FastAPI's. The answer is validated and
    serialised as ``response_model`` is: the same bytes. Saves FastAPI's dependency solving
    and its generic body and response handling (docs/benchmarks.md).
    """
    scope = request.scope
    if scope.get("query_string"):
        return None
    caller = scope.get("state", {}).get("principal")
    if not isinstance(caller, Principal):
        return None
    content_type = traceparent = None
    for name, value in scope["headers"]:
        if name == b"content-type" and content_type is None:  # the first, as FastAPI reads
            content_type = value
        elif name == b"idempotency-key":
            return None
        elif name == b"traceparent" and traceparent is None:
            traceparent = value.decode("latin-1")
    if content_type != b"application/json":
        return None
    try:
        body = CreateTaskRequest.model_validate(json.loads(await request.body()))
    except (ValueError, ValidationError, RecursionError):
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; JSON nested deeper than
        # Python's recursion limit raises RecursionError: FastAPI's handler answers all (400).
        return None
    app_state = request.app.state
    answer, status = await _create(body, caller, app_state.api_store, app_state.settings,
                                   None, traceparent)
    return Response(_TASK_CREATED.dump_json(_TASK_CREATED.validate_python(answer)),
                    status_code=status, media_type="application/json")


class CreateRoute(APIRoute):
    """``POST /v1/tasks``: :func:`_lean_create`, else FastAPI's handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        general = super().get_route_handler()

        async def handler(request: Request) -> Response:
            lean = await _lean_create(request)
            return lean if lean is not None else await general(request)

        return handler


async def create_task(
    body: CreateTaskRequest,
    caller: Caller,
    api: Api,
    settings: Config,
    response: Response,
    idempotency_key: Annotated[str | None, Header(
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="repeat a request safely: the same key returns the same task")] = None,
    traceparent: Annotated[str | None, Header(
        description="W3C trace context of the caller's span: each run's span links to it "
                    "(an invalid one is ignored, as the W3C says)")] = None,
) -> dict[str, Any]:
    """Create a task: take one unit of quota, insert its subtasks and wake executors.

    One transaction: the account must exist (4004), be a member (4003) and have quota
    (4002); nothing is written otherwise. A kind with a template (``api.templates``, e.g.
    the photo profile's ``model_pose12``) makes one subtask per template prompt, filled
    with the request's ``variables``.
    """
    answer, response.status_code = await _create(body, caller, api, settings,
                                                 idempotency_key, traceparent)
    return answer


router.add_api_route(
    "/v1/tasks", create_task, methods=["POST"], response_model=TaskCreated, status_code=201,
    responses={200: {"model": TaskCreated,
                     "description": "an Idempotency-Key replay: the earlier task"}},
    route_class_override=CreateRoute)


@router.get("/v1/tasks", response_model=TaskList)
async def list_tasks(
    caller: Caller,
    api: Api,
    status: Status | None = None,
    kind: Annotated[str | None, Query(max_length=200)] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
    user_id: Annotated[str | None, Query(
        pattern=USER_ID_PATTERN, description="another user's tasks (admins only)")] = None,
) -> TaskList:
    """The caller's tasks, newest first, with the number that match the filters."""
    owner = caller.user_id
    if user_id is not None and user_id != caller.user_id:
        require_admin(caller)
        owner = user_id
    tasks, total = await api.list_tasks(
        owner, status=status, kind=kind, limit=limit,
        before_id=int(cursor) if cursor is not None else None,
    )
    next_cursor = str(tasks[-1].id) if len(tasks) == limit else None
    return TaskList(items=[_summary(t) for t in tasks], total=total, next_cursor=next_cursor)


@router.get("/v1/tasks/{task_id}", response_model=TaskOut)
async def get_task(caller: Caller, api: Api, task_id: TaskId) -> dict[str, Any]:
    """One task: progress, the first results and the latest error (owner or admin)."""
    await _visible_task(api, caller, task_id)
    return _detail(await api.task_detail(task_id))


@router.patch("/v1/tasks/{task_id}", response_model=TaskOut)
async def patch_task(
    caller: Caller, api: Api, task_id: TaskId, body: TaskPatch
) -> dict[str, Any]:
    """Change the task's priority (owner or admin); its pending subtasks move in the claim
    order at once. 409 when the task has already ended."""
    await _visible_task(api, caller, task_id)
    await set_task_priority(api.store, task_id, body.priority)
    return _detail(await api.task_detail(task_id))


@router.get("/v1/tasks/{task_id}/subtasks", response_model=SubtaskList)
async def list_subtasks(
    caller: Caller, api: Api, task_id: TaskId, status: Status | None = None,
    limit: Limit = 20, cursor: Cursor = None,
) -> SubtaskList:
    """The task's subtasks in id order, a page at a time (owner or admin)."""
    await _visible_task(api, caller, task_id)
    subtasks, total = await api.list_subtasks(
        task_id, status=status, limit=limit,
        after_id=int(cursor) if cursor is not None else 0,
    )
    next_cursor = str(subtasks[-1].id) if len(subtasks) == limit else None
    items = [SubtaskOut(**{f: getattr(s, f) for f in SubtaskOut.model_fields})
             for s in subtasks]
    return SubtaskList(items=items, total=total, next_cursor=next_cursor)


@router.post("/v1/tasks/{task_id}/cancel", response_model=CancelOut)
async def cancel_task(caller: Caller, api: Api, task_id: TaskId) -> CancelOut:
    """Cancel pending subtasks; ask running ones to stop (owner or admin).

    409 when the task has already ended.
    """
    await _visible_task(api, caller, task_id)
    cancelled, stopping = await api.cancel_task(task_id)
    return CancelOut(id=task_id, cancelled=cancelled, stopping=stopping)


@router.post("/v1/tasks/{task_id}/retry", response_model=RetryOut)
async def retry_task(caller: Caller, api: Api, task_id: TaskId) -> RetryOut:
    """Failed subtasks back to pending (admin, or the owner when quota allows).

    A task whose quota was refunded takes one unit again from its owner (not when an
    admin retries it). 409 when nothing failed.
    """
    await _visible_task(api, caller, task_id)
    report = await api.retry_task(task_id, charge_user=not caller.is_admin)
    return RetryOut(id=task_id, retried=report.retried, quota_taken=report.quota_taken)
