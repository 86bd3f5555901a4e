"""Request and response bodies of the HTTP API, and the prompt x variables expansion."""

from __future__ import annotations

import itertools
import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from taskd.errors import InvalidInput
from taskd.queue.accounts import MAX_QUOTA
from taskd.queue.submission import MAX_SUBTASKS
from taskd.settings import QUEUE_NAME_PATTERN

VARIABLE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# The expanded payloads are held in memory before they are written: bound their total size.
MAX_EXPANDED_CHARS = 64 * 1024 * 1024
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")

Status = Literal["pending", "processing", "completed", "failed", "cancelled"]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
VariableValue = StrictStr | StrictInt | FiniteFloat
VariableName = Annotated[str, Field(pattern=VARIABLE_NAME_PATTERN)]


def _clean_text(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} must be valid Unicode (no unpaired surrogates)") from exc
    return value


class CreateTaskRequest(BaseModel):
    """``POST /v1/tasks``: either ``subtasks`` or ``prompts`` (+ ``variables``, ``batch_size``);
    for a kind with a template (``api.templates``), only ``variables`` (+ ``batch_size``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, description="a label for people")
    kind: str = Field(min_length=1, max_length=200,
                      description="the handler; one of the kinds this deployment allows")
    queue: str | None = Field(None, pattern=QUEUE_NAME_PATTERN,
                              description="defaults to the kind's configured queue")
    # Strict: JSON true, "5" or 5.0 is a wrong type, not a priority (pydantic would coerce).
    priority: StrictInt = Field(1, ge=-1000, le=1000, description="higher runs first")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="task-level parameters, stored as given")
    subtasks: list[dict[str, Any]] | None = Field(
        None, min_length=1, max_length=MAX_SUBTASKS,
        description="one JSON object per subtask",
    )
    prompts: list[Annotated[str, Field(min_length=1, max_length=20_000)]] | None = Field(
        None, min_length=1, max_length=MAX_SUBTASKS,
        description="one subtask per prompt and per combination of the variables' values",
    )
    variables: dict[VariableName, Annotated[list[VariableValue], Field(
        min_length=1, max_length=MAX_SUBTASKS)]] | None = Field(
        None, max_length=20,
        description="values filled into the prompts' {name} placeholders",
    )
    batch_size: StrictInt | None = Field(None, ge=1, le=1000,
                                         description="images per prompt subtask (default 1)")
    notify_url: str | None = Field(
        None, max_length=2000,
        description="a webhook told of the task's end (Standard Webhooks, signed): https, or "
                    "http to a private address when the server allows it; unset: the queue's "
                    "default target, if any (docs/notifications.md)",
    )
    notify_on: list[Literal["failed", "completed", "cancelled"]] | None = Field(
        None, min_length=1, max_length=3,
        description="which ends notify_url hears of; default [\"failed\"]",
    )
    unique_key: str | None = Field(
        None, min_length=1, max_length=200,
        description="while a task of yours holds this key, the same key returns that task "
                    "(200, replayed, no quota taken) instead of creating one")
    after: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(
        None, min_length=1, max_length=1000,
        description="ids of your tasks this one waits for: its subtasks run once every one "
                    "has completed; if one fails or is cancelled, so is this task")
    unique_scope: str | None = Field(
        None, min_length=1, max_length=100,
        description="how long a task holds its unique_key: unfinished (default: until it "
                    "ends), forever, or a period such as '1 hour'")

    @field_validator("name")
    @classmethod
    def _name_is_text(cls, value: str) -> str:
        return _clean_text(value, "name")

    @field_validator("prompts")
    @classmethod
    def _prompts_are_text(cls, value: list[str] | None) -> list[str] | None:
        for prompt in value or ():
            _clean_text(prompt, "prompts")
        return value

    def plan(self, template: list[str] | None = None) -> tuple[list[dict[str, Any]], int]:
        """The subtask payloads and the batch size. ``template``: the kind's prompts
        (``api.templates``), which the request fills with its variables. Raises
        :class:`InvalidInput`."""
        if template is not None:
            return self._plan_template(template)
        if (self.subtasks is None) == (self.prompts is None):
            raise InvalidInput("give either subtasks or prompts, not both and not neither",
                               field="subtasks")
        if self.subtasks is not None:
            if self.variables is not None:
                raise InvalidInput("variables need prompts", field="variables")
            if self.batch_size is not None:
                raise InvalidInput("batch_size needs prompts", field="batch_size")
            return self.subtasks, 1
        assert self.prompts is not None
        batch_size = self.batch_size or 1
        return expand_prompts(self.prompts, self.variables or {}, batch_size), batch_size

    def _plan_template(self, template: list[str]) -> tuple[list[dict[str, Any]], int]:
        for given in ("subtasks", "prompts"):
            if getattr(self, given) is not None:
                raise InvalidInput(
                    f"kind {self.kind!r} makes its subtasks from its template "
                    f"(api.templates.{self.kind}): give variables, not {given}", field=given)
        variables = self.variables or {}
        needed = dict.fromkeys(name for prompt in template
                               for name in _PLACEHOLDER.findall(prompt))
        missing = [name for name in needed if name not in variables]
        if missing:
            raise InvalidInput(
                f"the template of kind {self.kind!r} needs the variable {missing[0]!r} "
                f"(its placeholders: {', '.join(needed)})", field=f"variables.{missing[0]}")
        batch_size = self.batch_size or 1
        return expand_prompts(template, variables, batch_size), batch_size


def expand_prompts(
    prompts: list[str], variables: dict[str, list[Any]], batch_size: int
) -> list[dict[str, Any]]:
    """One payload per prompt x combination of the values of the variables it uses,
    ``{name}`` placeholders filled: a prompt is multiplied only by the variables it names.

    Placeholders without a variable stay as written. Each payload's ``variables`` holds the
    values filled into it (present, maybe empty, whenever the request has variables).
    Raises :class:`InvalidInput` for a variable that no prompt uses, and when the expansion
    exceeds 100,000 subtasks or 64 Mi characters.
    """
    named = [set(_PLACEHOLDER.findall(prompt)) for prompt in prompts]
    used = [[name for name in variables if name in names] for names in named]
    unused = [name for name in variables if not any(name in names for names in used)]
    if unused:
        raise InvalidInput(
            f"variable {unused[0]!r} is used by no prompt (no {{{unused[0]}}} placeholder)",
            field=f"variables.{unused[0]}",
        )
    count = sum(math.prod(len(variables[name]) for name in names) for names in used)
    if count > MAX_SUBTASKS:
        raise InvalidInput(
            f"prompts x variables expand to {count} subtasks; at most {MAX_SUBTASKS}",
            field="variables" if variables else "prompts",
        )
    payloads: list[dict[str, Any]] = []
    size = 0
    for prompt, names in zip(prompts, used, strict=True):
        for combo in itertools.product(*(variables[name] for name in names)):
            values = dict(zip(names, combo, strict=True))
            text = _PLACEHOLDER.sub(
                lambda m, v=values: str(v[m[1]]) if m[1] in v else m[0],  # type: ignore[misc]
                prompt,
            )
            size += len(text) + 64
            if size > MAX_EXPANDED_CHARS:
                raise InvalidInput(
                    f"the expanded prompts exceed {MAX_EXPANDED_CHARS} characters",
                    field="prompts",
                )
            payload: dict[str, Any] = {"prompt": text, "batch_size": batch_size}
            if variables:
                payload["variables"] = values
            payloads.append(payload)
    return payloads


class TaskPatch(BaseModel):
    """``PATCH /v1/tasks/{id}``: what may change after submit."""

    model_config = ConfigDict(extra="forbid")

    # Strict, as at create: true, "5" or 5.0 is a wrong type, not a priority.
    priority: StrictInt = Field(ge=-1000, le=1000, description="higher runs first; the "
                                "task's pending subtasks move in the claim order at once")


class Progress(BaseModel):
    total: int
    completed: int
    failed: int
    cancelled: int
    percent: float = Field(description="finished subtasks (any outcome) / total x 100")


class TaskSummaryOut(BaseModel):
    id: int
    name: str
    kind: str
    queue: str
    status: Status
    priority: int
    user_id: str | None
    params: dict[str, Any]
    progress: Progress
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class TaskOut(TaskSummaryOut):
    running: int = Field(description="subtasks processing now")
    batch_size: int
    total_images: int = Field(description="subtasks x batch_size")
    results: list[Any] = Field(description="results of the first 100 completed subtasks, in "
                                           "subtask order; the rest via /subtasks")
    error: str | None = Field(description="the latest failed subtask's error")
    result_urls: list[str | None] = Field(
        description="the image URL of each of the first 1,000 subtasks, in subtask order: a "
                    "completed subtask's result.image_url, null where there is none (not "
                    "finished, failed, no URL); all of them: taskd.task_result_urls(id) in SQL")


class TaskCreated(TaskOut):
    replayed: bool = Field(description="true: the Idempotency-Key named an earlier task")
    quota_remaining: int | None = Field(description="after this request; null on a replay")


class TaskList(BaseModel):
    items: list[TaskSummaryOut]
    total: int = Field(description="tasks matching the filters, on every page")
    next_cursor: str | None = Field(description="pass as cursor for the next page")


class SubtaskOut(BaseModel):
    id: int
    status: Status
    payload: dict[str, Any]
    result: Any
    error: str | None
    attempt: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


class SubtaskList(BaseModel):
    items: list[SubtaskOut]
    total: int
    next_cursor: str | None


class CancelOut(BaseModel):
    id: int
    cancelled: int = Field(description="pending subtasks now cancelled")
    stopping: int = Field(description="running subtasks asked to stop")


class RetryOut(BaseModel):
    id: int
    retried: int = Field(description="failed subtasks back to pending")
    quota_taken: int = Field(description="quota taken again because the task had been refunded")


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    is_member: StrictBool
    quota_remaining: StrictInt = Field(ge=0, le=MAX_QUOTA)


class AccountOut(BaseModel):
    user_id: str
    is_member: bool
    quota_remaining: int
    created: bool = Field(description="true when this request created the account")
    created_at: datetime
    updated_at: datetime


class QueueStatus(BaseModel):
    concurrency: int = Field(description="sum of live executors' concurrency limits")
    running: int = Field(description="subtasks live executors report running")
    pending: int = Field(description="ready to run now")
    scheduled: int = Field(description="pending with a later run_after (retries)")
    processing: int = Field(description="claimed subtasks, from the database")
    oldest_pending_seconds: float | None
    paused: bool = Field(False, description="paused: claims nothing (POST /v1/queues/{q}/resume)")
    rate_limit: str | None = Field(None, description='starts per window, e.g. "20/s"; null: none')
    waiting_on_dependencies: int = Field(
        0, description="unfinished tasks that wait for other tasks to complete (after)")
    unique_duplicates: int = Field(
        0, description="submissions a unique_key turned into the existing task, in all")


class QueueControlOut(BaseModel):
    queue: str
    paused: bool = Field(description="claims nothing on any executor while true")
    paused_at: datetime | None
    paused_by: str | None = Field(description="who paused it: an admin's user id, a role")
    resumed_at: datetime | None
    rate_limit: str | None = Field(description='starts per window, e.g. "20/s"; null: none')
    rate_window_used: int = Field(description="starts counted in the period that ends now")
    changed: bool | None = Field(
        None, description="pause / resume: false when it already was paused / running")


class DatabaseStatus(BaseModel):
    status: Literal["ok"]
    latency_ms: float
    server_version: str


class ProcessingRate(BaseModel):
    window_seconds: float
    completed: int
    failed: int
    completed_per_second: float
    failed_per_second: float


class StatusOut(BaseModel):
    health: Literal["ok", "degraded"] = Field(
        description="degraded: no live executor is running (one whose heartbeat is older "
                    "than executor_dead_after is not live)")
    version: str
    uptime_seconds: float = Field(description="of this API process")
    database: DatabaseStatus
    executors: dict[str, int] = Field(description="executors by the status their row records")
    queues: dict[str, QueueStatus]
    tasks: dict[str, int] = Field(description="tasks by status (every status is a key)")
    subtasks: dict[str, int] = Field(
        description="subtasks by status (every status is a key): pending and processing "
                    "counted from the rows, the finished from their tasks' counters")
    processing_rate: ProcessingRate


class HealthOut(BaseModel):
    status: Literal["ok"]
