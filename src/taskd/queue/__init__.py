"""The queue core: the only package that executes SQL.

:class:`Store` offers one typed method per named query; :mod:`taskd.queue.migrations` applies
the schema. The daemon's components (producer, completer, rescuer, heartbeat, notifier) live
here too, each in its own module.
"""

from taskd.queue.migrations import check_schema, latest_version, migrate
from taskd.queue.models import (
    ClaimedSubtask,
    ErrorOccurrence,
    ExecutorInfo,
    Outcome,
    Subtask,
    Task,
)
from taskd.queue.store import Store, translated_errors, validate_submission

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
