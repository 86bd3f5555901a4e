"""``taskd migrate``."""

from __future__ import annotations

import psycopg
import typer

from taskd.cli.app import app, run_async, settings_of
from taskd.queue import migrations
from taskd.queue.connection import translated_errors
from taskd.queue.database import database_url


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Apply the schema migrations that are missing.

    Idempotent, and safe to run from several hosts at once: migrators take turns under an
    advisory lock and a later one finds nothing left to do.
    """
    settings = settings_of(ctx)

    async def go() -> list[migrations.Migration]:
        async with translated_errors():
            conn = await psycopg.AsyncConnection.connect(
                database_url(settings), autocommit=True, application_name="taskd-migrate"
            )
            async with conn:
                return await migrations.migrate(conn)

    applied = run_async(go)
    for m in applied:
        typer.echo(f"applied {m.version:04d}_{m.name}")
    typer.echo(f"schema is up to date (version {migrations.latest_version()})")
