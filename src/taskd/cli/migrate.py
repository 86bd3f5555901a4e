"""``taskd migrate``."""

from __future__ import annotations

import psycopg
import typer

from taskd.cli.app import (
    CONNECT_TIMEOUT,
    app,
    configure_logging,
    run_async,
    settings_of,
)
from taskd.queue import migrations
from taskd.queue.connection import check_connect, connection_kwargs, translated_errors
from taskd.queue.database import database_url
from taskd.queue.store import when_available


@app.command()
def migrate(
    ctx: typer.Context,
    wait: bool = typer.Option(
        False, "--wait", help="while the database is unavailable (no server answers, no free "
        "connection slot, starting up), try again with backoff instead of exiting 2; bad "
        "credentials or a missing database still exit 2 (the unit's ExecStartPre uses it)"),
) -> None:
    """Apply the schema migrations that are missing, and the limits the database enforces.

    Idempotent, and safe to run from several hosts at once: migrators take turns under an
    advisory lock and a later one finds nothing left to do. It also writes max_payload_bytes
    (TASKD_MAX_PAYLOAD_BYTES) to taskd.limits: taskd.submit_task enforces it on every caller;
    and the notification settings: notifications.allow_http_private, each queue's notify_url
    (a default target) and notifications.operator_url (the operator's, for every task).
    Run it again after changing those settings.
    """
    settings = settings_of(ctx)
    options = migrations.migrate_options(settings)
    if wait:
        configure_logging(settings)

    async def once() -> list[migrations.Migration]:
        url = database_url(settings)
        kwargs = connection_kwargs(url, "taskd-migrate", None, pooler=settings.database_pooler)
        await check_connect(url, kwargs, CONNECT_TIMEOUT)  # classifies a refusal
        async with translated_errors():
            conn = await psycopg.AsyncConnection.connect(url, **kwargs)
            async with conn:
                return await migrations.migrate(conn, **options)

    async def go() -> list[migrations.Migration]:
        if not wait:
            return await once()
        applied = await when_available(once, connect_timeout=CONNECT_TIMEOUT)
        assert applied is not None  # None only with a stop event
        return applied

    applied = run_async(go)
    for m in applied:
        typer.echo(f"applied {m.version:04d}_{m.name}")
    typer.echo(f"limits: max_payload_bytes = {settings.max_payload_bytes}")
    typer.echo("notifications: allow_http_private = "
               f"{str(settings.notifications.allow_http_private).lower()}, routes = "
               + (", ".join(f"{r.scope} -> {r.url}" for r in options["notify_routes"]) or "none"))
    typer.echo(f"schema is up to date (version {migrations.latest_version()})")
