"""What this executor is running right now: one entry per claimed subtask."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import anyio

from taskd.executor.condition import Condition
from taskd.types import ClaimedSubtask

StopReason = Literal["shutdown", "cancelled", "lease_lost"]


@dataclass(eq=False)
class RunningSubtask:
    """A claimed subtask, waiting for a worker or running.

    ``scope`` is the cancel scope its handler runs in, only while it runs: the worker's,
    which runs subtasks back to back in one scope until one is cut short (see
    :class:`taskd.executor.producer.Producer`). Stopping or expiring an entry before it runs
    marks it, and the worker does not start its handler.
    """

    subtask: ClaimedSubtask
    deadline: float = math.inf  # anyio's clock: the attempt's timeout
    scope: anyio.CancelScope | None = None
    stop_reason: StopReason | None = None
    expired: bool = False

    def stop(self, reason: StopReason) -> None:
        """Cancel the handler; the first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.scope is not None:
            self.scope.cancel()

    def expire(self) -> None:
        """The deadline has passed: cancel the handler, or never start it."""
        self.expired = True
        if self.scope is not None:
            self.scope.cancel()


class RunningSet:
    """Subtasks in flight across all of this executor's queues."""

    def __init__(self) -> None:
        self._entries: dict[int, RunningSubtask] = {}
        self._changed = Condition()

    def add(self, subtask: ClaimedSubtask, deadline: float = math.inf) -> RunningSubtask:
        """Track ``subtask``, whose attempt times out at ``deadline`` (anyio's clock).

        Whoever runs it enforces ``deadline`` with :meth:`RunningSubtask.expire` (the
        producer, one timer per claimed batch).
        """
        entry = RunningSubtask(subtask, deadline)
        self._entries[subtask.id] = entry
        return entry

    def remove(self, subtask_id: int) -> None:
        self._entries.pop(subtask_id, None)
        self._changed.notify()

    def get(self, subtask_id: int) -> RunningSubtask | None:
        return self._entries.get(subtask_id)

    def ids(self) -> list[int]:
        return list(self._entries)

    def entries(self) -> list[RunningSubtask]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    async def wait_empty(self) -> None:
        while self._entries:
            await self._changed.wait()
