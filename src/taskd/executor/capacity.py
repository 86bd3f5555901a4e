"""A concurrency limit that can change while work runs (the scaler moves it)."""

from __future__ import annotations

from taskd.executor.condition import Condition


class Capacity:
    """How many subtasks of one queue this executor may run at once, and how many it runs.

    Lowering the limit never cancels running work: it only holds back new claims until
    ``running`` falls under the new limit.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._running = 0
        self._changed = Condition()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def running(self) -> int:
        return self._running

    def free(self) -> int:
        return max(0, self._limit - self._running)

    def set_limit(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._changed.notify()

    def take(self, n: int) -> None:
        """Count ``n`` more running subtasks (after a claim of ``n``)."""
        self._running += n

    def release(self, n: int = 1) -> None:
        """Count ``n`` fewer running subtasks."""
        self._running = max(0, self._running - n)
        self._changed.notify()

    async def wait_for_free(self, slots: int = 1) -> None:
        """Return when at least ``slots`` slots are free (or the limit is below that)."""
        while self.free() < min(slots, self._limit):
            await self._changed.wait()
