"""Connections to PostgreSQL: session settings, the pool's checks, and error translation.

Every taskd session gets the same settings (:func:`connection_kwargs`), psycopg's errors become
taskd's own in one place (:func:`translate_error`; for a connection that could not be made,
:func:`check_connect` and :func:`connect_error`), statements rolled back by a conflict are
tried again by one helper (:func:`retrying_conflicts`, with translation :func:`retried`), and
a named query runs on a given connection through one helper (:func:`run_query`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import select
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, overload
from weakref import WeakKeyDictionary

import anyio
import psycopg
from psycopg import errors as pgerrors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import BaseRowFactory, dict_row
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.pool_async import AddConnection, MaintenanceTask

from taskd.errors import (
    DatabaseError,
    DatabaseRefused,
    DatabaseUnavailable,
    InvalidInput,
    SchemaMissing,
    TaskdError,
)
from taskd.queue.queries import query
from taskd.retries import retry_after_failure
from taskd.settings import Pooler

T = TypeVar("T")
Row = TypeVar("Row")
Conn = psycopg.AsyncConnection[Any]

_CONFLICTS = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, pgerrors.LockNotAvailable)

CONFLICT_TRIES = 5
# Seconds: every statement of the daemon's sessions (the pool's and the LISTEN connection's).
STATEMENT_TIMEOUT = 30.0
# Seconds at most between two attempts of the pool to replace a lost connection: psycopg_pool
# doubles its wait after each failure (1, 2, 4 s ...), which after a failover of a few seconds
# left taskd up to that long behind a new primary that was taking writes already.
RECONNECT_DELAY_MAX = 1.0
# Seconds a taskd session may sit idle inside a transaction: a process that freezes with one
# open (SIGSTOP, a paused VM, a partition) loses it, and the locks it held, after this.
IDLE_IN_TRANSACTION_TIMEOUT = 10.0


class _LastInFirstOut(deque[Any]):
    """psycopg_pool's idle connections, taken from the end they were put back at (it takes
    with ``popleft`` and puts back with ``append``)."""

    def popleft(self) -> Any:
        return self.pop()


class ReconnectingPool(AsyncConnectionPool[Any]):
    """psycopg_pool's pool, trying to replace a lost connection at least every
    :data:`RECONNECT_DELAY_MAX` seconds (its own wait doubles without bound until
    ``reconnect_timeout``): after a failover, taskd follows the new primary within a second
    of it taking writes.

    It hands out the connection that came back last (psycopg_pool: the one idle longest).
    Taken in turn, each of an idle daemon's connections sat idle past
    :data:`CHECK_IDLE_AFTER` before its next statement, so nearly every statement paid a
    check's round trip first and woke a server process of its own; taken last-first, one
    connection carries a quiet daemon's statements and the others wait for a burst. (The
    pool shrinks by the same end: above ``min_size``, the connection that came back last
    is the one closed.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool = _LastInFirstOut()

    async def schedule_task(self, task: MaintenanceTask, delay: float) -> None:
        if isinstance(task, AddConnection):
            delay = min(delay, RECONNECT_DELAY_MAX)
        await super().schedule_task(task, delay)


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
        # A function that names the argument at fault says so in the error's COLUMN field.
        return InvalidInput(message.removeprefix("taskd: "), field=exc.diag.column_name)
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
    conninfo: str, application_name: str, statement_timeout: float | None,
    *, pooler: Pooler = "none",
) -> dict[str, Any]:
    """Keyword arguments for every pooled taskd connection.

    Plans are always custom: psycopg prepares a statement on its fifth run, and PostgreSQL's
    generic plan for an id array of unknown length joined the outcomes in a nested loop,
    quadratic in the batch; planning each run costs far less (docs/benchmarks.md).

    Timestamps come back in UTC whatever the server's TimeZone: psycopg builds them with
    ``datetime.timezone.utc`` then, not a ``zoneinfo`` conversion per value, which halved the cost
    of building a claim's rows (docs/benchmarks.md). Options already in the connection string or
    PGOPTIONS are kept (a TimeZone there wins).

    Behind a transaction pooler (``pooler="transaction"``) each transaction may run on another
    server connection: a statement psycopg prepared on one is missing on the next (``prepared
    statement "_pg3_0" does not exist``), so nothing is prepared; and the startup ``options``
    are refused (PgBouncer: ``unsupported startup parameter``) or dropped, so none are sent:
    the role's or the database's settings must carry them (docs/daemon.md).
    """
    if pooler == "transaction":
        return {"autocommit": True, "application_name": application_name,
                "prepare_threshold": None}
    given = conninfo_to_dict(conninfo).get("options") or os.environ.get("PGOPTIONS", "")
    options = ["-c TimeZone=UTC", str(given), "-c plan_cache_mode=force_custom_plan",
               f"-c idle_in_transaction_session_timeout={int(IDLE_IN_TRANSACTION_TIMEOUT * 1000)}"]
    if statement_timeout:
        options.append(f"-c statement_timeout={int(statement_timeout * 1000)}")
    return {"autocommit": True, "application_name": application_name,
            "options": " ".join(o for o in options if o)}


# SQLSTATE classes of a refused connection that may pass by itself, so that trying again is
# right: 08 connection exception (PgBouncer reports its own refusals so), 53 insufficient
# resources (53300: no free connection slot), 57 operator intervention (57P03: starting up, in
# recovery, shutting down; 57P01: terminated by an administrator), 58 system error. Any other
# (28: credentials; 3D000: no such database; 42501: no CONNECT permission) will not pass.
TRANSIENT_CONNECT_CLASSES = frozenset({"08", "53", "57", "58"})


def connect_error(
    message: str, sqlstate: str | None, *, answered: bool
) -> DatabaseUnavailable | DatabaseRefused:
    """Classify a connection that could not be made, by the SQLSTATE the server refused it
    with. Without one: unavailable when no server answered (refused, unreachable, timed out),
    refused when one did but its reason could not be learnt (see :func:`diagnose_connect`)."""
    if sqlstate is None:
        if answered:
            return DatabaseRefused(f"database refused the connection: {message}")
        return DatabaseUnavailable(f"database unavailable: {message}")
    if sqlstate[:2] in TRANSIENT_CONNECT_CLASSES:
        return DatabaseUnavailable(f"database unavailable ({sqlstate}): {message}")
    return DatabaseRefused(f"database refused the connection ({sqlstate}): {message}",
                           sqlstate=sqlstate)


async def check_connect(
    conninfo: str, kwargs: dict[str, Any], connect_timeout: float
) -> None:
    """Make one connection with ``kwargs`` (see :func:`connection_kwargs`) and close it.

    Raises :class:`DatabaseUnavailable` for what may pass by itself (no server answers, no
    free connection slot, starting up) and :class:`DatabaseRefused` for what will not (bad
    credentials, no such database, an unusable connection string).
    """
    timeout = max(1, int(connect_timeout))
    try:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, **{**kwargs, "connect_timeout": timeout})
    except psycopg.OperationalError as exc:
        if exc.sqlstate:  # not from libpq's connection errors, but a server may send one
            raise connect_error(_one_line(exc), exc.sqlstate, answered=True) from exc
        extra = {k: v for k, v in kwargs.items() if k in ("application_name", "options")}
        sqlstate, answered = await anyio.to_thread.run_sync(
            diagnose_connect, make_conninfo(conninfo, **extra), timeout,
            abandon_on_cancel=True)
        raise connect_error(_one_line(exc), sqlstate, answered=answered) from exc
    except psycopg.Error as exc:  # e.g. ProgrammingError: an invalid connection string
        raise DatabaseRefused(f"unusable database URL: {_one_line(exc)}") from exc
    await conn.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# libpq renders a server error as "SEVERITY:  SQLSTATE: message" at PQERRORS_VERBOSE.
_PQERRORS_VERBOSE = 2
_SQLSTATE_FIELD = re.compile(r":  ([0-9A-Z]{5}): ")


def diagnose_connect(conninfo: str, timeout: float) -> tuple[str | None, bool]:
    """Connect once more to learn why the last attempt failed: ``(sqlstate, answered)``.

    libpq keeps the SQLSTATE of a refused connection to itself (psycopg's ``exc.sqlstate`` is
    None for every connection error), but puts it in its error message when the connection's
    error verbosity is PQERRORS_VERBOSE, set here through libpq's ``PQsetErrorVerbosity``,
    which psycopg does not wrap. Without a code (no server answered, or that libpq could not
    be reached), ``PQping`` tells whether a server answered: REJECT is libpq's own reading of
    SQLSTATE 57P03 (starting up, in recovery, shutting down). Blocking: run it in a thread.
    """
    libpq = _libpq()
    pgconn = pq.PGconn.connect_start(conninfo.encode())
    try:
        pointer = getattr(pgconn, "pgconn_ptr", None)  # the PGconn* (both implementations)
        if libpq is not None and pointer:
            libpq.PQsetErrorVerbosity(ctypes.c_void_p(pointer), _PQERRORS_VERBOSE)
        if _poll_connection(pgconn, time.monotonic() + timeout):
            return None, True  # it worked this time: whatever it was has passed
        message = pgconn.get_error_message()
    finally:
        pgconn.finish()
    if found := _SQLSTATE_FIELD.search(message):
        return found[1], True
    ping = pq.PGconn.ping(conninfo.encode())
    if ping == pq.Ping.REJECT:
        return "57P03", True
    return None, ping in (pq.Ping.OK, pq.Ping.NO_ATTEMPT)


def _poll_connection(pgconn: pq.abc.PGconn, deadline: float) -> bool:
    """Drive a connection started with ``connect_start``; True once it is made."""
    while True:
        status = pgconn.connect_poll()
        if status == pq.PollingStatus.OK:
            return True
        if status == pq.PollingStatus.FAILED:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            fd = pgconn.socket
        except psycopg.OperationalError:
            return False
        if status == pq.PollingStatus.READING:
            select.select([fd], [], [], remaining)
        else:
            select.select([], [fd], [], remaining)


@functools.cache
def _libpq() -> ctypes.CDLL | None:
    """The libpq that psycopg uses, for ``PQsetErrorVerbosity``; None where it cannot be found
    for certain (only that very library may be handed psycopg's connection pointers)."""
    try:
        if pq.__impl__ == "python":
            from psycopg.pq import _pq_ctypes

            lib: ctypes.CDLL = getattr(_pq_ctypes, "pq")  # noqa: B009 (not in its stub)
        else:
            loaded = [p for p in _loaded_libraries() if "/libpq" in p]
            if pq.__impl__ == "binary":
                import psycopg_binary

                # Its own copy: psycopg_binary.libs/libpq-<hash>.so.5.<minor> (.dylibs on macOS)
                package = Path(psycopg_binary.__file__).resolve().parent
                loaded = [p for p in loaded if p.startswith(str(package))]
            if len(set(loaded)) != 1:
                return None
            lib = ctypes.CDLL(loaded[0])
        function = lib.PQsetErrorVerbosity
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_int]
    function.restype = ctypes.c_int
    return lib


def _loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process (Linux; elsewhere none)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    return [fields[5] for fields in (line.split(maxsplit=5) for line in maps.splitlines())
            if len(fields) == 6 and ".so" in fields[5]]


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


