"""``taskd notifications list|retry|secret``: the task-end webhooks' outbox from a shell."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import StrEnum
from typing import Any

import typer
from rich.table import Table

from taskd.cli.app import app, open_store, out_console, run_async, settings_of
from taskd.errors import InvalidInput
from taskd.executor.dispatcher import target_secret
from taskd.queue.notifications import (
    NotificationRow,
    list_notifications,
    redeliver_notifications,
)

notifications_app = typer.Typer(
    name="notifications",
    help="Task-end webhooks: list the outbox, redeliver dead ones, print a target's secret "
    "(docs/notifications.md).",
    no_args_is_help=True, rich_markup_mode=None,
)
app.add_typer(notifications_app)


class StatusChoice(StrEnum):
    pending = "pending"
    delivered = "delivered"
    dead = "dead"


def notification_json(n: NotificationRow) -> dict[str, Any]:
    data = asdict(n)
    for key in ("run_after", "created_at", "delivered_at"):
        data[key] = data[key].isoformat() if data[key] is not None else None
    return data


@notifications_app.command("list")
def list_command(
    ctx: typer.Context,
    status: StatusChoice | None = typer.Option(
        None, "--status", help="pending (undelivered, still tried), delivered or dead"),
    task: int | None = typer.Option(None, "--task", help="only this task's"),
    limit: int = typer.Option(50, "--limit", min=1, max=10000, help="how many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list for scripts"),
) -> None:
    """List notifications, newest first, with their attempts and last answer or error."""
    settings = settings_of(ctx)

    async def go() -> list[NotificationRow]:
        async with open_store(settings) as store:
            return await list_notifications(
                store, status=status.value if status else None, task_id=task, limit=limit)

    rows = run_async(go)
    if as_json:
        typer.echo(json.dumps([notification_json(n) for n in rows], indent=2))
        return
    table = Table(title="notifications, newest first", title_justify="left")
    for column in ("id", "task", "event", "status", "attempts", "url", "last answer",
                   "next try / delivered (UTC)"):
        table.add_column(column, justify="right" if column in ("id", "task", "attempts")
                         else "left")
    for n in rows:
        answer = n.last_error or (str(n.last_status_code) if n.last_status_code else "-")
        when = n.delivered_at if n.status == "delivered" else (
            n.run_after if n.status == "pending" else None)
        table.add_row(str(n.id), str(n.task_id), n.event, n.status, str(n.attempts), n.url,
                      answer, f"{when:%Y-%m-%d %H:%M:%S}" if when else "-")
    out_console().print(table)


@notifications_app.command("retry")
def retry_command(
    ctx: typer.Context,
    ids: list[int] | None = typer.Argument(None, help="ids of dead notifications"),
    task: int | None = typer.Option(None, "--task", help="every dead notification of this task"),
    all_dead: bool = typer.Option(False, "--all-dead", help="every dead notification"),
) -> None:
    """Redeliver dead notifications: due now, with a fresh retry window. Prints how many.

    Example: taskd notifications retry --all-dead
    """
    if not ids and task is None and not all_dead:
        raise InvalidInput("name notifications to retry: ids, --task ID or --all-dead")
    settings = settings_of(ctx)

    async def go() -> list[int]:
        async with open_store(settings) as store:
            return await redeliver_notifications(store, ids=ids or None, task_id=task)

    retried = run_async(go)
    typer.echo(f"{len(retried)} dead notifications due again"
               + (f": {', '.join(map(str, retried[:20]))}" if retried else ""))


@notifications_app.command("secret")
def secret_command(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="the target's notify_url, exactly as submitted"),
) -> None:
    """Print the Standard Webhooks secret (whsec_...) that signs deliveries to URL, for the
    receiver to verify them: notifications.secrets[URL], else derived from
    notifications.signing_key. Exit 2 when neither is set."""
    settings = settings_of(ctx)
    n = settings.notifications
    secret = target_secret(
        url, n.signing_key.get_secret_value() if n.signing_key else None,
        {u: s.get_secret_value() for u, s in n.secrets.items()})
    if secret is None:
        raise InvalidInput("no secret: set notifications.signing_key "
                           "(TASKD_NOTIFICATIONS__SIGNING_KEY) or notifications.secrets")
    typer.echo(secret)
