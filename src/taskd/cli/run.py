"""``taskd run`` and ``taskd submit``."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import typer

from taskd.cli.app import (
    app,
    configure_logging,
    err_console,
    open_store,
    run_async,
    settings_of,
)
from taskd.errors import InvalidInput
from taskd.queue.store import Store
from taskd.queue.tasks import first_failure
from taskd.settings import DEFAULT_MAX_ATTEMPTS


@app.command()
def run(ctx: typer.Context) -> None:
    """Run the executor daemon: claim subtasks of the configured queues and run their handlers.

    Runs until SIGTERM or SIGINT: then it stops claiming, lets running handlers finish for
    shutdown_grace seconds, gives back what is still running, and exits 0. A second signal
    exits at once. Under systemd (Type=notify) it reports READY, WATCHDOG and STOPPING.
    """
    settings = settings_of(ctx)
    configure_logging(settings)
    from taskd.executor.daemon import Daemon
    from taskd.executor.tracing import load_tracing

    daemon = Daemon(settings, own_process=True, tracing=load_tracing(settings))
    code = run_async(daemon.run)
    sys.exit(code)


@app.command()
def submit(
    ctx: typer.Context,
    queue: str = typer.Option("standard", "--queue", "-q", help="queue to put the task on"),
    kind: str = typer.Option("noop", "--kind", "-k", help="handler kind, e.g. noop, sleep"),
    priority: int = typer.Option(0, "--priority", "-p", help="-1000..1000; higher runs first"),
    payload: str = typer.Option("{}", "--payload", help="JSON object given to each subtask"),
    count: int = typer.Option(1, "--count", "-n", help="how many subtasks (1..100000)"),
    name: str = typer.Option("", "--name", help="a label for the task"),
    max_attempts: int | None = typer.Option(
        None, "--max-attempts",
        help="runs per subtask, the first included (1 + retries); default: the queue's "
        f"max_attempts setting ({DEFAULT_MAX_ATTEMPTS} unless set)"
    ),
    wait: bool = typer.Option(False, "--wait", help="show progress until the task finishes"),
    notify_url: str | None = typer.Option(
        None, "--notify-url", help="a webhook told of the task's end, signed per Standard "
        "Webhooks: https, or http to a private address when notifications.allow_http_private "
        "is on; unset: the queue's default target, if any"),
    notify_on: list[str] | None = typer.Option(
        None, "--notify-on", help="an end --notify-url hears of: failed (the default), "
        "completed, cancelled; repeat for several"),
    unique_key: str | None = typer.Option(
        None, "--unique-key", help="1 to 200 characters: while a task holds this key, print "
        "its id instead of creating another (see --unique-scope)"),
    unique_scope: str | None = typer.Option(
        None, "--unique-scope", help="how long a task holds its --unique-key: unfinished "
        "(default: until it ends), forever, or a period such as '1 hour'"),
    after: list[int] = typer.Option(
        [], "--after", help="a task id this task waits for (repeat for more): its subtasks run "
        "once every one has completed; if one fails or is cancelled, so is this task"),
) -> None:
    """Submit one task of COUNT subtasks, each with PAYLOAD; print the task id.

    Example: taskd submit --queue standard --kind sleep --payload '{"ms": 200}' --count 50 --wait

    Told when it fails: taskd submit --kind sleep --notify-url https://hooks.example/taskd
    With --unique-key, a task that holds the key is not submitted again: its id is printed.
    """
    settings = settings_of(ctx)
    try:
        body: Any = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # also too deep, or an int of 4,300+ digits
        raise InvalidInput(f"--payload is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("--payload must be a JSON object")
    if not 1 <= count <= 100_000:
        raise InvalidInput(f"--count {count} is outside 1..100000")
    queue_settings = settings.queues.get(queue)
    if max_attempts is not None:
        attempts = max_attempts  # 0 too is checked (and refused), not replaced by the default
    else:
        attempts = queue_settings.max_attempts if queue_settings else DEFAULT_MAX_ATTEMPTS

    async def go() -> str:
        async with open_store(settings) as store:
            task_id = await store.submit(
                queue, kind, [body] * count, name=name, priority=priority,
                max_attempts=attempts, max_payload_bytes=settings.max_payload_bytes,
                notify_url=notify_url, notify_on=notify_on or None,
                unique_key=unique_key, unique_scope=unique_scope, after=after or None,
            )
            typer.echo(task_id)
            if not wait:
                return "submitted"
            return await _wait(store, task_id, count)

    status = run_async(go)
    if status not in ("submitted", "completed"):
        sys.exit(1)


async def _why_failed(store: Store, task_id: int) -> str:
    """``N of M subtasks failed; the first (subtask S): <error>`` for a failed task."""
    task = await store.get_task(task_id)
    failure = await first_failure(store, task_id)
    counts = f"{task.failed} of {task.total} subtasks failed" if task is not None else ""
    if failure is None:
        return counts
    subtask_id, error = failure
    return f"{counts}; the first (subtask {subtask_id}): {error or 'no error recorded'}"


async def _wait(store: Store, task_id: int, total: int) -> str:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("task {task.fields[task_id]} {task.fields[status]}"), BarColumn(),
                  MofNCompleteColumn(), transient=False) as progress:
        bar = progress.add_task("task", total=total, task_id=task_id, status="pending")
        while True:
            task = await store.get_task(task_id)
            if task is None:
                return "missing"
            done = task.completed + task.failed + task.cancelled
            progress.update(bar, completed=done, status=task.status)
            if task.status in ("completed", "failed", "cancelled"):
                break
            await anyio.sleep(0.2)
    if task.status == "failed":
        err_console.print(f"task {task_id} failed: {await _why_failed(store, task_id)}",
                          markup=False)
    return str(task.status)
