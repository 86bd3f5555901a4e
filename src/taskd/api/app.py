"""The FastAPI application: routes over :class:`taskd.queue.accounts.ApiStore`.

Stateless: everything it knows comes from the database, so any number may run side by side.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import taskd
from taskd.api import errors as codes
from taskd.api.auth import USER_ID_PATTERN, AuthMiddleware, Principal, TokenVerifier
from taskd.api.errors import ApiError, ErrorBody, install_error_handlers
from taskd.api.limits import BodyLimitMiddleware
from taskd.api.models import (
    AccountIn,
    AccountOut,
    CancelOut,
    CreateTaskRequest,
    DatabaseStatus,
    HealthOut,
    ProcessingRate,
    Progress,
    QueueStatus,
    RetryOut,
    Status,
    StatusOut,
    SubtaskList,
    SubtaskOut,
    TaskCreated,
    TaskList,
    TaskOut,
    TaskSummaryOut,
)
from taskd.errors import AccountNotFound
from taskd.queue.accounts import ApiStore, NewTask, TaskDetail
from taskd.queue.store import Store
from taskd.settings import Settings
from taskd.types import Task

RATE_WINDOW = 60.0
MAX_ID = 2**63 - 1
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"
CURSOR_PATTERN = r"^[0-9]{1,18}$"

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="the task's id")]
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="the account's user id")]
Limit = Annotated[int, Query(ge=1, le=100, description="page size, at most 100")]
Cursor = Annotated[str | None, Query(pattern=CURSOR_PATTERN,
                                     description="next_cursor of the previous page")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in [
        (400, "invalid task type or malformed body (errorCode 4001)"),
        (401, "not logged in (4010) or invalid token (4011)"),
        (403, "quota exhausted (4002), membership or access (4003)"),
        (404, "user or task not found (4004)"),
        (409, "conflict (4009)"),
        (413, "request body too large (4013)"),
        (422, "a field breaks a rule (4001); details name each field"),
        (503, "the database is unavailable (5003)"),
    ]
}

_bearer = HTTPBearer(auto_error=False, description="a JWT: `taskd api token --user U`")


# The dependencies are async: FastAPI runs a plain def dependency in a worker thread, two
# thread hops per request (17% of the API's CPU under load).
async def principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> Principal:
    """The caller, authenticated by :class:`AuthMiddleware` before the body was read."""
    found = getattr(request.state, "principal", None)
    if not isinstance(found, Principal):
        raise ApiError(401, codes.NOT_LOGGED_IN, "not logged in")
    return found


Caller = Annotated[Principal, Depends(principal)]


async def reject_unknown_query(request: Request) -> None:
    """Unknown query parameters are 422, like unknown body fields: a typo must not be ignored."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = {param.alias for param in _query_params(dependant)}
    unknown = sorted(set(request.query_params.keys()) - known)
    if unknown:
        raise ApiError(422, codes.INVALID_INPUT, f"unknown query parameter {unknown[0]!r}",
                       [{"field": name, "problem": "unknown query parameter"}
                        for name in unknown])


def _query_params(dependant: Any) -> list[Any]:
    found = list(dependant.query_params)
    for sub in dependant.dependencies:
        found += _query_params(sub)
    return found


def require_admin(caller: Principal) -> None:
    if not caller.is_admin:
        raise ApiError(403, codes.FORBIDDEN, "admin role required")


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
    }


def _as_int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def create_app(settings: Settings, store: Store) -> FastAPI:
    """The API over an open ``store``. Raises :class:`taskd.errors.ConfigError` when the
    JWT key settings cannot be used."""
    verifier = TokenVerifier(settings.api)
    api = ApiStore(store)
    started = time.monotonic()
    app = FastAPI(
        title="taskd API",
        version=taskd.__version__,
        description="Submit, follow, cancel and retry tasks; accounts and system status. "
        "Every request under /v1 needs `Authorization: Bearer <JWT>`. Errors have one shape: "
        '`{"errorCode": 4001, "message": "...", "details": ...}`.',
        responses=_ERRORS,
        dependencies=[Depends(reject_unknown_query)],
    )
    install_error_handlers(app)
    # Added last is outermost: authenticate first, then read (and bound) the body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(AuthMiddleware, verifier=verifier)

    async def visible_task(caller: Principal, task_id: int) -> None:
        owner = await api.task_owner(task_id)
        if not caller.is_admin and owner != caller.user_id:
            raise ApiError(403, codes.FORBIDDEN, "no access to this task")

    @app.get("/healthz", response_model=HealthOut, tags=["system"])
    async def healthz() -> HealthOut:
        """Liveness and readiness: 200 when the database answers, 503 when it does not."""
        await api.database_info()
        return HealthOut(status="ok")

    @app.post("/v1/tasks", response_model=TaskCreated, status_code=201, tags=["tasks"],
              responses={200: {"model": TaskCreated,
                               "description": "an Idempotency-Key replay: the earlier task"}})
    async def create_task(
        body: CreateTaskRequest,
        caller: Caller,
        response: Response,
        idempotency_key: Annotated[str | None, Header(
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="repeat a request safely: the same key returns the same task")] = None,
    ) -> dict[str, Any]:
        """Create a task: take one unit of quota, insert its subtasks and wake executors.

        One transaction: the account must exist (4004), be a member (4003) and have quota
        (4002); nothing is written otherwise.
        """
        queue = settings.api.kinds.get(body.kind)
        if queue is None:
            raise ApiError(400, codes.INVALID_INPUT, "invalid task type",
                           {"kind": body.kind, "allowed": sorted(settings.api.kinds)})
        if body.queue is not None and body.queue != queue:
            if body.queue not in settings.queues:
                raise ApiError(422, codes.INVALID_INPUT, f"queue {body.queue!r} is not served",
                               [{"field": "queue", "problem": "not a configured queue"}])
            queue = body.queue
        payloads, _batch = body.plan()
        queue_settings = settings.queues.get(queue)
        created = await api.create_task(NewTask(
            user_id=caller.user_id, name=body.name, kind=body.kind, queue=queue,
            priority=body.priority, params=body.params, payloads=payloads,
            max_attempts=queue_settings.max_attempts if queue_settings else 3,
            idempotency_key=idempotency_key,
            max_payload_bytes=settings.max_payload_bytes,
        ))
        if created.replayed:
            response.status_code = 200
        detail = await api.task_detail(created.task_id)
        return {**_detail(detail), "replayed": created.replayed,
                "quota_remaining": created.quota_remaining}

    @app.get("/v1/tasks", response_model=TaskList, tags=["tasks"])
    async def list_tasks(
        caller: Caller,
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

    @app.get("/v1/tasks/{task_id}", response_model=TaskOut, tags=["tasks"])
    async def get_task(caller: Caller, task_id: TaskId) -> dict[str, Any]:
        """One task: progress, the first results and the latest error (owner or admin)."""
        await visible_task(caller, task_id)
        return _detail(await api.task_detail(task_id))

    @app.get("/v1/tasks/{task_id}/subtasks", response_model=SubtaskList, tags=["tasks"])
    async def list_subtasks(
        caller: Caller, task_id: TaskId, status: Status | None = None,
        limit: Limit = 20, cursor: Cursor = None,
    ) -> SubtaskList:
        """The task's subtasks in id order, a page at a time (owner or admin)."""
        await visible_task(caller, task_id)
        subtasks, total = await api.list_subtasks(
            task_id, status=status, limit=limit,
            after_id=int(cursor) if cursor is not None else 0,
        )
        next_cursor = str(subtasks[-1].id) if len(subtasks) == limit else None
        items = [SubtaskOut(**{f: getattr(s, f) for f in SubtaskOut.model_fields})
                 for s in subtasks]
        return SubtaskList(items=items, total=total, next_cursor=next_cursor)

    @app.post("/v1/tasks/{task_id}/cancel", response_model=CancelOut, tags=["tasks"])
    async def cancel_task(caller: Caller, task_id: TaskId) -> CancelOut:
        """Cancel pending subtasks; ask running ones to stop (owner or admin).

        409 when the task has already ended.
        """
        await visible_task(caller, task_id)
        cancelled, stopping = await api.cancel_task(task_id)
        return CancelOut(id=task_id, cancelled=cancelled, stopping=stopping)

    @app.post("/v1/tasks/{task_id}/retry", response_model=RetryOut, tags=["tasks"])
    async def retry_task(caller: Caller, task_id: TaskId) -> RetryOut:
        """Failed subtasks back to pending (admin, or the owner when quota allows).

        A task whose quota was refunded takes one unit again from its owner (not when an
        admin retries it). 409 when nothing failed.
        """
        await visible_task(caller, task_id)
        report = await api.retry_task(task_id, charge_user=not caller.is_admin)
        return RetryOut(id=task_id, retried=report.retried, quota_taken=report.quota_taken)

    @app.put("/v1/accounts/{user_id}", response_model=AccountOut, tags=["accounts"])
    async def put_account(caller: Caller, user_id: UserId, body: AccountIn) -> AccountOut:
        """Create or update an account (admin); the quota change is written to the ledger."""
        require_admin(caller)
        account, created = await api.put_account(
            user_id, is_member=body.is_member, quota_remaining=body.quota_remaining
        )
        return AccountOut(user_id=account.user_id, is_member=account.is_member,
                          quota_remaining=account.quota_remaining, created=created,
                          created_at=account.created_at, updated_at=account.updated_at)

    @app.get("/v1/accounts/{user_id}", response_model=AccountOut, tags=["accounts"])
    async def get_account(caller: Caller, user_id: UserId) -> AccountOut:
        """An account's membership and quota (its own user, or an admin)."""
        if user_id != caller.user_id:
            require_admin(caller)
        account = await api.get_account(user_id)
        if account is None:
            raise AccountNotFound(f"user {user_id!r} not found")
        return AccountOut(user_id=account.user_id, is_member=account.is_member,
                          quota_remaining=account.quota_remaining, created=False,
                          created_at=account.created_at, updated_at=account.updated_at)

    @app.get("/v1/status", response_model=StatusOut, tags=["system"])
    async def system_status(caller: Caller) -> StatusOut:
        """Health, uptime, version, per-queue concurrency / running / pending, task counts,
        processing rate and the database (admin)."""
        require_admin(caller)
        t0 = time.perf_counter()
        db = await api.database_info()
        latency_ms = (time.perf_counter() - t0) * 1000
        overview = await store.overview()
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

    return app
