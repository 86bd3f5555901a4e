"""The lease-based PostgreSQL queue: the only package that executes SQL.

:class:`Store` offers one typed method per named query (``queries/*.sql``); beside it,
:mod:`~taskd.queue.accounts` (the API's accounts and quota), :mod:`~taskd.queue.status`
(operators' views), :mod:`~taskd.queue.scaling` (the scaler's queries),
:mod:`~taskd.queue.tasks` (a task's priority after submit),
:mod:`~taskd.queue.listener` (LISTEN for wake-ups), :mod:`~taskd.queue.migrations` (the schema),
:mod:`~taskd.queue.connection` (session settings, error translation) and
:mod:`~taskd.queue.submission` (the rules a submission keeps), :mod:`~taskd.queue.inspection`
(what was submitted, for tests and tracing) and :mod:`~taskd.queue.testdb` (throw-away test
databases). The daemon that runs the queue is :mod:`taskd.executor`.
"""

from taskd.queue.connection import translated_errors
from taskd.queue.migrations import check_schema, latest_version, migrate
from taskd.queue.store import Store
from taskd.queue.submission import validate_submission
from taskd.types import (
    ClaimedSubtask,
    ErrorOccurrence,
    ExecutorInfo,
    Outcome,
    Subtask,
    Task,
)

__all__ = [
    "ClaimedSubtask",
    "ErrorOccurrence",
    "ExecutorInfo",
    "Outcome",
    "Store",
    "Subtask",
    "Task",
    "check_schema",
    "latest_version",
    "migrate",
    "translated_errors",
    "validate_submission",
]
