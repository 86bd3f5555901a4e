"""``taskd handlers``: what handles each kind, and where it comes from."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from taskd.cli.app import app, out_console, settings_of
from taskd.handlers.registry import HandlerRegistry


@app.command()
def handlers(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object for scripts"),
) -> None:
    """List the handler of every kind: built-ins, entry points (group taskd.handlers), then the
    `handlers` setting; a later source replaces an earlier one for the same kind.

    Exits with code 2 naming the kind and the path when a handler does not import.
    """
    registry = HandlerRegistry.load(settings_of(ctx))
    rows = [
        {"kind": h.kind, "source": h.source, "origin": h.origin,
         "runs": "async" if h.is_async else "thread"}
        for h in registry.handlers()
    ]
    replaced = [
        {"kind": h.kind, "source": h.source, "origin": h.origin} for h in registry.overridden
    ]
    if as_json:
        typer.echo(json.dumps({"handlers": rows, "overridden": replaced}, indent=2))
        return
    table = Table(title="handlers")
    for column in ("kind", "source", "origin", "runs"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], row["source"], row["origin"], row["runs"])
    console = out_console()
    console.print(table)
    for row in replaced:
        console.print(
            f"{row['kind']}: {row['source']} {row['origin']} is overridden", markup=False
        )
