"""One error shape for every answer that is not a success.

``{"errorCode": 4001, "message": "...", "details": ...}`` with a fitting HTTP status. Codes:

====  ======  ==============================================================================
code  status  meaning
====  ======  ==============================================================================
4001  400     invalid task type, malformed body
4001  422     a field breaks a rule (``details`` lists each field and what is wrong)
4002  403     quota exhausted
4003  403     please activate membership first / admin role required
4004  404     user, task (or another user's), schedule or queue not found / no such
              endpoint
4005  405     method not allowed
4009  409     Idempotency-Key reused for another request, task already ended, nothing to retry
4010  401     not logged in (no ``Authorization: Bearer`` header)
4011  401     invalid token (bad signature, wrong algorithm, expired, malformed)
4013  413     request body larger than ``api.max_body_bytes``
4015  415     request body is not JSON
5003  503     the database is unavailable; retry later
5000  500     a bug; never expected (the tests look for it)
====  ======  ==============================================================================
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskd.errors import (
    AccountNotFound,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidInput,
    NotAMember,
    NothingToRetry,
    QueueNotFound,
    QuotaExhausted,
    ScheduleExists,
    ScheduleNotFound,
    TaskdError,
    TaskFinished,
    TaskNotFound,
)

log = logging.getLogger(__name__)

INVALID_INPUT = 4001
QUOTA_EXHAUSTED = 4002
FORBIDDEN = 4003
NOT_FOUND = 4004
METHOD_NOT_ALLOWED = 4005
CONFLICT = 4009
NOT_LOGGED_IN = 4010
INVALID_TOKEN = 4011
BODY_TOO_LARGE = 4013
UNSUPPORTED_MEDIA_TYPE = 4015
INTERNAL = 5000
UNAVAILABLE = 5003

# For HTTP errors that Starlette raises itself (unknown route, wrong method...).
_CODE_OF_STATUS = {
    400: INVALID_INPUT, 401: NOT_LOGGED_IN, 403: FORBIDDEN, 404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED, 409: CONFLICT, 413: BODY_TOO_LARGE, 415: UNSUPPORTED_MEDIA_TYPE,
    422: INVALID_INPUT, 503: UNAVAILABLE,
}


class ErrorBody(BaseModel):
    """Every error answer."""

    errorCode: int = Field(examples=[4001])  # the wire name
    message: str = Field(examples=["invalid task type"])
    details: Any = None


class ApiError(TaskdError):
    """An answer other than success: HTTP ``status``, ``code``, message and details."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_response(
    status: int, code: int, message: str, details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(errorCode=code, message=message, details=details)
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    # ("body", "prompts", 0) -> "prompts[0]"; the "body"/"query"/"path" prefix is dropped.
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path",
                                                              "header") else list(map(str, loc))
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or (str(loc[0]) if loc else "request")


def validation_details(errors: Any) -> list[dict[str, str]]:
    """Pydantic's errors as ``[{"field": "prompts[0]", "problem": "..."}]``."""
    details = []
    for error in errors:
        problem = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        details.append({"field": _field_name(tuple(error.get("loc", ()))), "problem": problem})
    return details


def taskd_error_response(exc: TaskdError) -> JSONResponse:
    """The answer to one of taskd's exceptions, chosen by its type (never by its message).

    The routes raise taskd's exceptions as they come; this is the one place that turns each
    into a status, an errorCode, a message and details.
    """
    match exc:
        case ApiError():
            return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
        case InvalidInput():
            return error_response(422, INVALID_INPUT, str(exc),
                                  [{"field": exc.field or "request", "problem": str(exc)}])
        case AccountNotFound():
            return error_response(404, NOT_FOUND, "user not found")
        case NotAMember():
            return error_response(403, FORBIDDEN, "please activate membership first")
        case QuotaExhausted():
            return error_response(403, QUOTA_EXHAUSTED, "quota exhausted")
        case TaskNotFound():
            return error_response(404, NOT_FOUND, "task not found")
        case QueueNotFound():
            return error_response(404, NOT_FOUND, str(exc))
        case IdempotencyConflict():
            return error_response(409, CONFLICT, str(exc), {"task_id": exc.task_id})
        case TaskFinished():
            return error_response(409, CONFLICT, str(exc), {"status": exc.status})
        case NothingToRetry() | ScheduleExists():
            return error_response(409, CONFLICT, str(exc))
        case ScheduleNotFound():
            return error_response(404, NOT_FOUND, str(exc))
        case DatabaseUnavailable():
            log.warning("database unavailable: %s", exc)
            return error_response(503, UNAVAILABLE, "the database is unavailable; retry later",
                                  None, {"Retry-After": "5"})
    # A database error the API did not expect: logged in full, answered without internals.
    log.error("request failed: %s", exc, exc_info=exc)
    return error_response(503, UNAVAILABLE, "the request could not be completed; retry later",
                          None, {"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through :func:`error_response`; taskd's own exceptions through
    :func:`taskd_error_response`."""

    async def taskd_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TaskdError)
        return taskd_error_response(exc)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = validation_details(exc.errors())
        fields = ", ".join(d["field"] for d in details[:5])
        return error_response(422, INVALID_INPUT, f"invalid input: {fields}", details)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _CODE_OF_STATUS.get(exc.status_code, exc.status_code * 10)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "not found"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, message, None, headers)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return error_response(500, INTERNAL, "internal error")

    app.add_exception_handler(TaskdError, taskd_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
