"""The ``taskd`` command: the Typer app, and what every command shares."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import typer
from rich.console import Console

from taskd.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidInput,
    SchemaError,
    TaskdError,
)
from taskd.queue.database import database_url
from taskd.queue.store import Store
from taskd.settings import Settings, load_settings

T = TypeVar("T")

app = typer.Typer(
    name="taskd",
    help="taskd: an executor daemon over a lease-based PostgreSQL queue.\n\n"
    "Settings come from TASKD_* environment variables, then the TOML file named by "
    "TASKD_CONFIG (default /etc/taskd/taskd.toml), then defaults. Without "
    "TASKD_DATABASE_URL, an embedded PostgreSQL is started.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's own help: typer's rich panels showed `--help <bool>` for every flag and kept
    # the line breaks of the docstrings.
    rich_markup_mode=None,
)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

# Piped output is read by scripts and pagers, not cut to a terminal: rich would assume 80
# columns and shorten table cells ("standa…").
PIPED_WIDTH = 400


def out_console() -> Console:
    """The console for a command's output on stdout: the terminal's width on a terminal (or
    an exported ``COLUMNS``), :data:`PIPED_WIDTH` columns otherwise."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=PIPED_WIDTH)

# Seconds a command waits for its first connection before it reports the database unavailable.
CONNECT_TIMEOUT = 5.0

EXIT_CODES: list[tuple[type[TaskdError], int]] = [
    (ConfigError, 2),
    (InvalidInput, 2),
    (DatabaseUnavailable, 2),
    (SchemaError, 1),
    (TaskdError, 1),
]


def _print_version(value: bool) -> None:
    if value:
        from taskd import __version__

        typer.echo(f"taskd {__version__}")
        raise typer.Exit()


@app.callback()
def _load(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True,
        help="print the version and exit",
    ),
) -> None:
    # Bad settings stop every command here, before it does anything (not --version, which
    # has exited by now).
    ctx.obj = load_settings()


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """A small store for one command, checked against the schema.

    The pool's own warnings ("error connecting ...") are held back while the store is open:
    an unreachable database is reported once, as DatabaseUnavailable, by the caller.
    Raises DatabaseUnavailable after CONNECT_TIMEOUT seconds, or a SchemaError naming
    `taskd migrate`.
    """
    pool_logger = logging.getLogger("psycopg.pool")
    level = pool_logger.level
    pool_logger.setLevel(logging.ERROR)
    try:
        store = await Store.open(
            database_url(settings), min_size=1, max_size=2, application_name="taskd-cli",
            connect_timeout=CONNECT_TIMEOUT, pooler=settings.database_pooler,
        )
        try:
            yield store
        finally:
            await store.close()
    finally:
        pool_logger.setLevel(level)


def configure_logging(settings: Settings) -> None:
    from taskd.logs import setup_logging

    setup_logging(settings.log_format, settings.log_level)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: taskd's errors become one line on stderr and an exit code."""
    try:
        try:
            return app(args=argv)
        except BaseExceptionGroup as group:
            # A component of the daemon failed inside its task group: when what failed is one
            # of taskd's own errors (a port in use, a bad handler path), say it in one line.
            raise _sole_taskd_error(group) or group from None
    except TaskdError as exc:
        code = next(code for kind, code in EXIT_CODES if isinstance(exc, kind))
        # One line: server messages carry newlines and hints.
        err_console.print(f"taskd: error: {' '.join(str(exc).split())}", markup=False)
        sys.exit(code)
    except KeyboardInterrupt:
        sys.exit(130)


logging.getLogger("psycopg.pool").setLevel(logging.WARNING)


def _sole_taskd_error(group: BaseExceptionGroup[BaseException]) -> TaskdError | None:
    """The TaskdError in ``group`` when it is the only error besides cancellations."""
    import asyncio

    cancelled = asyncio.CancelledError  # taskd runs anyio on its asyncio backend
    found: list[BaseException] = []

    def leaves(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                leaves(inner)
        elif not isinstance(exc, cancelled):
            found.append(exc)

    leaves(group)
    if len(found) == 1 and isinstance(found[0], TaskdError):
        return found[0]
    return None
