"""``taskd migrate``."""

from __future__ import annotations

import psycopg
import typer

from taskd.cli.app import app, err_console, run_async, settings_of
from taskd.queue import migrations
from taskd.queue.connection import translated_errors
from taskd.queue.database import database_url


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Apply the schema migrations that are missing, and the limits the database enforces.

    Idempotent, and safe to run from several hosts at once: migrators take turns under an
    advisory lock and a later one finds nothing left to do. It also writes max_payload_bytes
    (TASKD_MAX_PAYLOAD_BYTES) to taskd.limits: taskd.submit_task enforces it on every caller.
    Run it again after changing that setting.
    """
    settings = settings_of(ctx)

    async def go() -> list[migrations.Migration]:
        async with translated_errors():
            conn = await psycopg.AsyncConnection.connect(
                database_url(settings), autocommit=True, application_name="taskd-migrate"
            )
            async with conn:
                return await migrations.migrate(
                    conn, max_payload_bytes=settings.max_payload_bytes)

    applied = run_async(go)
    err_console.print(f"limits: max_payload_bytes = {settings.max_payload_bytes}")
    if applied:
        for m in applied:
            err_console.print(f"applied {m.version:04d}_{m.name}")
    else:
        err_console.print(f"schema is up to date (version {migrations.latest_version()})")
