"""``taskd status``: the operators' view, read from the database so it sees every host."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from taskd.cli.app import app, open_store, run_async, settings_of


@app.command()
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object for scripts"),
) -> None:
    """Show executors and queues on every host, from the database."""
    settings = settings_of(ctx)

    async def go() -> dict[str, Any]:
        async with open_store(settings) as store:
            return await store.overview()

    report = run_async(go)
    if as_json:
        typer.echo(json.dumps(report, default=str, indent=2))
        return
    console = Console()
    executors = Table(title="executors")
    for column in ("id", "host", "status", "heartbeat age", "concurrency", "running"):
        executors.add_column(column)
    for e in report["executors"]:
        executors.add_row(
            e["id"], e["hostname"], e["status"], f"{e['heartbeat_age_seconds']:.1f}s",
            json.dumps(e["concurrency"]), json.dumps(e["running"]),
        )
    queues = Table(title="queues")
    for column in ("queue", "ready", "scheduled", "processing", "oldest pending"):
        queues.add_column(column)
    for q in report["queues"]:
        age = q["oldest_pending_seconds"]
        queues.add_row(q["queue"], str(q["ready"]), str(q["scheduled"]), str(q["processing"]),
                       "-" if age is None else f"{age:.1f}s")
    console.print(executors)
    console.print(queues)
