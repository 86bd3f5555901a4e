"""The worker pool of one producer: tasks that live on between subtasks.

An anyio task costs more to start and finish than a no-op subtask costs to run
(docs/benchmarks.md), so subtasks run on worker tasks that live on between them. Claimed
subtasks wait in the ready queue; whoever takes one while more wait makes sure one more worker
is on its way (waking a parked one, or starting one), so a handler that blocks never holds up
the next subtask, and handlers that finish at once run back to back on one worker. A worker
parked for ``idle_seconds`` ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from taskd.executor.runner import Runner
from taskd.executor.running import RunningSubtask
from taskd.testsignals import TestSignal


@dataclass
class WorkerSignals:
    """What tests may wait for: a worker parked (no subtask ready), with the parked count."""

    parked: TestSignal[int] = field(default_factory=TestSignal)


class WorkerPool:
    """Runs the subtasks handed to :meth:`submit` on worker tasks started in ``runs``."""

    def __init__(
        self,
        runner: Runner,
        done: Callable[[RunningSubtask], None],
        *,
        name: str,
        idle_seconds: float,
    ) -> None:
        self.runner = runner
        self.done = done
        self.name = name  # every worker task's name
        self.idle_seconds = idle_seconds
        self.signals = WorkerSignals()
        self._ready: deque[RunningSubtask] = deque()  # claimed, not yet taken by a worker
        self._parked: deque[anyio.Event] = deque()  # one per idle worker
        self._coming = 0  # workers woken or started that have not looked at _ready yet
        self._closing = False
        self._runs: anyio.abc.TaskGroup | None = None

    def submit(self, entries: Iterable[RunningSubtask], runs: anyio.abc.TaskGroup) -> None:
        """Queue ``entries`` for the workers, which run in ``runs``."""
        self._runs = runs
        self._ready.extend(entries)
        self._call_worker()

    def close(self) -> None:
        """Parked workers end now; busy ones once the ready queue is empty. Idempotent."""
        self._closing = True
        while self._parked:
            self._coming += 1
            self._parked.popleft().set()

    def _call_worker(self) -> None:
        """Make sure a worker is on its way to the head of the ready queue."""
        if self._coming or self._runs is None:
            return
        self._coming += 1
        if self._parked:
            self._parked.popleft().set()
        else:
            self._runs.start_soon(self._worker, name=self.name)

    async def _worker(self) -> None:
        while True:
            self._coming -= 1
            while self._ready:
                await self.runner.run_ready(self._ready, more=self._call_worker, done=self.done)
            if self._closing:
                return
            parked = anyio.Event()
            self._parked.append(parked)
            self.signals.parked.signal(len(self._parked))
            with anyio.move_on_after(self.idle_seconds):
                await parked.wait()
            if not parked.is_set():  # idle for long enough: end
                self._parked.remove(parked)
                return
