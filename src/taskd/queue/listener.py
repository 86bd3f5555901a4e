"""The LISTEN side of wake-ups: a dedicated connection listening on taskd's channel.

``taskd.submit_task`` (and every statement that makes work ready) sends ``NOTIFY taskd, <queue>``
once per statement; :class:`taskd.executor.notifier.Notifier` reads the notifications.
"""

from __future__ import annotations

from typing import Any

import anyio
import psycopg

from taskd.queue.connection import STATEMENT_TIMEOUT, connection_kwargs

CHANNEL = "taskd"


async def open_listener(
    conninfo: str, application_name: str, *, statement_timeout: float | None = STATEMENT_TIMEOUT,
    connect_timeout: int = 10,
) -> psycopg.AsyncConnection[Any]:
    """A new connection with the pooled sessions' settings, listening on :data:`CHANNEL`.

    The settings are the pool's because a producer may claim on this connection (see
    :class:`taskd.executor.notifier.ListenLender`). Raises :class:`psycopg.Error` or
    :class:`OSError` when it cannot connect; the notifier reconnects with backoff.
    """
    conn = await psycopg.AsyncConnection.connect(
        **connection_kwargs(conninfo, application_name, statement_timeout),
        conninfo=conninfo, connect_timeout=connect_timeout,
    )
    try:
        await conn.execute(f"LISTEN {CHANNEL}")
    except BaseException:
        await conn.close()
        raise
    return conn


async def next_notifications(conn: psycopg.AsyncConnection[Any]) -> list[psycopg.Notify]:
    """The notifications that arrived on ``conn`` while it ran other statements, else the next
    to arrive (at least one; it waits as long as it takes).

    It waits for the socket itself: psycopg's ``notifies()`` wakes every 0.1 s to look for an
    interrupt, ten turns a second of an idle daemon's event loop (docs/scaling.md). Raises
    :class:`psycopg.Error` or :class:`OSError` when the connection is lost.
    """
    while True:
        # Those held back while the connection was lent, then what the socket holds now.
        received = [note async for note in conn.notifies(timeout=0)]
        if received:
            return received
        await anyio.wait_readable(conn.pgconn.socket)
