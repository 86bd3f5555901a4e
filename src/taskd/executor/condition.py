"""A condition variable for one event loop: wake whoever waits for state that code elsewhere
changes (a free slot, an empty running set, room in the completer's backlog)."""

from __future__ import annotations

import anyio


class Condition:
    """Wakes every current waiter on :meth:`notify`; costs nothing while no one waits.

    Unlike ``anyio.Condition`` it has no lock: one event loop, and state changed between
    awaits only.

    The event behind it is created by the first waiter and dropped by :meth:`notify`: an event
    per change (a released slot, an ended subtask) costs more than the no-op handler behind it.
    Waiters re-check their condition in a loop around :meth:`wait`.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    async def wait(self) -> None:
        """Return at the next :meth:`notify`."""
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None
