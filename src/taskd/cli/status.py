"""``taskd status`` and ``taskd errors``: the operators' view, read from the database so it
sees every executor on every host."""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import UTC
from typing import Any

import anyio
import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from taskd.cli.app import app, err_console, open_store, out_console, run_async, settings_of
from taskd.errors import DatabaseError
from taskd.queue.health import CLAIM_INDEX
from taskd.queue.status import (
    ErrorRow,
    QueueRow,
    StatusReport,
    list_errors,
    read_status,
)
from taskd.settings import Settings

EXIT_HEALTHY = 0
EXIT_ATTENTION = 1
EXIT_UNREACHABLE = 2


def format_age(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``, ``3d04h``; ``-`` for none."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def render_status(report: StatusReport) -> RenderableType:
    """The report as rich tables: executors, queues, errors, database, then any problems."""
    executors = Table(title="executors", title_justify="left", expand=False)
    for column in ("id", "host", "pid", "status", "heartbeat", "leases"):
        executors.add_column(column, justify="right" if column in ("pid", "leases") else "left")
    executors.add_column("queues (running/limit)")
    for e in report.executors:
        style = "" if e.alive else "red"
        slots = ", ".join(
            f"{name} {s.running}/{'-' if s.limit is None else s.limit}"
            for name, s in e.queues.items()
        )
        executors.add_row(
            e.id, e.hostname, str(e.pid), e.status if e.alive or e.status != "running"
            else "running (stale)", format_age(e.heartbeat_age_seconds) + " ago",
            str(e.leases), slots or "-", style=style,
        )
    queues = Table(title="queues", title_justify="left")
    queues.add_column("queue")
    for column in ("ready", "scheduled", "processing", "done 1h", "failed 1h",
                   "per min 1/5/15m", "oldest unstarted"):
        queues.add_column(column, justify="right")
    queues.add_column("served by (group: live executors)")
    queues.add_column("control")
    for q in report.queues:
        r = q.rate_per_minute
        queues.add_row(
            q.queue, str(q.ready), str(q.scheduled), str(q.processing),
            str(q.completed_last_hour), str(q.failed_last_hour),
            f"{r['1m']:.1f} / {r['5m']:.1f} / {r['15m']:.1f}",
            format_age(q.oldest_unstarted_seconds), _served_by(report, q) or "nobody",
            queue_control(q), style="yellow" if q.paused else "",
        )
    parts: list[RenderableType] = [executors, queues, render_errors(report.errors, "errors (24h)")]
    if report.schedules:
        parts.append(render_schedules(report))
    parts.append(Text(f"tasks: {_counts(report.tasks)}; subtasks: {_counts(report.subtasks)}"))
    n = report.notifications
    oldest = n["oldest_undelivered_seconds"]
    parts.append(Text(
        f"notifications: {n['undelivered']} undelivered"
        + (f" (oldest {format_age(float(oldest))})" if oldest is not None else "")
        + f", {n['dead']} dead", style="red" if n["dead"] else ""))
    db = report.database
    parts.append(Text(
        f"database: PostgreSQL {db.server_version}, {format_bytes(db.size_bytes)}, "
        f"{db.connections}/{db.max_connections} connections, oldest transaction "
        f"{format_age(db.oldest_transaction_seconds)}, "
        f"{db.subtasks_dead_tuples if db.subtasks_dead_tuples is not None else '-'} dead "
        f"tuples in subtasks, schema version {db.schema_version}"
    ))
    parts.append(render_storage(report))
    if report.problems:
        parts.extend(Text(f"attention: {p.message}", style="bold red") for p in report.problems)
    else:
        parts.append(Text("healthy", style="green"))
    return Group(*parts)


def render_storage(report: StatusReport) -> RenderableType:
    """taskd's tables (row versions, heap and index sizes, vacuums), busiest first, and the
    database's sessions by state."""
    table = Table(title="storage", title_justify="left")
    table.add_column("table")
    for column in ("live", "dead", "heap", "indexes", "claim index", "since vacuum",
                   "vacuums"):
        table.add_column(column, justify="right")
    tables = sorted(report.storage.tables.values(),
                    key=lambda t: (-(t.live_tuples + t.dead_tuples), t.table))
    for t in tables:
        claim = t.indexes.get(CLAIM_INDEX)
        table.add_row(
            t.table, str(t.live_tuples), str(t.dead_tuples), format_bytes(t.size_bytes),
            format_bytes(sum(t.indexes.values())),
            "-" if claim is None else format_bytes(claim),
            format_age(t.vacuum_age_seconds), str(t.vacuums),
            style="yellow" if t.dead_tuples > max(10_000, t.live_tuples) else "",
        )
    sessions = ", ".join(f"{n} {state}" for state, n in sorted(report.storage.connections.items()))
    return Group(table, Text(f"sessions: {sessions or '-'}"))


def queue_control(q: QueueRow) -> str:
    """``PAUSED by ops (since 12:03:04)``, ``rate 20/s (17 this window)``,
    ``3 waiting on dependencies``, ``12 unique duplicates``, those that apply, or ``-``."""
    parts = []
    if q.paused:
        since = f" since {q.paused_at:%Y-%m-%d %H:%M:%S}" if q.paused_at else ""
        parts.append(f"PAUSED by {q.paused_by or '?'}{since}")
    if q.rate_limit:
        parts.append(f"rate {q.rate_limit} ({q.rate_window_used} this window)")
    if q.waiting_on_dependencies:
        parts.append(f"{q.waiting_on_dependencies} waiting on dependencies")
    if q.unique_duplicates:
        parts.append(f"{q.unique_duplicates} unique duplicates")
    return "; ".join(parts) or "-"


def render_schedules(report: StatusReport) -> Table:
    """Each schedule: state, last and next tick (UTC), and its last task's outcome."""
    table = Table(title="schedules", title_justify="left")
    for column in ("name", "cron", "state", "last tick (UTC)", "next tick (UTC)", "last task"):
        table.add_column(column)
    for s in report.schedules:
        last_task = ("-" if s.last_task_id is None
                     else f"{s.last_task_id} {s.last_task_status or 'deleted'}")
        table.add_row(
            s.name, f"{s.cron} ({s.timezone})", "enabled" if s.enabled else "paused",
            "-" if s.last_tick is None else f"{s.last_tick:%Y-%m-%d %H:%M:%S}",
            "-" if s.next_tick is None else f"{s.next_tick.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            last_task)
    return table


def _served_by(report: StatusReport, queue: QueueRow) -> str:
    """``default: 1, gpu: 2``: per group, how many live executors serve ``queue``."""
    group_of = {e.id: e.group for e in report.executors}
    return ", ".join(f"{g}: {sum(1 for e in queue.executors if group_of.get(e) == g)}"
                     for g in queue.groups)


def _counts(by_status: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in by_status.items())


def render_errors(errors: list[ErrorRow], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("count", justify="right")
    for column in ("type", "message", "queue", "last seen (UTC)"):
        table.add_column(column)
    for e in errors:
        # Text, not markup: a message's own "[...]" must show as written.
        table.add_row(str(e.count), e.error_type, Text(e.message), e.queue or "-",
                      f"{e.last_occurred_at:%Y-%m-%d %H:%M:%S}")
    return table


def exit_code(report: StatusReport) -> int:
    return EXIT_HEALTHY if report.healthy else EXIT_ATTENTION


@app.command()
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(
        False, "--json",
        help="print one JSON object (shape in docs/operations.md); with --watch, one per line",
    ),
    watch: bool = typer.Option(False, "--watch", "-w", help="refresh until Ctrl-C"),
    interval: float = typer.Option(
        2.0, "--interval", min=0.1, help="seconds between refreshes with --watch"
    ),
) -> None:
    """Show executors, queues, recent errors and the database, across every host.

    Per queue it shows which executor groups, and how many live executors of each, serve it
    (a daemon serves the queues whose queues.<name>.groups name its executor_group, or all
    of them when a queue names none). Tasks and subtasks are counted by status.

    Exit code: 0 healthy; 1 when something needs attention (unfinished work and no live
    executor serving its queue, or a dead executor still holding leases); 2 when the database
    cannot be reached.
    """
    settings = settings_of(ctx)
    if watch:
        raise typer.Exit(_watch(settings, as_json=as_json, interval=interval))

    async def once() -> StatusReport:
        async with open_store(settings) as store:
            return await read_status(store, dead_after=settings.executor_dead_after)

    report = run_async(once)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        out_console().print(render_status(report))
    raise typer.Exit(exit_code(report))


def _watch(settings: Settings, *, as_json: bool, interval: float) -> int:
    """Show the status every ``interval`` seconds until Ctrl-C; the last refresh's exit code."""
    dead_after = settings.executor_dead_after
    last_code = EXIT_HEALTHY

    async def loop() -> None:
        nonlocal last_code
        console = out_console()
        async with open_store(settings) as store:
            live = None if as_json else Live(console=console, auto_refresh=False)
            with contextlib.ExitStack() as stack:
                if live is not None:
                    stack.enter_context(live)
                while True:
                    try:
                        report = await read_status(store, dead_after=dead_after)
                    except DatabaseError as exc:
                        # Keep watching: the pool reconnects when the database is back.
                        last_code = EXIT_UNREACHABLE
                        err_console.print(f"taskd: error: {exc}", markup=False)
                    else:
                        last_code = exit_code(report)
                        if as_json:
                            sys.stdout.write(json.dumps(report.to_json()) + "\n")
                            sys.stdout.flush()
                        else:
                            assert live is not None
                            live.update(render_status(report), refresh=True)
                    await anyio.sleep(interval)

    # Ctrl-C ends the watch; the exit code is the last refresh's.
    with contextlib.suppress(KeyboardInterrupt):
        run_async(loop)
    return last_code


@app.command()
def errors(
    ctx: typer.Context,
    queue: str | None = typer.Option(None, "--queue", help="only errors of this queue"),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="how many to show"),
    traces: bool = typer.Option(False, "--traces", help="print each error's latest stack trace"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list for scripts"),
) -> None:
    """Show errors aggregated by type and message (error_logs), newest first."""
    settings = settings_of(ctx)

    async def go() -> list[ErrorRow]:
        async with open_store(settings) as store:
            return await list_errors(store, queue=queue, limit=limit)

    rows = run_async(go)
    if as_json:
        payload: list[dict[str, Any]] = [
            {"error_type": e.error_type, "message": e.message, "count": e.count,
             "queue": e.queue, "kind": e.kind,
             "first_occurred_at": e.first_occurred_at.isoformat(),
             "last_occurred_at": e.last_occurred_at.isoformat(),
             "stack_trace": e.stack_trace}
            for e in rows
        ]
        typer.echo(json.dumps(payload, indent=2))
        return
    console = out_console()
    console.print(render_errors(rows, "errors, newest first"))
    if traces:
        for e in rows:
            if e.stack_trace:
                console.rule(Text(f"{e.error_type}: {e.message}"))
                console.print(e.stack_trace, markup=False, highlight=False)
