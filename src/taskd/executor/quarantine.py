"""The quarantine: suspected poison pills run alone.

The rescuer gives back a subtask that was running when its executor crashed or froze, with a
crash counted; it runs again like any other. One that was running in ``poison_after - 1``
crashes (2 by default) is a suspect, and the claim skips it. The quarantine runs suspects one
at a time, each on this executor with nothing else running: it closes the claim gate, waits
for the running subtasks to finish, claims one suspect, runs it through the runner (the
workers' path), and opens the gate again. A crash while a suspect runs alone is its own: an
innocent subtask that twice happened to run beside a poison pill completes, and the poison pill
reaches ``poison_after`` crashes and the rescuer fails it. A single crash (a daemon killed by
an operator, a host that froze) costs nothing: its subtasks resume in parallel as before.

It makes no statement while no suspect waits: the poller's one statement an interval asks for
it too, and sets its wake-up when one is ready.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from taskd.errors import DatabaseError
from taskd.executor.gate import ClaimGate
from taskd.executor.runner import Runner
from taskd.executor.running import RunningSet
from taskd.executor.wakeup import Wakeup
from taskd.queue.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QuarantineConfig:
    """``queues``: the queues this executor serves. ``lease_timeout``: the lease a suspect is
    claimed under. ``poison_after``: the rescuer's threshold (suspects have one crash
    fewer)."""

    queues: Sequence[str]
    lease_timeout: float
    poison_after: int


class Quarantine:
    def __init__(
        self, config: QuarantineConfig, store: Store, executor_id: str, gate: ClaimGate,
        running: RunningSet, runner: Runner, wakeup: Wakeup,
    ) -> None:
        """``wakeup``: set when a suspect may be ready (the daemon's poller sets it)."""
        self.config = config
        self.wakeup = wakeup
        self.store = store
        self.executor_id = executor_id
        self.gate = gate
        self.running = running
        self.runner = runner
        self._stopped = anyio.Event()

    def stop_claiming(self) -> None:
        """Claim no more suspects; one running goes on (shutdown stops it like any other).
        Idempotent."""
        self._stopped.set()
        self.wakeup.set()

    async def run(self) -> None:
        while True:
            await self.wakeup.wait(math.inf)
            if self._stopped.is_set():
                return
            try:
                while (not self._stopped.is_set()
                       and await self.store.suspects_waiting(
                           self.config.queues, poison_after=self.config.poison_after)):
                    if not await self.run_one_alone():
                        break
            except DatabaseError as exc:
                log.warning("quarantine check failed: %s", exc)

    async def run_one_alone(self) -> bool:
        """Stop claiming, let what runs finish, then claim and run one suspect; return whether
        there was one. Claiming resumes whatever happens."""
        self.gate.close("running a suspected poison pill alone", by="quarantine")
        try:
            await self.gate.wait_no_claims()  # one that passed before it closed is still ours
            await self.running.wait_empty()
            if self._stopped.is_set():
                return False
            suspect = await self.store.claim_suspect(
                self.executor_id, self.config.queues, self.config.lease_timeout,
                poison_after=self.config.poison_after)
            if suspect is None:
                return False  # another executor took it first
            log.info("running a suspect alone", extra={
                "subtask_id": suspect.id, "task_id": suspect.task_id, "queue": suspect.queue})
            await self.runner.run_one(suspect, running=self.running)
            return True
        finally:
            self.gate.open(by="quarantine")
