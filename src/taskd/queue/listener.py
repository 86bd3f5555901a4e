"""The LISTEN side of wake-ups: a dedicated connection listening on taskd's channel.

``taskd.submit_task`` (and every statement that makes work ready) sends ``NOTIFY taskd, <queue>``
once per statement; :class:`taskd.executor.notifier.Notifier` reads the notifications through a
:class:`Listener`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

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


class Listener:
    """A connection listening on :data:`CHANNEL`, read in the event loop's reader callback.

    The payloads of the notifications reach ``deliver`` (see :meth:`wait`) in the loop turn
    that finds the socket readable: a task that waits for the socket and then reads it through
    psycopg's ``notifies()`` took three turns more, and each turn of a process that slept since
    the last notification costs tens of microseconds before the claim goes out
    (enqueue-to-start: docs/benchmarks.md). Notifications that arrive while the connection runs
    other statements (a claim on it) are held, and delivered by the next :meth:`wait`.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self._held: list[str] = []
        self._encoding = conn.info.encoding
        # psycopg calls it for each notification it reads while the connection runs a
        # statement (a claim on it); the reader callback reads the others itself.
        conn.add_notify_handler(self._hold)

    def _hold(self, note: psycopg.Notify) -> None:
        self._held.append(note.payload)

    async def wait(self, deliver: Callable[[list[str]], asyncio.Future[None]]) -> None:
        """Call ``deliver`` once, with the payloads held, else with those of the next
        notifications to arrive (from the reader callback, as the socket turns readable;
        it waits as long as it takes); return once the future it returned is done (the
        caller's task does not run in between).

        Only while the connection runs nothing else. Raises :class:`psycopg.Error` or
        :class:`OSError` when the connection is lost (the notifier reconnects).
        """
        if self._held:
            held, self._held = self._held, []
            await deliver(held)
            return
        pgconn = self.conn.pgconn
        fd = pgconn.socket
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        reading = False

        def readable() -> None:
            try:
                pgconn.consume_input()
                while (note := pgconn.notifies()) is not None:
                    self._held.append(note.extra.decode(self._encoding, "replace"))
                if not self._held:
                    return  # no notification whole yet: wait on
                stop_reading()
                held, self._held = self._held, []
                delivered = deliver(held)
            except Exception as exc:  # psycopg.Error, OSError: the connection is lost
                stop_reading()
                if not done.done():
                    done.set_exception(exc)
            else:
                delivered.add_done_callback(finished)

        def finished(_delivered: asyncio.Future[None]) -> None:
            if not done.done():  # cancelled meanwhile
                done.set_result(None)

        def stop_reading() -> None:
            # Once only, and never after this callback's turn: by then a claim on the
            # connection (see deliver) may wait for the socket through a reader of its own.
            nonlocal reading
            if reading:
                loop.remove_reader(fd)
                reading = False

        loop.add_reader(fd, readable)
        reading = True
        try:
            await done
        finally:
            stop_reading()  # cancelled while waiting
