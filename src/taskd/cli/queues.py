"""``taskd queues list|pause|resume``: queue controls from a shell, for the whole fleet."""

from __future__ import annotations

import getpass
import json

import typer
from rich.table import Table

from taskd.cli.app import app, open_store, out_console, run_async, settings_of
from taskd.queue.controls import (
    MAX_PAUSED_BY,
    QueueControl,
    list_queue_controls,
    pause_queue,
    resume_queue,
)

queues_app = typer.Typer(
    name="queues",
    help="Pause, resume and list queues, for every executor at once.\n\n"
    "A paused queue claims nothing on any executor from the pause on: running subtasks "
    "finish, submissions are still accepted, and it stays paused across restarts until it "
    "is resumed. Rate limits are a queue setting (queues.<name>.rate_limit); `list` and "
    "`taskd status` show them.",
    no_args_is_help=True, rich_markup_mode=None,
)
app.add_typer(queues_app)


def _default_by() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        return "taskd-cli"


@queues_app.command("pause")
def pause_command(
    ctx: typer.Context,
    queue: str = typer.Argument(..., help="the queue to pause"),
    by: str | None = typer.Option(
        None, "--by", help=f"who pauses it, shown by status (default: your user name; at most "
        f"{MAX_PAUSED_BY} characters)"),
) -> None:
    """Pause a queue on every executor.

    Claims of it stop on every host from this command's return on (the claim statement reads
    the flag); subtasks already running finish; submissions are still accepted and wait.
    It stays paused across daemon restarts, and its waiting tasks do not time out meanwhile
    (pending_timeout runs again from the resume). Idempotent.

    Exit 1 for a queue that is neither in the settings nor known to the database (nothing is
    written); 2 when the database is unavailable.
    """
    settings = settings_of(ctx)
    who = by if by is not None else _default_by()

    async def go() -> bool:
        async with open_store(settings) as store:
            return await pause_queue(store, queue, by=who, configured=settings.queues)

    changed = run_async(go)
    typer.echo(f"queue {queue}: paused" + ("" if changed else " (it already was)"))


@queues_app.command("resume")
def resume_command(
    ctx: typer.Context, queue: str = typer.Argument(..., help="the queue to resume"),
) -> None:
    """Resume a paused queue: every executor is woken and claims from it at once.

    Exit 1 for an unknown queue; 2 when the database is unavailable. Idempotent.
    """
    settings = settings_of(ctx)

    async def go() -> bool:
        async with open_store(settings) as store:
            return await resume_queue(store, queue, configured=settings.queues)

    changed = run_async(go)
    typer.echo(f"queue {queue}: resumed" + ("" if changed else " (it was not paused)"))


def control_json(c: QueueControl) -> dict[str, object]:
    return {
        "queue": c.queue, "paused": c.paused,
        "paused_at": c.paused_at.isoformat() if c.paused_at else None,
        "paused_by": c.paused_by,
        "resumed_at": c.resumed_at.isoformat() if c.resumed_at else None,
        "rate_limit": c.rate_limit, "rate_window_used": c.rate_window_used,
    }


@queues_app.command("list")
def list_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="print a JSON list for scripts"),
) -> None:
    """List the queues the database knows (served by a daemon, or paused): paused or not,
    and each rate limit with the starts counted in its current window."""
    settings = settings_of(ctx)

    async def go() -> list[QueueControl]:
        async with open_store(settings) as store:
            return await list_queue_controls(store)

    controls = run_async(go)
    if as_json:
        typer.echo(json.dumps([control_json(c) for c in controls]))
        return
    table = Table(title="queues", title_justify="left")
    for column in ("queue", "state", "since (UTC)", "by", "rate limit", "this window"):
        table.add_column(column)
    for c in controls:
        table.add_row(
            c.queue, "PAUSED" if c.paused else "running",
            f"{c.paused_at:%Y-%m-%d %H:%M:%S}" if c.paused_at else "-", c.paused_by or "-",
            c.rate_limit or "-", str(c.rate_window_used) if c.rate_limit else "-",
            style="yellow" if c.paused else "",
        )
    out_console().print(table)
