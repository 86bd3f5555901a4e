"""The notifier: one dedicated connection that LISTENs and wakes the producers.

NOTIFY is only a hint. A dropped connection is reconnected with backoff, and every producer is
woken so that it polls at once; polling alone (``listen = false``, e.g. behind PgBouncer in
transaction mode) also works, at the cost of latency.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio
import anyio.lowlevel
import psycopg

from taskd.queue.wakeup import Wakeup

log = logging.getLogger(__name__)

CHANNEL = "taskd"


class Notifier:
    """Listen on the ``taskd`` channel (payload: the queue name) and set that queue's wake-up."""

    def __init__(
        self,
        conninfo: str,
        wakeups: Mapping[str, Wakeup],
        *,
        application_name: str = "taskd-listen",
        max_backoff: float = 5.0,
    ) -> None:
        self.conninfo = conninfo
        self.wakeups = wakeups
        self.application_name = application_name
        self.max_backoff = max_backoff
        self.listening = anyio.Event()  # set once the first LISTEN is in place (tests wait on it)

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
        conn = await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, application_name=self.application_name,
            connect_timeout=10,
        )
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            log.debug("listening on channel %s", CHANNEL)
            self._wake_all()
            self.listening.set()
            async for note in conn.notifies():
                wakeup = self.wakeups.get(note.payload)
                if wakeup is not None:
                    wakeup.set()
                    # Let the woken producer send its claim before this task waits for the
                    # next notification: that wait is on the path from NOTIFY to claim.
                    await anyio.lowlevel.checkpoint()

    def _wake_all(self) -> None:
        for wakeup in self.wakeups.values():
            wakeup.set()
