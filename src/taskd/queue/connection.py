"""Connections to PostgreSQL: session settings, the pool's checks, and error translation.

Every taskd session gets the same settings (:func:`connection_kwargs`), psycopg's errors become
taskd's own in one place (:func:`translate_error`), statements rolled back by a conflict are
tried again by one helper (:func:`retrying_conflicts`, with translation :func:`retried`), and
a named query runs on a given connection through one helper (:func:`run_query`).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, overload
from weakref import WeakKeyDictionary

import psycopg
from psycopg import errors as pgerrors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import BaseRowFactory, dict_row
from psycopg_pool import AsyncConnectionPool

from taskd.errors import (
    DatabaseError,
    DatabaseUnavailable,
    InvalidInput,
    SchemaMissing,
    TaskdError,
)
from taskd.queue.queries import query
from taskd.retries import retry_after_failure

T = TypeVar("T")
Row = TypeVar("Row")
Conn = psycopg.AsyncConnection[Any]

_CONFLICTS = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, pgerrors.LockNotAvailable)

CONFLICT_TRIES = 5
# Seconds: every statement of the daemon's sessions (the pool's and the LISTEN connection's).
STATEMENT_TIMEOUT = 30.0
# Seconds a taskd session may sit idle inside a transaction: a process that freezes with one
# open (SIGSTOP, a paused VM, a partition) loses it, and the locks it held, after this.
IDLE_IN_TRANSACTION_TIMEOUT = 10.0


async def retrying_conflicts(once: Callable[[], Awaitable[T]]) -> T:
    """``once()``, tried again (up to 5 tries in all, with backoff) after a deadlock, a
    serialization failure or a lock timeout: each rolled its statement back whole, so trying
    again is safe."""
    return await retry_after_failure(
        once, lambda exc: isinstance(exc, _CONFLICTS),
        tries=CONFLICT_TRIES, wait_base=0.01, wait_max=0.5,
    )


def translate_error(exc: psycopg.Error) -> TaskdError:
    """Map a psycopg error to taskd's tree (the caller raises it ``from exc``)."""
    message = exc.diag.message_primary or str(exc) or type(exc).__name__
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailable(f"database unavailable: {message}")
    if isinstance(exc, (psycopg.DataError, pgerrors.CheckViolation)):
        return InvalidInput(message.removeprefix("taskd: "))
    if isinstance(exc, (pgerrors.UndefinedTable, pgerrors.UndefinedFunction,
                        pgerrors.InvalidSchemaName)):
        return SchemaMissing(f"{message}: run `taskd migrate`")
    if isinstance(exc, psycopg.InterfaceError):
        return DatabaseUnavailable(f"database connection unusable: {message}")
    return DatabaseError(f"{type(exc).__name__}: {message}")


@asynccontextmanager
async def translated_errors() -> AsyncIterator[None]:
    """Re-raise psycopg errors as taskd errors."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate_error(exc) from exc


async def retried(once: Callable[[], Awaitable[T]]) -> T:
    """``once()`` through :func:`retrying_conflicts`; psycopg's errors become taskd's."""
    try:
        return await retrying_conflicts(once)
    except psycopg.Error as exc:
        raise translate_error(exc) from exc


@overload
async def run_query(conn: Conn, name: str, params: dict[str, Any]) -> list[dict[str, Any]]: ...


@overload
async def run_query(
    conn: Conn, name: str, params: dict[str, Any], row_factory: BaseRowFactory[Row],
    *, binary: bool = False,
) -> list[Row]: ...


async def run_query(
    conn: Conn, name: str, params: dict[str, Any], row_factory: BaseRowFactory[Any] = dict_row,
    *, binary: bool = False,
) -> list[Any]:
    """Run the named query on ``conn``; its rows (dicts unless ``row_factory`` says otherwise;
    none for a statement without rows). Raises psycopg's errors: the caller translates them
    (:func:`retried`, as ``Store.fetch_as`` and ``Store.in_transaction`` do)."""
    cur = conn.cursor(row_factory=row_factory, binary=binary)
    await cur.execute(query(name), params)
    rows = await cur.fetchall() if cur.description else []
    mark_ok(conn)
    return rows


def connection_kwargs(
    conninfo: str, application_name: str, statement_timeout: float | None
) -> dict[str, Any]:
    """Keyword arguments for every pooled taskd connection.

    Plans are always custom: psycopg prepares a statement on its fifth run, and PostgreSQL's
    generic plan for an id array of unknown length joined the outcomes in a nested loop,
    quadratic in the batch; planning each run costs far less (docs/benchmarks.md).

    Timestamps come back in UTC whatever the server's TimeZone: psycopg builds them with
    ``datetime.timezone.utc`` then, not a ``zoneinfo`` conversion per value, which halved the cost
    of building a claim's rows (docs/benchmarks.md). Options already in the connection string or
    PGOPTIONS are kept (a TimeZone there wins).
    """
    given = conninfo_to_dict(conninfo).get("options") or os.environ.get("PGOPTIONS", "")
    options = ["-c TimeZone=UTC", str(given), "-c plan_cache_mode=force_custom_plan",
               f"-c idle_in_transaction_session_timeout={int(IDLE_IN_TRANSACTION_TIMEOUT * 1000)}"]
    if statement_timeout:
        options.append(f"-c statement_timeout={int(statement_timeout * 1000)}")
    return {"autocommit": True, "application_name": application_name,
            "options": " ".join(o for o in options if o)}


async def why_unreachable(conninfo: str, connect_timeout: float) -> DatabaseUnavailable:
    """The pool only says it timed out; one direct attempt tells why (refused, auth, ...)."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, connect_timeout=max(1, int(connect_timeout))
        )
    except psycopg.Error as exc:
        return DatabaseUnavailable(f"database unavailable: {exc}".strip())
    await conn.close()
    return DatabaseUnavailable("database unavailable: no connection within "
                               f"{connect_timeout:g} s")


# A connection that finished a statement this recently is not checked on checkout: the check
# is a round trip, as many as the hot path's own statements. One that broke meanwhile fails
# its statement, and every caller retries or backs off on DatabaseUnavailable.
CHECK_IDLE_AFTER = 2.0
_last_ok: WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = WeakKeyDictionary()


def mark_ok(conn: psycopg.AsyncConnection[Any]) -> None:
    """Note that a statement just succeeded on ``conn`` (see :func:`check_when_idle`)."""
    _last_ok[conn] = time.monotonic()


async def check_when_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """A pool's ``check``: a round trip only for a connection not marked ok in the last
    ``CHECK_IDLE_AFTER`` seconds (or one known broken)."""
    last = _last_ok.get(conn)
    if last is not None and time.monotonic() - last < CHECK_IDLE_AFTER and not conn.broken:
        return
    await AsyncConnectionPool.check_connection(conn)


