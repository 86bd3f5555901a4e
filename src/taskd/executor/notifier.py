"""The notifier: one dedicated connection that LISTENs and wakes the producers.

NOTIFY is only a hint. A dropped connection is reconnected with backoff, and every producer is
woken so that it claims at once; the poller's one statement every ``poll_interval`` alone
(``listen = false``, e.g. behind PgBouncer in transaction mode) also works, at the cost of
latency.

Right after a notification, the listening connection is lent to the producer it woke, for
that producer's claim (see :class:`ListenLender`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import psycopg

from taskd.executor.wakeup import Wakeup
from taskd.queue.connection import STATEMENT_TIMEOUT
from taskd.queue.listener import CHANNEL, Listener, open_listener
from taskd.testsignals import TestSignal

log = logging.getLogger(__name__)


class ListenLender:
    """The listening connection, lent for one claim right after it delivered a notification.

    Its server process has just run (it sent the notification), and a claim sent to it starts sooner
    than one sent to a pooled connection whose server process has slept since its last statement
    (enqueue-to-start: docs/benchmarks.md). A producer takes it with :meth:`borrow` (None when it is
    not on offer: between notifications, or taken by another producer) and gives it back with
    :meth:`give_back`; the notifier listens again once it is back. Notifications that arrive
    meanwhile wait (held by the :class:`~taskd.queue.listener.Listener`, or in the socket) for
    one claim's round trip.
    """

    def __init__(self) -> None:
        self._offered: psycopg.AsyncConnection[Any] | None = None
        self._lent = False
        self._settled: asyncio.Future[None] | None = None

    def borrow(self) -> psycopg.AsyncConnection[Any] | None:
        conn, self._offered = self._offered, None
        if conn is not None:
            self._lent = True
        return conn

    def give_back(self) -> None:
        if self._lent:
            self._lent = False
            self._settle()

    def offer(self, conn: psycopg.AsyncConnection[Any]) -> asyncio.Future[None]:
        """Offer ``conn`` to the producers just woken (from the notifier's reader callback or
        task); return a future done once it is back, or once the offer is withdrawn untaken.

        The offer is withdrawn in the loop's next turn, after the woken producers' steps
        (scheduled before it, they run first): a producer that reaches its claim then takes
        it, one that waits for something else first does not. Nothing of the notifier's runs
        between the claim and the daemon's next sleep: the claim's server process, woken on
        this CPU, starts only then (enqueue-to-start: docs/benchmarks.md).
        """
        loop = asyncio.get_running_loop()
        self._offered, self._lent = conn, False
        self._settled = loop.create_future()
        loop.call_soon(self._withdraw_untaken)
        return self._settled

    def _withdraw_untaken(self) -> None:
        if self._offered is not None:
            self._offered = None
            self._settle()

    def _settle(self) -> None:
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    async def withdraw(self) -> None:
        """Withdraw the offer; if the connection is lent, return once it is back, even when
        cancelled (a claim in flight on it: closing it under the claim would lose its rows)."""
        self._offered = None
        if self._lent and self._settled is not None:
            with anyio.CancelScope(shield=True):
                await self._settled


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
        listener = Listener(conn)

        def deliver(payloads: list[str]) -> asyncio.Future[None]:
            # Called as the socket turns readable: the woken producers run next, and the
            # connection is on offer when they do; listening resumes once it is back.
            for payload in payloads:
                wakeup = self.wakeups.get(payload)
                if wakeup is not None:
                    wakeup.set()
            return self.lender.offer(conn)

        try:
            log.debug("listening on channel %s", CHANNEL)
            self._wake_all()
            self.signals.listening.signal(None)
            try:
                while True:
                    # Notifications that arrive while the connection is lent are held: the
                    # next wait delivers them first.
                    await listener.wait(deliver)
            finally:
                await self.lender.withdraw()  # cancelled (shutdown) or the connection lost
                listener.stop_reading()
        finally:
            # Closed whatever ends the wait, cancellation included: `async with conn` first
            # rolls back, and that can stop at a checkpoint of a cancelled scope and leave the
            # connection open (closing it needs no round trip).
            with anyio.CancelScope(shield=True):
                await conn.close()

    def _wake_all(self) -> None:
        for wakeup in self.wakeups.values():
            wakeup.set()
