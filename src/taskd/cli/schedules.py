"""``taskd schedules list|add|pause|resume|delete|run-now``: cron schedules at run time."""

from __future__ import annotations

import json
from typing import Any

import typer
from pydantic import ValidationError
from rich.table import Table

from taskd.cli.app import app, open_store, out_console, run_async, settings_of
from taskd.errors import InvalidInput
from taskd.queue import schedules as sched
from taskd.settings import ScheduleSettings, describe_validation_error

schedules_app = typer.Typer(
    name="schedules",
    help="Cron schedules: each tick submits a task, exactly once across every daemon.\n\n"
    "A schedule is kept in the database: any daemon's ticker creates its ticks (schedules in "
    "the settings' [schedules.<name>] are written there when a daemon starts). See "
    "docs/schedules.md.",
    no_args_is_help=True, rich_markup_mode=None,
)
app.add_typer(schedules_app)


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}", field=what) from exc


def _when(value: Any) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S %Z}"


@schedules_app.command("list")
def list_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="print a JSON list for scripts"),
) -> None:
    """List the schedules: expression, state, last and next tick (by the database clock) and
    the last task's outcome."""
    settings = settings_of(ctx)

    async def go() -> list[sched.ScheduleRow]:
        async with open_store(settings) as store:
            return await sched.list_schedules(store)

    rows = run_async(go)
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in rows], indent=2))
        return
    table = Table(title="schedules", title_justify="left")
    for column in ("name", "cron", "timezone", "queue", "kind", "state", "missed",
                   "last tick", "next tick", "last task"):
        table.add_column(column)
    for r in rows:
        missed = r.missed if r.missed == "skip" else f"catch_up {r.catch_up}"
        last_task = ("-" if r.last_task_id is None
                     else f"{r.last_task_id} {r.last_task_status or 'deleted'}")
        table.add_row(r.name, r.cron, r.timezone, r.queue, r.kind,
                      "enabled" if r.enabled else "paused", missed, _when(r.last_tick),
                      _when(r.next_tick), last_task)
    out_console().print(table)


@schedules_app.command("add")
def add_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the schedule's name: ^[a-z][a-z0-9_.-]{0,62}$"),
    cron: str = typer.Argument(
        ..., help="5 fields (minute hour day-of-month month day-of-week), 6 fields (a sixth "
        "for seconds: '* * * * * *' ticks every second), or an alias: @hourly, @daily, "
        "@weekly, @monthly, @yearly"),
    kind: str = typer.Option(..., "--kind", help="the handler that runs each tick's task"),
    queue: str = typer.Option("standard", "--queue", help="the queue its tasks go to"),
    timezone: str = typer.Option("UTC", "--timezone", "--tz",
                                 help="IANA time zone the expression is read in"),
    payload: list[str] = typer.Option(
        [], "--payload", help="a subtask's payload as a JSON object; repeat for more "
        "(default: one empty payload)"),
    params: str = typer.Option("{}", "--params", help="the task's params, a JSON object"),
    priority: int = typer.Option(0, "--priority", help="-1000..1000; higher runs first"),
    max_attempts: int = typer.Option(4, "--max-attempts", help="runs of each subtask, 1..1000"),
    missed: str = typer.Option(
        "skip", "--missed", help="ticks missed while no daemon ran (later than "
        "schedule_grace): skip, or catch_up"),
    catch_up: int = typer.Option(1, "--catch-up", help="with --missed catch_up: at most this "
                                 "many of the latest missed ticks are created"),
    paused: bool = typer.Option(False, "--paused", help="create it paused"),
    replace: bool = typer.Option(False, "--replace", help="change an existing schedule's "
                                 "definition (its paused state is kept)"),
) -> None:
    """Create a schedule (or change one with --replace). Its first tick is the first after
    now. Exit 2 for an invalid expression, time zone or field (nothing written), 1 when it
    exists and --replace is not given.

    Example: taskd schedules add nightly-report '30 2 * * *' --tz Europe/Paris --kind report
    """
    settings = settings_of(ctx)
    try:
        spec = ScheduleSettings(
            cron=cron, timezone=timezone, queue=queue, kind=kind,
            payloads=[_json_arg(p, "--payload") for p in payload] or [{}],
            params=_json_arg(params, "--params"), priority=priority,
            max_attempts=max_attempts, enabled=not paused, missed=missed,
            catch_up=catch_up,
        )
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc).replace("invalid setting ", "")
                           .replace("invalid settings: ", "")) from None
    # Checked before connecting: a bad name is said without a database.
    sched.check_schedule(name, spec, settings.max_payload_bytes)

    async def go() -> bool:
        async with open_store(settings) as store:
            return await sched.put_schedule(store, name, spec, replace=replace,
                                            max_payload_bytes=settings.max_payload_bytes)

    created = run_async(go)
    typer.echo(f"schedule {name}: {'created' if created else 'replaced'}")


@schedules_app.command("pause")
def pause_command(
    ctx: typer.Context, name: str = typer.Argument(..., help="the schedule's name"),
) -> None:
    """Pause a schedule: no tick of it is created until it is resumed. Exit 1 if there is
    none."""
    settings = settings_of(ctx)

    async def go() -> None:
        async with open_store(settings) as store:
            await sched.set_schedule_enabled(store, name, False)

    run_async(go)
    typer.echo(f"schedule {name}: paused")


@schedules_app.command("resume")
def resume_command(
    ctx: typer.Context, name: str = typer.Argument(..., help="the schedule's name"),
) -> None:
    """Resume a paused schedule from its next tick (the ticks of the pause are not caught up).
    Exit 1 if there is none."""
    settings = settings_of(ctx)

    async def go() -> None:
        async with open_store(settings) as store:
            await sched.set_schedule_enabled(store, name, True)

    run_async(go)
    typer.echo(f"schedule {name}: resumed")


@schedules_app.command("delete")
def delete_command(
    ctx: typer.Context, name: str = typer.Argument(..., help="the schedule's name"),
) -> None:
    """Delete a schedule and its tick history; the tasks it made stay. A schedule in a
    daemon's settings comes back when that daemon starts. Exit 1 if there is none."""
    settings = settings_of(ctx)

    async def go() -> None:
        async with open_store(settings) as store:
            await sched.delete_schedule(store, name)

    run_async(go)
    typer.echo(f"schedule {name}: deleted")


@schedules_app.command("run-now")
def run_now_command(
    ctx: typer.Context, name: str = typer.Argument(..., help="the schedule's name"),
) -> None:
    """Submit the schedule's task now, outside its ticks (also when paused); prints the task
    id. The regular ticks are unchanged. Exit 1 if there is none."""
    settings = settings_of(ctx)

    async def go() -> int:
        async with open_store(settings) as store:
            return await sched.run_schedule_now(store, name)

    task_id = run_async(go)
    typer.echo(f"schedule {name}: task {task_id}")
