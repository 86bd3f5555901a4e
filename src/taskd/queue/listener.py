"""The LISTEN side of wake-ups: a dedicated connection listening on taskd's channel.

``taskd.submit_task`` (and every statement that makes work ready) sends ``NOTIFY taskd, <queue>``
once per statement; :class:`taskd.executor.notifier.Notifier` reads the notifications through a
:class:`Listener`.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        delivered_once = False

        def readable() -> None:
            # The reader stays in place after the delivery (removing it is a system call,
            # tens of microseconds before the claim goes out): a claim on the connection
            # replaces it with psycopg's, which psycopg removes when the claim ends; until
            # then, notifications are held for the next wait.
            nonlocal delivered_once
            try:
                pgconn.consume_input()
                while (note := pgconn.notifies()) is not None:
                    self._held.append(note.extra.decode(self._encoding, "replace"))
                if not self._held or delivered_once:
                    return  # no notification whole yet, or one delivered already: wait on
                delivered_once = True
                held, self._held = self._held, []
                delivered = deliver(held)
            except Exception as exc:  # psycopg.Error, OSError: the connection is lost
                loop.remove_reader(fd)
                if not done.done():
                    done.set_exception(exc)
            else:
                delivered.add_done_callback(finished)

        def finished(_delivered: asyncio.Future[None]) -> None:
            if not done.done():  # cancelled meanwhile
                done.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await done
        finally:
            # Delivered and not yet back, a claim may run on the connection with psycopg's
            # reader in place: the owner calls stop_reading once the connection is back.
            if done.done() or not delivered_once:
                loop.remove_reader(fd)  # ours, or none (psycopg removed its own)

    def stop_reading(self) -> None:
        """Remove any reader of the connection's socket from the loop: for its owner, once no
        claim runs on it (after a :meth:`wait` that was cancelled), before closing it."""
        with contextlib.suppress(psycopg.Error, OSError, ValueError):
            asyncio.get_running_loop().remove_reader(self.conn.pgconn.socket)
