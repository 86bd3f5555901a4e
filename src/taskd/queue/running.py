"""What this executor is running right now: one entry per claimed subtask."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import anyio

from taskd.queue.changed import Changed
from taskd.queue.models import ClaimedSubtask

StopReason = Literal["shutdown", "cancelled", "lease_lost"]


@dataclass(eq=False)
class RunningSubtask:
    subtask: ClaimedSubtask
    scope: anyio.CancelScope  # the handler runs in it; no deadline until expire()
    deadline: float = math.inf  # anyio's clock: the attempt's timeout
    stop_reason: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        """Cancel the handler; the first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()

    def expire(self) -> None:
        """The deadline has passed: give the scope its deadline, which cancels the handler
        (or cancels it as soon as it starts). The runner tells a timeout from a stop by it."""
        self.scope.deadline = self.deadline


class RunningSet:
    """Subtasks in flight across all of this executor's queues."""

    def __init__(self) -> None:
        self._entries: dict[int, RunningSubtask] = {}
        self._changed = Changed()
        # The running backend's own CancelScope class: anyio.CancelScope() looks the backend
        # up on every call (sniffio, then asyncio.current_task()), 2.2 us against 1.0 us.
        self._scope_class: type[anyio.CancelScope] | None = None

    def add(self, subtask: ClaimedSubtask, deadline: float = math.inf) -> RunningSubtask:
        """Track ``subtask``, whose attempt times out at ``deadline`` (anyio's clock).

        The entry's scope has no deadline: whoever runs it enforces ``deadline`` with
        :meth:`RunningSubtask.expire` (the producer, one timer per claimed batch).
        """
        scope_class = self._scope_class
        if scope_class is None:
            scope_class = self._scope_class = type(anyio.CancelScope())
        entry = RunningSubtask(subtask, scope_class(), deadline)
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
