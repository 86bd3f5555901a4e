"""The notifier: one dedicated connection that LISTENs and wakes the producers.

NOTIFY is only a hint. A dropped connection is reconnected with backoff, and every producer is
woken so that it claims at once; the poller's one statement every ``poll_interval`` alone
(``listen = false``, e.g. behind PgBouncer in transaction mode) also works, at the cost of
latency.

Right after a notification, the listening connection is lent to the producer it woke, for
that producer's claim (see :class:`ListenLender`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import psycopg

from taskd.executor.wakeup import Wakeup
from taskd.queue.connection import STATEMENT_TIMEOUT
from taskd.queue.listener import CHANNEL, next_notifications, open_listener
from taskd.testsignals import TestSignal

log = logging.getLogger(__name__)


class ListenLender:
    """The listening connection, lent for one claim right after it delivered a notification.

    Its server process has just run (it sent the notification), and a claim sent to it starts sooner
    than one sent to a pooled connection whose server process has slept since its last statement
    (enqueue-to-start: docs/benchmarks.md). A producer takes it with :meth:`borrow` (None when it is
    not on offer: between notifications, or taken by another producer) and gives it back with
    :meth:`give_back`; the notifier listens again once it is back. Notifications that arrive
    meanwhile wait (in psycopg's backlog or the socket) for one claim's round trip.
    """

    def __init__(self) -> None:
        self._offered: psycopg.AsyncConnection[Any] | None = None
        self._returned: anyio.Event | None = None

    def borrow(self) -> psycopg.AsyncConnection[Any] | None:
        conn, self._offered = self._offered, None
        if conn is not None:
            self._returned = anyio.Event()
        return conn

    def give_back(self) -> None:
        if self._returned is not None:
            self._returned.set()

    async def lend(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Offer ``conn`` to the producers just woken; return once it is back, or at once if
        none took it before their next wait."""
        self._offered, self._returned = conn, None
        try:
            # The woken producers run up to their claim before this task goes on.
            await anyio.lowlevel.checkpoint()
        finally:  # cancelled there too (shutdown): a producer may have taken it meanwhile
            self._offered = None
            returned = self._returned
            if returned is not None:
                # A claim in flight on it: closing it under the claim would lose its rows.
                with anyio.CancelScope(shield=True):
                    await returned.wait()
                self._returned = None


@dataclass
class NotifierSignals:
    """What tests may wait for: a LISTEN in place (at start and after each reconnection)."""

    listening: TestSignal[None] = field(default_factory=TestSignal)


class Notifier:
    """Listen on the ``taskd`` channel (payload: the queue name) and set that queue's wake-up."""

    def __init__(
        self,
        conninfo: str,
        wakeups: Mapping[str, Wakeup],
        *,
        application_name: str = "taskd-listen",
        max_backoff: float = 5.0,
        statement_timeout: float | None = STATEMENT_TIMEOUT,
    ) -> None:
        self.conninfo = conninfo
        self.wakeups = wakeups
        self.application_name = application_name
        self.max_backoff = max_backoff
        self.lender = ListenLender()  # the producers borrow from it (see the daemon)
        self.statement_timeout = statement_timeout
        self.signals = NotifierSignals()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError) as exc:
                log.warning("listen connection lost, reconnecting: %s", exc,
                            extra={"retry_in": round(backoff, 2)})
            self._wake_all()  # whatever was notified while we were away is found by a poll
            await anyio.sleep(backoff)
            backoff = min(self.max_backoff, backoff * 2)

    async def _listen(self) -> None:
        conn = await open_listener(self.conninfo, self.application_name,
                                   statement_timeout=self.statement_timeout)
        try:
            log.debug("listening on channel %s", CHANNEL)
            self._wake_all()
            self.signals.listening.signal(None)
            while True:
                # Notifications that arrive while the connection is lent wait in psycopg's
                # backlog: the next call returns them first.
                for note in await next_notifications(conn):
                    wakeup = self.wakeups.get(note.payload)
                    if wakeup is not None:
                        wakeup.set()
                await self.lender.lend(conn)
        finally:
            # Closed whatever ends the wait, cancellation included: `async with conn` first
            # rolls back, and that can stop at a checkpoint of a cancelled scope and leave the
            # connection open (closing it needs no round trip).
            with anyio.CancelScope(shield=True):
                await conn.close()

    def _wake_all(self) -> None:
        for wakeup in self.wakeups.values():
            wakeup.set()
