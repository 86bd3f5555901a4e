"""What this executor is running right now: one entry per claimed subtask."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import anyio

from taskd.queue.models import ClaimedSubtask

StopReason = Literal["shutdown", "cancelled", "lease_lost"]


@dataclass(eq=False)
class RunningSubtask:
    subtask: ClaimedSubtask
    scope: anyio.CancelScope  # its deadline is the attempt's timeout
    stop_reason: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        """Cancel the handler; the first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()


class RunningSet:
    """Subtasks in flight across all of this executor's queues."""

    def __init__(self) -> None:
        self._entries: dict[int, RunningSubtask] = {}
        self._changed: anyio.Event | None = None  # created only while someone waits

    def add(self, subtask: ClaimedSubtask, deadline: float = math.inf) -> RunningSubtask:
        """Track ``subtask``; its scope's deadline is ``deadline`` (anyio's clock)."""
        entry = RunningSubtask(subtask, anyio.CancelScope(deadline=deadline))
        self._entries[subtask.id] = entry
        return entry

    def remove(self, subtask_id: int) -> None:
        self._entries.pop(subtask_id, None)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

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
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
