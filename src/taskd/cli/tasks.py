"""``taskd tasks list|show|priority|retry|cancel``: look at and steer tasks from a shell."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from taskd.cli.app import app, err_console, open_store, out_console, run_async, settings_of
from taskd.errors import InvalidInput, TaskFinished, TaskNotFound
from taskd.queue.accounts import ApiStore
from taskd.queue.tasks import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    list_tasks,
    set_task_priority,
    subtask_counts,
    waits_for,
)
from taskd.types import Subtask, Task

tasks_app = typer.Typer(
    name="tasks", help="List, show, reprioritise, retry and cancel tasks.",
    no_args_is_help=True, rich_markup_mode=None,
)
app.add_typer(tasks_app)

EXIT_NOT_FOUND = 1
EXIT_ENDED = 1


class TaskStatusChoice(StrEnum):
    pending = "pending"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


def task_json(task: Task) -> dict[str, Any]:
    return {
        "id": task.id, "name": task.name, "queue": task.queue, "kind": task.kind,
        "priority": task.priority, "user_id": task.user_id, "status": task.status,
        "total": task.total, "completed": task.completed, "failed": task.failed,
        "cancelled": task.cancelled, "params": task.params,
        "created_at": task.created_at.isoformat(), "updated_at": task.updated_at.isoformat(),
        "completed_at": task.completed_at.isoformat() if task.completed_at else None,
    }


def subtask_json(s: Subtask) -> dict[str, Any]:
    return {
        "id": s.id, "status": s.status, "attempt": s.attempt, "max_attempts": s.max_attempts,
        "error": s.error, "locked_by": s.locked_by, "run_after": s.run_after.isoformat(),
        "started_at": s.started_at.isoformat() if s.started_at else None,
        "completed_at": s.completed_at.isoformat() if s.completed_at else None,
    }


def _not_found(task_id: int) -> typer.Exit:
    Console(stderr=True).print(f"taskd: error: no task {task_id}", markup=False)
    return typer.Exit(EXIT_NOT_FOUND)


@tasks_app.command("list")
def list_command(
    ctx: typer.Context,
    status: TaskStatusChoice | None = typer.Option(None, "--status", help="only this status"),
    queue: str | None = typer.Option(None, "--queue", help="only this queue"),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="how many, newest first"),
    before: int | None = typer.Option(None, "--before", help="only ids below this (paging)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list for scripts"),
) -> None:
    """List tasks, newest first."""
    settings = settings_of(ctx)

    async def go() -> list[Task]:
        async with open_store(settings) as store:
            return await list_tasks(
                store, status=status.value if status else None, queue=queue,
                before_id=before, limit=limit,
            )

    tasks = run_async(go)
    if as_json:
        typer.echo(json.dumps([task_json(t) for t in tasks], indent=2))
        return
    table = Table(title="tasks, newest first", title_justify="left")
    for column in ("id", "queue", "kind", "status", "done/failed/cancelled/total", "name",
                   "created (UTC)"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for t in tasks:
        table.add_row(str(t.id), t.queue, t.kind, t.status,
                      f"{t.completed}/{t.failed}/{t.cancelled}/{t.total}", Text(t.name or "-"),
                      f"{t.created_at:%Y-%m-%d %H:%M:%S}")
    out_console().print(table)


@tasks_app.command("show")
def show_command(
    ctx: typer.Context,
    task_id: int = typer.Argument(..., help="the task's id"),
    limit: int = typer.Option(20, "--limit", min=0, max=10000, help="subtasks to list"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object for scripts"),
) -> None:
    """Show a task, its subtasks by status, and its first subtasks. Exit 1 if there is none."""
    settings = settings_of(ctx)

    async def go() -> tuple[Task | None, dict[str, int], list[Subtask], list[int]]:
        async with open_store(settings) as store:
            task = await store.get_task(task_id)
            if task is None:
                return None, {}, [], []
            counts = await subtask_counts(store, task_id)
            subtasks = await store.list_subtasks(task_id, limit=limit) if limit else []
            return task, counts, subtasks, await waits_for(store, task_id)

    task, counts, subtasks, waiting_for = run_async(go)
    if task is None:
        raise _not_found(task_id)
    if as_json:
        typer.echo(json.dumps({**task_json(task), "subtasks_by_status": counts,
                               "waits_for": waiting_for,
                               "subtasks": [subtask_json(s) for s in subtasks]}, indent=2))
        return
    console = out_console()
    console.print(
        f"task {task.id} [bold]{task.status}[/bold]  queue={task.queue} kind={task.kind} "
        f"priority={task.priority} name={escape(task.name or '-')} user={task.user_id or '-'}",
        highlight=False,
    )
    console.print(
        f"created {task.created_at:%Y-%m-%d %H:%M:%S} UTC; subtasks: "
        + ", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False,
    )
    if waiting_for:
        console.print("waits for tasks " + ", ".join(map(str, waiting_for)), highlight=False)
    table = Table(title=f"subtasks (first {limit})", title_justify="left")
    for column in ("id", "status", "attempt", "locked by", "error"):
        table.add_column(column)
    for s in subtasks:
        table.add_row(str(s.id), s.status, f"{s.attempt}/{s.max_attempts}",
                      s.locked_by or "-", Text(s.error or ""))
    if subtasks:
        console.print(table)


# ignore_unknown_options: a negative priority ("-5") is the argument, not an option.
@tasks_app.command("priority", context_settings={"ignore_unknown_options": True})
def priority_command(
    ctx: typer.Context,
    task_id: int = typer.Argument(..., help="the task's id"),
    priority: int = typer.Argument(
        ..., help=f"the new priority, {MIN_PRIORITY}..{MAX_PRIORITY}; higher runs first"),
) -> None:
    """Change a task's priority; its pending subtasks move in the claim order at once.

    Example: taskd tasks priority 42 500 (or -5: negative numbers need no "--").
    Exit 1 when there is no such task or it has already ended, 2 for a priority outside
    -1000..1000.
    """
    settings = settings_of(ctx)
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:  # before connecting to anything
        raise InvalidInput(f"priority {priority} is outside {MIN_PRIORITY}..{MAX_PRIORITY}")

    async def go() -> int:
        async with open_store(settings) as store:
            return await set_task_priority(store, task_id, priority)

    try:
        moved = run_async(go)
    except TaskNotFound:
        raise _not_found(task_id) from None
    except TaskFinished as exc:
        err_console.print(f"taskd: error: {exc}", markup=False)
        raise typer.Exit(EXIT_ENDED) from None
    typer.echo(f"task {task_id}: priority {priority}, {moved} unfinished subtasks moved")


@tasks_app.command("retry")
def retry_command(
    ctx: typer.Context, task_id: int = typer.Argument(..., help="the task's id")
) -> None:
    """Put the task's failed subtasks back to pending with fresh attempts (no quota is taken,
    as when an admin retries through the API). Exit 1 when it has no failed subtasks."""
    settings = settings_of(ctx)

    async def go() -> int | None:
        async with open_store(settings) as store:
            if await store.get_task(task_id) is None:
                return None
            # NothingToRetry (exit 1) for a task without failed subtasks, as the API's 409.
            report = await ApiStore(store).retry_task(task_id, charge_user=False)
            return report.retried

    retried = run_async(go)
    if retried is None:
        raise _not_found(task_id)
    typer.echo(f"task {task_id}: {retried} failed subtasks back to pending")


@tasks_app.command("cancel")
def cancel_command(
    ctx: typer.Context, task_id: int = typer.Argument(..., help="the task's id")
) -> None:
    """Cancel the task's pending subtasks and ask its running ones to stop. Exit 1 when the
    task has already ended."""
    settings = settings_of(ctx)

    async def go() -> tuple[int, int] | None:
        async with open_store(settings) as store:
            if await store.get_task(task_id) is None:
                return None
            # TaskFinished (exit 1) for a task that has ended, as the API's 409.
            return await ApiStore(store).cancel_task(task_id)

    result = run_async(go)
    if result is None:
        raise _not_found(task_id)
    cancelled, requested = result
    typer.echo(f"task {task_id}: {cancelled} pending subtasks cancelled, "
               f"{requested} running subtasks asked to stop")
