"""The row types that storage, the executor and handlers share.

This module imports nothing else of taskd (River's ``rivertype``): a handler author imports
:class:`ClaimedSubtask` or ``JSON`` from here without pulling in psycopg.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

JSON = Any
SubtaskStatus = Literal["pending", "processing", "completed", "failed", "cancelled"]
TaskStatus = SubtaskStatus
ExecutorStatus = Literal["running", "stopping", "stopped", "dead"]
Verdict = Literal["completed", "failed", "retry", "snooze", "cancelled"]


class ClaimedSubtask(NamedTuple):
    """A subtask this executor holds under a lease, as the claim returned it.

    A named tuple: immutable, and far cheaper to build than a frozen dataclass (one per
    claimed subtask; docs/benchmarks.md).
    """

    id: int
    task_id: int
    queue: str
    kind: str
    priority: int
    payload: dict[str, JSON]
    state: JSON | None
    attempt: int
    max_attempts: int
    run_after: datetime
    wait: float  # seconds from run_after to the claim, by the database's clock


@dataclass(frozen=True, slots=True)
class ErrorOccurrence:
    """One error to add to error_logs; identical ``(error_type, message)`` pairs aggregate."""

    error_type: str
    message: str
    stack_trace: str | None = None
    queue: str | None = None
    kind: str | None = None
    count: int = 1


class Outcome(NamedTuple):
    """What became of one attempt, for :meth:`taskd.queue.Store.record_outcomes`.

    ``verdict``: completed, failed, retry (with backoff), snooze (retry later without spending
    the attempt) or cancelled. ``result_json`` is the handler's result as JSON text, encoded
    and checked once by the runner (:func:`taskd.executor.runner.result_json`); the store
    splices it into the batch as it is. None is SQL NULL. ``delay`` is the seconds until the
    retry for ``retry`` and ``snooze``. ``failure`` is the error that error_logs aggregates,
    written in the same statement as the outcome (None for successes and snoozes). A named
    tuple, like :class:`ClaimedSubtask`: one is built per subtask.
    """

    subtask_id: int
    attempt: int
    verdict: Verdict
    result_json: str | None = None
    error: str | None = None
    delay: float = 0.0
    failure: ErrorOccurrence | None = None

    @property
    def result(self) -> JSON | None:
        """The result as JSON values, decoded from ``result_json``."""
        return None if self.result_json is None else json.loads(self.result_json)


@dataclass(frozen=True, slots=True)
class ExecutorInfo:
    """What an executor registers about itself."""

    id: str
    executor_group: str
    hostname: str
    pid: int
    version: str
    concurrency: dict[str, int] = field(default_factory=dict)
    metrics_url: str | None = None


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    name: str
    queue: str
    kind: str
    priority: int
    user_id: str | None
    params: dict[str, JSON]
    status: TaskStatus
    total: int
    completed: int
    failed: int
    cancelled: int
    quota_cost: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Subtask:
    id: int
    task_id: int
    queue: str
    kind: str
    priority: int
    status: SubtaskStatus
    payload: dict[str, JSON]
    state: JSON | None
    result: JSON | None
    error: str | None
    attempt: int
    max_attempts: int
    run_after: datetime
    locked_by: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RescueReport:
    """What one rescuer pass did."""

    returned: int = 0
    failed: int = 0
    dead_executors: tuple[str, ...] = ()
    timed_out: int = 0
    deleted_subtasks: int = 0
    deleted_tasks: int = 0
    by_queue: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnreadableJSON:
    """Stands for a JSON value that could not be decoded; ``reason`` says why.

    PostgreSQL accepts JSON nested far deeper than Python's decoder can follow: such a payload
    or state comes back as this, and the subtask holding it fails on its own, permanently.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class NotifyRoute:
    """A task-end webhook target that taskd adds by itself: a queue's default (``scope`` = the
    queue, for its tasks without a target of their own) or the operator's for every task
    (``scope`` = ``*``). ``taskd migrate`` writes them to ``taskd.notify_routes``."""

    scope: str
    url: str
    notify_on: tuple[str, ...]
