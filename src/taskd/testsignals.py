"""Test signals: points in a component that a test can wait for (River's ``TestSignals``).

A component holds a small dataclass of :class:`TestSignal` fields and calls ``signal(value)``
where something a test may want to see happens: a heartbeat written, a scaler check done, a
LISTEN in place. In production no signal is armed, and ``signal`` is one attribute test. A test
arms the signals it needs before starting the component and waits on them with a bound, instead
of polling counters that exist only for tests or sleeping.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class TestSignal(Generic[T]):
    """One kind of event of one component; inert until :meth:`arm` is called."""

    __test__ = False  # not a pytest test class
    __slots__ = ("_arrived", "_values")

    def __init__(self) -> None:
        self._values: deque[T] | None = None
        self._arrived: anyio.Event | None = None

    def arm(self) -> None:
        """Start keeping the values signalled from now on (tests only)."""
        self._values = deque()

    def signal(self, value: T) -> None:
        """Record ``value`` for a test that armed this signal; nothing otherwise."""
        if self._values is not None:
            self._values.append(value)
            if self._arrived is not None:
                self._arrived.set()
                self._arrived = None

    async def wait(self, within: float = 10.0) -> T:
        """The next value signalled (or the oldest not yet taken).

        Raises :class:`TimeoutError` after ``within`` seconds and :class:`RuntimeError` when
        the signal was not armed.
        """
        values = self._armed()
        with anyio.fail_after(within):
            while not values:
                if self._arrived is None:
                    self._arrived = anyio.Event()
                await self._arrived.wait()
        return values.popleft()

    def taken(self) -> list[T]:
        """Every value signalled and not yet taken, oldest first, without waiting."""
        values = self._armed()
        taken = list(values)
        values.clear()
        return taken

    def _armed(self) -> deque[T]:
        if self._values is None:
            raise RuntimeError("a test signal that was not armed")
        return self._values
