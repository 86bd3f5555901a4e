"""The FastAPI application: middlewares, one router per resource, error handlers.

The routes live in :mod:`taskd.api.tasks`, :mod:`taskd.api.accounts` and
:mod:`taskd.api.system`; they reach the :class:`taskd.queue.accounts.ApiStore` and the settings
through the dependencies in :mod:`taskd.api.dependencies`, which read ``app.state``.
Stateless: everything it knows comes from the database, so any number may run side by side.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Depends, FastAPI

import taskd
from taskd.api import accounts, notifications, queues, schedules, system, tasks
from taskd.api.auth import AuthMiddleware, TokenVerifier
from taskd.api.dependencies import reject_unknown_query
from taskd.api.errors import ErrorBody, install_error_handlers
from taskd.api.limits import BodyLimitMiddleware
from taskd.errors import ConfigError
from taskd.queue.accounts import ApiStore
from taskd.queue.store import Store
from taskd.settings import Settings

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in [
        (400, "invalid task type or malformed body (errorCode 4001)"),
        (401, "not logged in (4010) or invalid token (4011)"),
        (403, "quota exhausted (4002), membership or access (4003)"),
        (404, "user, task or queue not found, or another user's task (4004)"),
        (409, "conflict (4009)"),
        (413, "request body too large (4013)"),
        (422, "a field breaks a rule (4001); details name each field"),
        (503, "the database is unavailable (5003)"),
    ]
}


def _console(settings: Settings, store: Store) -> Any:
    """The console's ASGI app. Raises :class:`ConfigError` when Jinja2 or python-multipart
    (the api extra) is missing."""
    try:
        # Imported here: Jinja2 loads only for an API that serves the console.
        from taskd.api.console import create_console
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the console (api.console) needs the api extra: pip install 'taskd[api]' (no "
            f"module named {exc.name!r}); or set TASKD_API__CONSOLE=false") from None
    return create_console(settings, store)


def create_app(settings: Settings, store: Store) -> FastAPI:
    """The API over an open ``store``. Raises :class:`taskd.errors.ConfigError` when the
    JWT key settings cannot be used."""
    verifier = TokenVerifier(settings.api)
    app = FastAPI(
        title="taskd API",
        version=taskd.__version__,
        description="Submit, follow, cancel and retry tasks; accounts and system status. "
        "Every request under /v1 needs `Authorization: Bearer <JWT>`. Errors have one shape: "
        '`{"errorCode": 4001, "message": "...", "details": ...}`.',
        responses=_ERRORS,
        dependencies=[Depends(reject_unknown_query)],
    )
    # Read by the dependencies in taskd.api.dependencies.
    app.state.settings = settings
    app.state.api_store = ApiStore(store)
    app.state.started = time.monotonic()
    install_error_handlers(app)
    # Added last is outermost: authenticate first, then read (and bound) the body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes)
    app.add_middleware(AuthMiddleware, verifier=verifier)
    if settings.api.console:
        app.mount("/console", _console(settings, store))
    app.include_router(system.router)
    app.include_router(tasks.router)
    app.include_router(accounts.router)
    app.include_router(queues.router)
    app.include_router(notifications.router)
    app.include_router(schedules.router)
    return app
