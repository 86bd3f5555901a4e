"""The API's one mapping from taskd's exceptions to answers (taskd.api.errors): by type, with
the status, errorCode, message and details that the routes used to build one by one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskd.api.errors import ApiError, taskd_error_response
from taskd.errors import (
    AccountNotFound,
    DatabaseError,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidInput,
    NotAMember,
    NothingToRetry,
    QuotaExhausted,
    SchemaMissing,
    TaskdError,
    TaskFinished,
    TaskNotFound,
)

CASES: list[tuple[TaskdError, int, int, str, Any]] = [
    (AccountNotFound("user 'bob' not found"), 404, 4004, "user not found", None),
    (NotAMember("please activate membership first"), 403, 4003,
     "please activate membership first", None),
    (QuotaExhausted("quota exhausted: 0 left, 1 needed"), 403, 4002, "quota exhausted", None),
    (TaskNotFound("task 9 not found"), 404, 4004, "task not found", None),
    (IdempotencyConflict("Idempotency-Key 'k' was already used for task 7", task_id=7),
     409, 4009, "Idempotency-Key 'k' was already used for task 7", {"task_id": 7}),
    (TaskFinished("task 3 has already ended (completed)", status="completed"),
     409, 4009, "task 3 has already ended (completed)", {"status": "completed"}),
    (NothingToRetry("task 3 has no failed subtasks"), 409, 4009,
     "task 3 has no failed subtasks", None),
    (InvalidInput("priority is too high", field="priority"), 422, 4001, "priority is too high",
     [{"field": "priority", "problem": "priority is too high"}]),
    (InvalidInput("no field named"), 422, 4001, "no field named",
     [{"field": "request", "problem": "no field named"}]),
    (ApiError(403, 4003, "admin role required"), 403, 4003, "admin role required", None),
    (DatabaseUnavailable("database unavailable: refused"), 503, 5003,
     "the database is unavailable; retry later", None),
    (DatabaseError("UniqueViolation: secret internals"), 503, 5003,
     "the request could not be completed; retry later", None),
    (SchemaMissing("no schema: run `taskd migrate`"), 503, 5003,
     "the request could not be completed; retry later", None),
]


@pytest.mark.parametrize(("exc", "status", "code", "message", "details"), CASES,
                         ids=[type(case[0]).__name__ for case in CASES])
def test_each_exception_type_has_one_answer(
    exc: TaskdError, status: int, code: int, message: str, details: Any
) -> None:
    response = taskd_error_response(exc)
    assert response.status_code == status
    assert json.loads(response.body) == {"errorCode": code, "message": message,
                                         "details": details}
    if status == 503:
        assert response.headers["Retry-After"] == "5"


def test_the_answer_follows_the_type_not_the_message() -> None:
    # A message that reads like another error's changes nothing: the type decides.
    response = taskd_error_response(TaskNotFound("user not found; quota exhausted"))
    assert (response.status_code, json.loads(response.body)["message"]) == (404,
                                                                            "task not found")
